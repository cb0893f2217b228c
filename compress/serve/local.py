"""Answering from a local tier's engine: one engine sequence per choice (prompts x n), their events
merged as they come, shaped as one JSON answer or as server-sent events, with logprobs and echo.

The response waits for every choice's first event, so a full queue (429) or a failed prefill (500)
can still fall back to the next tier. While generating, the client's connection and the server's
shutdown deadline are checked every 0.5 s: a client that left aborts its sequences (499); past the
deadline a request gets a 503 (a stream: a final error event and [DONE]).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import AsyncIterator, Callable

from starlette.responses import JSONResponse, Response, StreamingResponse

from compress.serve import params as prm
from compress.serve import protocol as P
from compress.serve import sse
from compress.serve.accounting import cost as cost_of
from compress.serve.pipeline import RequestContext
from compress.serve.protocol import APIError
from compress.serve.steps import PRIORITY

POLL_S = 0.5


class ClientGone(Exception):
    pass


@dataclass
class Choice:
    """One choice being generated: its prompt, text so far, token logprobs and end."""
    index: int
    prompt_ids: list[int]
    prompt_text: str | None
    echo: bool
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[tuple] = field(default_factory=list)  # (token id, logprob, top [(id, logprob)])
    prompt_logprobs: list[tuple] | None = None
    finish: str | None = None
    echoed: bool = False  # streaming: the prompt (and its logprobs) went out in the first chunk

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class ShutdownGate:
    """Set when the server's shutdown deadline has passed: in-flight requests then end with a 503."""
    expired: bool = False


def shutting_down() -> APIError:
    return APIError(503, "server is shutting down and its shutdown timeout has passed; retry elsewhere",
                    type="server_error", code="shutting_down", headers={"Retry-After": "5"})


def generation_failed(error: str | None) -> APIError:
    return APIError(500, f"generation failed: {error}", type="server_error")


class LocalAnswer:
    """A request answered by one local engine."""

    def __init__(self, ctx: RequestContext, engine, tier, gate: ShutdownGate, metrics,
                 charge: Callable, store: Callable[[dict], None]):
        self.ctx, self.engine, self.tier, self.gate, self.metrics = ctx, engine, tier, gate, metrics
        self.charge, self.store = charge, store
        self.req, self.chat = ctx.req, ctx.chat
        self.rid = P.new_id("chatcmpl" if ctx.chat else "cmpl")
        self.decode = lru_cache(maxsize=4096)(lambda t: engine.tokenizer.decode([t]))

    async def respond(self) -> Response:
        req, engine = self.req, self.engine
        if self.chat:
            prompts = [(await prm.chat_prompt(engine, req), None)]
        else:
            prompts = await prm.completion_prompts(engine, req)
        vocab = len(engine.tokenizer)
        jobs = []
        for p, (ids, text) in enumerate(prompts):
            for s in range(req.n):
                params = prm.sampling_params(req, self.chat, len(ids), engine.max_context, vocab, sample=s)
                choice = Choice(p * req.n + s, ids, text, echo=not self.chat and req.echo)
                jobs.append((choice, params))
        self.choices = [c for c, _ in jobs]
        self.n_prompt = sum(len(ids) for ids, _ in prompts)
        streams = [engine.generate(f"{self.rid}-{c.index}", c.prompt_ids, params, priority=PRIORITY[self.ctx.cls])
                   for c, params in jobs]
        firsts = await self._firsts(streams)
        self.ctx.first_token()
        if req.stream:
            bound = cost_of(self.tier, P.usage(self.n_prompt, sum(p.max_tokens for _, p in jobs)))
            headers = {**self.ctx.headers, "cache-control": "no-cache"}
            if bound is not None:
                headers["x-compress-cost-max"] = f"{bound:.8f}"
            self.ctx.streaming = True
            return StreamingResponse(self._sse(streams, firsts), media_type="text/event-stream", headers=headers)
        try:
            async with aclosing(merge(streams, firsts, self._poll_client)) as events:
                async for i, ev in events:
                    self._take(self.choices[i], ev)
        except ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
        answer, cost = self._finish()
        headers = dict(self.ctx.headers)
        if cost is not None:
            headers["x-compress-cost"] = f"{cost:.8f}"
        self.store(answer)
        return JSONResponse(answer, headers=headers)

    async def _firsts(self, streams) -> list:
        """Every choice's first event; on any failure every sequence is aborted and the error raised."""
        task = asyncio.gather(*(s.__anext__() for s in streams), return_exceptions=True)
        while not task.done():  # a request still queued when the shutdown deadline passes gets a 503
            await asyncio.wait({task}, timeout=POLL_S)
            if self.gate.expired and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
                raise shutting_down()
        results = task.result()
        error = next((r for r in results if isinstance(r, BaseException)), None)
        if error is None:
            bad = next((r for r in results if r.finished and r.seq.finish_reason == "error"), None)
            error = generation_failed(bad.seq.error) if bad is not None else None
        if error is not None:
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
            raise error
        return results

    async def _poll_client(self) -> None:
        if self.gate.expired:
            raise shutting_down()
        if await self.ctx.http.is_disconnected():
            raise ClientGone()

    async def _poll_gate(self) -> None:
        if self.gate.expired:
            raise shutting_down()

    def _take(self, c: Choice, ev) -> None:
        """Fold one engine event into its choice."""
        if ev.finished and ev.seq.finish_reason == "error":
            raise generation_failed(ev.seq.error)
        c.parts.append(ev.delta)
        c.tokens += ev.new_tokens
        for lp in getattr(ev, "logprobs", None) or ():
            c.logprobs.append((lp.token_id, lp.logprob, lp.top))
        if c.echo and c.prompt_logprobs is None and getattr(ev.seq, "prompt_logprobs_out", None) is not None:
            c.prompt_logprobs = [(t, None, None) if e is None else (t, e.logprob, e.top)
                                 for t, e in zip(c.prompt_ids, ev.seq.prompt_logprobs_out)]
        if ev.finished:
            c.finish = ev.seq.finish_reason

    def _prompt_text(self, c: Choice) -> str:
        return c.prompt_text if c.prompt_text is not None else self.engine.tokenizer.decode(c.prompt_ids)

    def _logprobs(self, c: Choice, entries: list[tuple], offset: int = 0) -> dict | None:
        if self.chat:
            return P.chat_logprobs(entries, self.decode) if self.req.logprobs else None
        if self.req.logprobs is None:
            return None
        return P.legacy_logprobs(entries, self.decode, offset)

    def _choice_body(self, c: Choice) -> dict:
        if self.chat:
            return P.chat_choice(c.index, c.text, c.finish, self._logprobs(c, c.logprobs))
        text, entries = c.text, c.logprobs
        if c.echo:
            text = self._prompt_text(c) + text
            entries = (c.prompt_logprobs or [(t, None, None) for t in c.prompt_ids]) + entries
        return P.completion_choice(c.index, text, c.finish, self._logprobs(c, entries))

    def _account(self) -> tuple[dict, float | None]:
        use = P.usage(self.n_prompt, sum(c.tokens for c in self.choices))
        self.metrics.prompt_tokens.labels(self.tier.name, self.ctx.cls).inc(self.n_prompt)
        return use, self.charge(self.ctx, self.tier, use)

    def _finish(self) -> tuple[dict, float | None]:
        use, cost = self._account()
        make = P.chat_body if self.chat else P.completion_body
        return make(self.rid, self.req.model, "", None, use, [self._choice_body(c) for c in self.choices]), cost

    async def _sse(self, streams, firsts) -> AsyncIterator[bytes]:
        rid, model, chat, ctx = self.rid, self.req.model, self.chat, self.ctx
        status, complete = 500, False
        try:
            if chat:
                for c in self.choices:
                    yield sse.event(P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None, index=c.index))
            try:
                async with aclosing(merge(streams, firsts, self._poll_gate)) as events:
                    async for i, ev in events:
                        c = self.choices[i]
                        seen = len(c.logprobs)
                        self._take(c, ev)
                        for chunk in self._chunks(c, ev, seen):
                            yield chunk
            except APIError as e:
                status = e.status
                yield sse.event(e.body())  # the last event says why the stream ends early
                yield sse.DONE
                return
            complete = True
            # Accounted as soon as the text is complete (a client leaving now got every token).
            answer, cost = self._finish()
            status = 200
            ctx.close(200)
            self.store(answer)
            if sse.include_usage(self.req):
                yield sse.usage_chunk(rid, model, chat, {**answer["usage"], "cost": cost})
            yield sse.DONE
        except (asyncio.CancelledError, GeneratorExit):
            if not complete:
                status = 499  # client went away: the engine drops the sequences (merge's cleanup)
            raise
        finally:
            ctx.close(status)

    def _chunks(self, c: Choice, ev, seen: int) -> list[bytes]:
        """The events for one engine event of choice `c`: text (and its tokens' logprobs), then the finish."""
        rid, model, out = self.rid, self.req.model, []
        new = c.logprobs[seen:]
        if self.chat:
            lp = self._logprobs(c, new) if new else None
            if ev.delta or lp:
                out.append(sse.event(P.chat_chunk(rid, model, {"content": ev.delta}, None, index=c.index, logprobs=lp)))
            if ev.finished:
                out.append(sse.event(P.chat_chunk(rid, model, {}, c.finish, index=c.index)))
            return out
        text, entries = ev.delta, new
        if c.echo and not c.echoed:
            c.echoed = True
            text = self._prompt_text(c) + text
            entries = (c.prompt_logprobs or [(t, None, None) for t in c.prompt_ids]) + entries
        lp = self._logprobs(c, entries) if entries else None
        if text or lp:
            out.append(sse.event(P.completion_chunk(rid, model, text, None, index=c.index, logprobs=lp)))
        if ev.finished:
            out.append(sse.event(P.completion_chunk(rid, model, "", c.finish, index=c.index)))
        return out


async def merge(streams: list, firsts: list, poll: Callable) -> AsyncIterator[tuple[int, object]]:
    """(stream index, event) from every stream until each has finished, `poll()` awaited every POLL_S
    (it may raise to end early). Leaving (return, raise, cancel) aborts every unfinished sequence."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async for ev in stream:
                queue.put_nowait((i, ev))
        except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((i, e))

    async def tick() -> None:  # a timer beside the events, not a timeout on each wait (one per token)
        while True:
            await asyncio.sleep(POLL_S)
            queue.put_nowait((None, None))

    for i, ev in enumerate(firsts):
        queue.put_nowait((i, ev))
    tasks = [asyncio.create_task(pump(i, s)) for i, (s, ev) in enumerate(zip(streams, firsts)) if not ev.finished]
    tasks.append(asyncio.create_task(tick()))
    left = len(streams)
    try:
        while left:
            i, ev = await queue.get()
            if ev is None:  # checked whether or not tokens keep coming
                await poll()
                continue
            if isinstance(ev, Exception):
                raise ev
            left -= ev.finished
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()  # cancelling a pending read runs the engine generator's cleanup: abort, free the slot
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)

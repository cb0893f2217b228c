"""Server-sent events: encoding one event, and replaying a stored (non-streaming) answer as the
events a live stream would have sent."""

from __future__ import annotations

import json
from typing import AsyncIterator

from compress.serve import protocol as P

DONE = b"data: [DONE]\n\n"


def event(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def usage_chunk(rid: str, model: str, chat: bool, use: dict) -> bytes:
    return event((P.chat_chunk if chat else P.completion_chunk)(rid, model, {} if chat else "", None, use,
                                                                choices=False))


async def replay(answer: dict, chat: bool, with_usage: bool) -> AsyncIterator[bytes]:
    """Per choice: (chat: the role), the whole text in one chunk with its logprobs, the finish reason;
    then usage (cost 0: a hit costs nothing) when asked, and [DONE]."""
    rid, model, use = answer["id"], answer["model"], answer.get("usage")
    for choice in answer["choices"]:
        i, finish, lp = choice["index"], choice["finish_reason"], choice.get("logprobs")
        if chat:
            text = choice["message"]["content"]
            yield event(P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None, index=i))
            if text or lp:
                yield event(P.chat_chunk(rid, model, {"content": text}, None, index=i, logprobs=lp))
            yield event(P.chat_chunk(rid, model, {}, finish, index=i))
        else:
            text = choice["text"]
            if text or lp:
                yield event(P.completion_chunk(rid, model, text, None, index=i, logprobs=lp))
            yield event(P.completion_chunk(rid, model, "", finish, index=i))
    if with_usage and use:
        yield usage_chunk(rid, model, chat, {**use, "cost": 0.0})
    yield DONE

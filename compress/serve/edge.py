"""The connection edge, before any handler runs: request size and read-time limits, and logs that
never hold a key.

- `BodyLimit` (ASGI middleware): a body over `max_bytes` gets a 413 (by its Content-Length at once,
  or as soon as the bytes read pass the limit), and a body that stops arriving for `read_timeout_s`
  (for instance, shorter than its Content-Length) gets a 408 and the connection is closed. The body
  is read here, then handed to the app as one message.
- `HeaderTimeoutH11`: uvicorn's h11 protocol that closes a connection whose request headers are not
  complete `header_timeout_s` after it opened (uvicorn itself waits forever).
- `RedactKeys`: a logging filter that replaces the values of key-like query parameters
  (`api_key`, `key`, `token`, ...) in log records (uvicorn's access log writes the full path).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

from uvicorn.protocols.http.h11_impl import H11Protocol

from compress.serve.protocol import APIError

_SECRET_PARAM = re.compile(r"((?:^|[?&;])(?:api[_-]?key|key|token|access[_-]?token|auth|secret|password)=)[^&;\s\"]*",
                           re.I)


def redact(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "compress.serve"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


async def _send_error(send, e: APIError) -> None:
    body = json.dumps(e.body()).encode()
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app, max_bytes: int, read_timeout_s: float):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    def _too_large(self) -> APIError:
        return APIError(413, f"request body is larger than this server's limit of {self.max_bytes} bytes",
                        code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, self._too_large())
        chunks, size = [], 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                return await _send_error(send, APIError(408, f"request body not received within "
                                                             f"{self.read_timeout_s:g} s", code="request_timeout"))
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _send_error(send, self._too_large())
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the client's disconnect, as the app expects

        await self.app(scope, replay, send)


def header_timeout_protocol(header_timeout_s: float) -> type:
    """An h11 protocol class that closes connections whose headers take longer than `header_timeout_s`."""

    class HeaderTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self._header_timer is not None:
                self._header_timer.cancel()  # the first request's headers are in; keep-alive takes over
                self._header_timer = None

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11

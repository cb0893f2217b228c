"""Remote tiers: proxy a request to another OpenAI-compatible server (vLLM, SGLang, another
`compress serve`) with httpx, streaming included. The body is forwarded as sent, with `model`
replaced by the remote's model id; answers come back as they are (status and error body too)."""

from __future__ import annotations

import os
from typing import AsyncIterator

import httpx

from compress.serve.protocol import APIError


class RemoteTier:
    def __init__(self, tier, timeout_s: float = 600.0):
        self.tier = tier
        headers = {}
        if tier.api_key_env:
            key = os.environ.get(tier.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        # Connect fails fast (a dead remote should not hold a client for minutes); reads may be long.
        self.client = httpx.AsyncClient(base_url=tier.url, headers=headers,
                                        timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def close(self) -> None:
        await self.client.aclose()

    def _body(self, body: dict) -> dict:
        return {**body, "model": self.tier.model}

    async def request(self, path: str, body: dict) -> tuple[int, dict]:
        try:
            r = await self.client.post(path, json=self._body(body))
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        try:
            data = r.json()
        except ValueError:
            raise APIError(502, f"tier {self.tier.name!r}: remote answered {r.status_code} with a non-JSON body",
                           type="server_error", code="bad_gateway") from None
        return r.status_code, data

    async def stream(self, path: str, body: dict) -> tuple[int, AsyncIterator[bytes] | dict]:
        """(status, SSE byte chunks) for a 200, else (status, the remote's error body)."""
        try:
            req = self.client.build_request("POST", path, json=self._body(body))
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as e:
            raise self._unreachable(e) from e
        if resp.status_code != 200:
            raw = await resp.aread()
            await resp.aclose()
            try:
                import json

                return resp.status_code, json.loads(raw)
            except ValueError:
                return resp.status_code, APIError(502, "remote error", type="server_error").body()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()  # a client that leaves closes the upstream stream too

        return 200, chunks()

    def _unreachable(self, e: Exception) -> APIError:
        return APIError(502, f"tier {self.tier.name!r}: remote {self.tier.url} unreachable ({type(e).__name__})",
                        type="server_error", code="bad_gateway")

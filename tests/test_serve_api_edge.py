"""The connection edge of a real `compress serve` process: slow headers and short bodies are cut
off, keys never reach the access log, and on SIGTERM past --shutdown-timeout a queued request gets
an OpenAI-style 503 and a running stream a final error event."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import time

import httpx
import pytest

from compress.manifest import build_manifest, write_manifest
from tests.serve_helpers import Server, metric


def _recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        return data + b"<still open>"
    return data


@pytest.mark.slow  # starts its own server process
def test_edge_timeouts_redaction_and_shutdown(tiny_model, tmp_path):
    manifest = write_manifest(build_manifest([str(tiny_model)]), tmp_path / "tiers.yaml")
    log = tmp_path / "edge.log"
    s = Server(manifest, "--max-batch", "2", "--max-wait-ms", "0", "--shutdown-timeout", "1",
               "--header-timeout", "1", "--body-timeout", "1", "--api-key", "sk-edge", log=log)
    try:
        tier = httpx.get(s.url + "/health").json()["tiers"][0]
        with socket.create_connection(("127.0.0.1", s.port)) as sock:  # headers never finished
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            assert _recv_all(sock, 10) == b"" and time.monotonic() - t0 < 5  # closed by the server
        with socket.create_connection(("127.0.0.1", s.port)) as sock:  # body shorter than its Content-Length
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-edge\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": ")
            reply = _recv_all(sock, 10)
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply and not reply.endswith(b"open>")

        r = httpx.get(s.url + "/v1/models?api_key=sk-leaked-123", headers={"Authorization": "Bearer sk-edge"})
        assert r.status_code == 200
        r = httpx.post(s.url + "/v1/completions", json={"model": tier, "prompt": "x"})
        assert r.status_code == 401
        assert metric(httpx.get(s.url + "/metrics").text, "compress_requests_total", status="401", tier="none") == 1

        auth = {"Authorization": "Bearer sk-edge", "cache-control": "no-store"}
        body = {"model": tier, "prompt": "Once", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}

        def stream():
            with httpx.stream("POST", s.url + "/v1/completions", json={**body, "stream": True}, headers=auth,
                              timeout=60) as resp:
                return [line for line in resp.iter_lines() if line.startswith("data: ")]

        def running(name: str) -> float:
            return metric(httpx.get(s.url + "/metrics").text, name, tier=tier)

        with cf.ThreadPoolExecutor(3) as pool:  # two streams fill the batch, a third request waits
            streams = [pool.submit(stream) for _ in range(2)]
            while running("compress_running_requests") < 2:
                time.sleep(0.02)
            queued = pool.submit(httpx.post, s.url + "/v1/completions", json=body, headers=auth, timeout=60)
            while running("compress_queue_depth") < 1:
                time.sleep(0.02)
            s.terminate()
            late = queued.result()
            results = [f.result() for f in streams]
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        for events in results:
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[-2][6:])["error"]["code"] == "shutting_down"
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
    text = log.read_text()
    assert "sk-leaked-123" not in text and "api_key=[redacted]" in text

"""``mechscope ui`` as a real server process: the load test, the bind policy and the access token.

The load test sends 50 concurrent lens requests from a client on 127.0.0.1: every one must succeed with the
same answer, and the server's resident memory must come back to its level before the burst (measured after
a first, warming burst: the first requests allocate the thread pool and PyTorch's caches once).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the web app needs the ui extra (fastapi, uvicorn)")
import httpx

from tests.server import Server

PROMPT = "The capital of France is"
CONCURRENT = 50
#: How far the server's memory may stand above its level before a burst once the burst is over: a few
#: allocator arenas' worth, far below what 50 retained lens grids and their activations would hold.
RSS_SLACK = 16 * 2**20


def burst(client: httpx.Client, base: str) -> list[httpx.Response]:
    """``CONCURRENT`` lens requests at once."""
    body = {"prompt": PROMPT, "top_k": 3}
    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(lambda _: client.post(base + "api/lens/grid", json=body), range(CONCURRENT)))


def test_fifty_concurrent_lens_requests_agree_and_memory_returns(toy_ui: Server) -> None:
    assert toy_ui.base.startswith("http://127.0.0.1:")
    limits = httpx.Limits(max_connections=CONCURRENT)
    with httpx.Client(timeout=300, limits=limits) as client:
        burst(client, toy_ui.base)  # warm-up
        before = toy_ui.rss_bytes()
        answers = burst(client, toy_ui.base)
        after = toy_ui.rss_bytes()
    assert [response.status_code for response in answers] == [200] * CONCURRENT
    bodies = {response.content for response in answers}
    assert len(bodies) == 1  # serialised on one model: the same answer every time
    assert json.loads(bodies.pop())["cells"][-1][-1]["top"][0]["token"] == " Paris"
    assert after - before <= RSS_SLACK, f"RSS grew by {(after - before) / 2**20:.1f} MiB over a burst"


def test_binding_beyond_loopback_needs_public() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mechscope", "ui", "-m", "toy", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--public" in lines[0] and "0.0.0.0" in lines[0]


def test_a_public_server_warns_and_requires_its_token(public_toy_ui: Server) -> None:
    server = public_toy_ui
    assert "?token=" in server.url
    token = server.url.split("?token=", 1)[1]
    assert len(token) >= 24
    local = server.base.replace("0.0.0.0", "127.0.0.1")
    with httpx.Client(timeout=120) as client:
        refused = client.get(local + "api/model")
        assert refused.status_code == 401 and "access token" in refused.json()["error"]
        assert client.get(local + "api/model", params={"token": token}).json()["token_required"] is True
        assert client.get(local, params={"token": "nope"}).status_code == 401
    assert any("warning" in line and "0.0.0.0" in line for line in server.stderr)


def test_a_busy_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "mechscope", "ui", "-m", "toy", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


def test_accepted_connections_send_without_delay() -> None:
    """The listening socket says TCP, so asyncio sets TCP_NODELAY on each connection it accepts.

    Without it every keep-alive reply written as headers then body waited for the client's delayed ACK
    (~40 ms a request, measured with httpx before the fix).
    """
    import asyncio
    import concurrent.futures

    from mechscope.web.server import listen

    async def check() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(seen, 60)
            writer.close()
        return value

    # A thread of its own: the session's Playwright browser keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, check()).result() == 1

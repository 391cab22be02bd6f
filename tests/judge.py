"""A local OpenAI-compatible chat-completions endpoint for the LLM-judge tests (no network)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

#: ``answer(prompt, call)``: the judge's reply to the ``call``-th request (from 0), whose user message is ``prompt``.
Answer = Callable[[str, int], str]


@contextlib.contextmanager
def serve_judge(answer: Answer) -> Iterator[str]:
    """Serve ``answer`` on 127.0.0.1 in a thread; yields the endpoint's base URL (``.../v1``)."""
    calls = [0]

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = answer(body["messages"][0]["content"], calls[0])
            calls[0] += 1
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()

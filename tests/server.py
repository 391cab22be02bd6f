"""Start ``mechscope ui`` as a real process for the web app's server and browser tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

URL = re.compile(r"serving \S+ at (http://\S+)")
STARTUP_S = 300  # loading torch and the model on a busy 2-core machine


@dataclass
class Server:
    """A running ``mechscope ui`` process and the URL it printed."""

    process: subprocess.Popen[str]
    url: str
    stderr: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        """The URL without the query (the token), ending in ``/``."""
        return self.url.split("?", 1)[0]

    def rss_bytes(self) -> int:
        """The server process's resident memory."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")


@contextmanager
def running(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``mechscope ui ARGS`` until the block ends (then Ctrl-C it, as a user would)."""
    command = [sys.executable, "-m", "mechscope", "ui", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def pump(stream: object, sink: queue.Queue[str | None] | list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            if isinstance(sink, list):
                sink.append(line)
            else:
                sink.put(line)
        if not isinstance(sink, list):
            sink.put(None)

    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    threading.Thread(target=pump, args=(process.stderr, errors), daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=STARTUP_S)
            except queue.Empty:
                raise RuntimeError(f"mechscope ui printed no URL in {STARTUP_S} s: {''.join(errors)}") from None
            if line is None:
                raise RuntimeError(f"mechscope ui exited ({process.wait()}): {''.join(errors)}")
            found = URL.search(line)
            if found:
                break
        yield Server(process, found.group(1), errors)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

"""Run the web app with uvicorn: loopback by default; anywhere else only when asked, and behind a token.

Examples:
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.api.analyzer import Analyzer

DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_host(host: str, public: bool) -> None:
    """Refuse a host beyond loopback unless ``public`` (checked before the model loads).

    Raises:
        InputError: a non-loopback host without ``public``.
    """
    if not is_loopback(host) and not public:
        raise InputError(
            f"--host {host} would let other machines run this model; add --public to do that "
            "(every request then needs the printed access token)"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one).

    Raises:
        InputError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it a reply's headers
    # and body, written apart, wait ~40 ms for a delayed ACK on every keep-alive request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port (0 picks a free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    analyzer: Analyzer,
    *,
    name: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    public: bool = False,
    max_upload_bytes: int | None = None,
    announce: Callable[[str], None] = print,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``analyzer``'s model until Ctrl-C; ``announce`` gets the page's URL once it listens.

    Args:
        public: allow a host other than loopback; a random access token is then required by every request,
            and the URL ``announce`` gets carries it.
        sock: a socket from `listen` on ``host`` (the CLI binds before it loads the model, so that a busy
            port fails at once); None binds ``host:port`` here.

    Raises:
        InputError: a non-loopback host without ``public``, or an address that cannot be bound.
    """
    import uvicorn

    from mechscope.web.app import MAX_UPLOAD, create_app

    check_host(host, public)
    token = None
    if not is_loopback(host):
        token = secrets.token_urlsafe(24)
        print(
            f"mechscope ui: warning: listening on {host}, beyond this machine; anyone with the URL below "
            "(it holds the access token) can use the model",
            file=sys.stderr,
        )
    app = create_app(analyzer, name=name, token=token, max_upload_bytes=max_upload_bytes or MAX_UPLOAD)
    sock = sock or listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    announce(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

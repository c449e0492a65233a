"""Whether a server can listen on host:port, asked by `kgpt2 serve` and `kgpt2 demo` before any model is built.

    >>> from kgpt2.serving.ports import check_port
    >>> check_port("127.0.0.1", 0)  # 0: the OS picks a free port, nothing to check
"""

from __future__ import annotations

import errno
import socket

from kgpt2.errors import UserError


def check_port(host: str, port: int | None, usual_holder: str = "") -> None:
    """Refuse a busy port, or a host this machine cannot listen on, in one sentence.

    Binds as the servers will (`create_server` sets SO_REUSEADDR, so a closed port's TIME_WAIT is free), in the
    address family of `host` (`::1` is IPv6). `usual_holder` names what usually holds the port ("another demo?").
    """
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use{f': {usual_holder}' if usual_holder else ''}"
        else:  # a host that does not resolve: the resolver's words (its errno is no OS error number)
            reason = e.strerror or str(e)
        raise UserError(f"cannot listen on {host}:{port} ({reason}); choose another --port or --host") from None

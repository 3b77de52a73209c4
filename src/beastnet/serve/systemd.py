"""systemd's readiness protocol (sd_notify) without libsystemd: one unix
datagram a state change, sent to the socket named by $NOTIFY_SOCKET.

Under `Type=notify` systemd starts the units that depend on beastnet only
after READY=1, shows STATUS= in `systemctl status`, and knows a reload or a
stop is under way from RELOADING=1 and STOPPING=1.  Outside systemd the
variable is unset and every call is a no-op, so the server needs no mode.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, Optional

__all__ = ["NOTIFY_SOCKET_ENV", "notify", "notify_address"]

#: The environment variable systemd sets for a `Type=notify` service.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"

log = logging.getLogger("beastnet.serve")


def notify_address(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The socket to notify, as the AF_UNIX address Python takes: a path,
    or an abstract name with its leading NUL ("@name" in the variable, as
    sd_notify(3) writes it); None when the variable is unset or empty."""
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV, "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def notify(*fields: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") as one datagram, newline-separated;
    RELOADING=1 gets the MONOTONIC_USEC= that systemd 253+ asks of it.  True if
    sent.  A failure is logged as a warning and never stops the server: a
    service manager that cannot be told is no reason to refuse prices."""
    address = notify_address(environ)
    if address is None:
        return False
    lines = list(fields)
    if "RELOADING=1" in lines:
        lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sent = sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify %s to %s: %s", lines[0], address.replace("\0", "@"),
                    exc.strerror or exc, extra={"fields": {"event": "sd_notify_failed"}})
        return False
    return sent == len(message)

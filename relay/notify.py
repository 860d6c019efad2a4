"""systemd's readiness protocol (sd_notify): one datagram per state change.

Does nothing unless ``NOTIFY_SOCKET`` is set, so relayd runs the same with or without
systemd; a socket nobody listens on any more is not worth a warning. A name starting with "@" is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("relay.notify")


def notify(state: str) -> None:
    """Send ``state`` ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...") to systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        # nobody listens any more: a start-up helper (tools/run) that waited only for READY
        log.debug("nobody to notify (%s): %s", state, exc)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)

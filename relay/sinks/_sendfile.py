"""Sending a piece of a file to a client socket with ``sendfile(2)``, past the transport.

uvloop's transports have no sendfile, and copying a file through Python buffers would
cost a read and a write per piece. So once the answer's head has left the transport
(its write buffer is empty), the file goes from the page cache to the socket in the
kernel: on a duplicate of the socket's descriptor, so that waiting for it to become
writable does not collide with the transport's own watch of the original. Each turn of
the loop sends at most ``_BURST`` bytes, so one large download cannot starve the other
connections. A client that takes nothing for ``_STALL`` seconds is cut off, as
``server.send_timeout`` does for answers written through the transport (the deadline
sweep watches the sender).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

from relay.errors import BadGateway
from relay.timers import Deadlines

_BURST = 4 * 1024 * 1024
#: seconds without progress before the client is cut off (server.send_timeout's default)
_STALL = 60.0
#: what sendfile says when the client's end is gone, rather than the file failing
_CLIENT_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


class FileSender:
    """Sends ``length`` bytes of ``fd`` from ``offset`` to the client of ``transport``;
    ``on_done`` (None, or why it stopped) once all went or it failed. Owns ``fd``."""

    __slots__ = ("deadline", "_loop", "_transport", "_fd", "_out", "_offset", "_left", "_on_done",
                 "_deadlines", "_on_progress")

    def __init__(self, transport: asyncio.WriteTransport, fd: int, offset: int, length: int,
                 deadlines: Deadlines, on_progress: Callable[[int], None],
                 on_done: Callable[[BaseException | None], None]) -> None:
        self.deadline = 0.0
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._fd = fd
        self._out = -1
        self._offset = offset
        self._left = length
        self._deadlines = deadlines
        self._on_progress = on_progress
        self._on_done: Callable[[BaseException | None], None] | None = on_done

    def start(self) -> None:
        if self._on_done is None:
            return  # aborted before the head went out
        sock = self._transport.get_extra_info("socket")
        if sock is None or self._transport.is_closing():
            self._cut_off()
            return
        self._out = os.dup(sock.fileno())
        self._deadlines.watch(self)
        self.deadline = self._loop.time() + _STALL
        self._loop.add_writer(self._out, self._pump)

    def _pump(self) -> None:
        if self._transport.get_write_buffer_size():
            return  # the head is still in the transport's buffer: the file must follow it
        budget = _BURST
        sent_now = 0
        try:
            while budget > 0 and self._left > 0:
                sent = os.sendfile(self._out, self._fd, self._offset, min(self._left, budget))
                if sent == 0:
                    # the file shrank under relay: the promised length cannot be kept
                    raise BadGateway("the file was truncated while it was sent")
                self._offset += sent
                self._left -= sent
                budget -= sent
                sent_now += sent
        except BlockingIOError:
            pass  # the socket is full: the next writable turn goes on
        except OSError as exc:
            self._progress(sent_now)
            if exc.errno in _CLIENT_GONE:
                self._cut_off()
            else:
                self._finish(BadGateway(f"reading the file failed: {exc.strerror or exc}"))
            return
        except BadGateway as exc:
            self._progress(sent_now)
            self._finish(exc)
            return
        self._progress(sent_now)
        if self._left == 0:
            self._finish(None)

    def _progress(self, sent: int) -> None:
        if sent:
            self._on_progress(sent)
            self.deadline = self._loop.time() + _STALL

    def on_deadline(self) -> None:
        self._cut_off()  # the client took nothing for _STALL seconds

    def _cut_off(self) -> None:
        """The client is gone or stalled: drop its connection; the exchange hears of it
        from the connection (as a client gone) and aborts this sender."""
        self._close()
        self._transport.abort()

    def _finish(self, failure: BaseException | None) -> None:
        self._close()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(failure)

    def _close(self) -> None:
        self.deadline = 0.0
        self._deadlines.unwatch(self)
        if self._out >= 0:
            self._loop.remove_writer(self._out)
            os.close(self._out)
            self._out = -1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # as the quick delivery of the request (see Sink.relay_now)

    retriable = False

    def release(self) -> None:
        self._close()

    def abort(self) -> None:
        """The client went, or the exchange gave up: stop, without telling anyone."""
        self._on_done = None
        self._close()

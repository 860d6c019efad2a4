"""The ``files`` sink: relay decides, lighttpd delivers.

A flow with this sink serves GET and HEAD: once the caller is authenticated and
authorized, the rest of the request path after the flow's prefix names a file beneath
``root``. It is opened with ``open_beneath`` (nothing outside the root, through ``..``
or any symlink, and nothing but a regular file), and then delivered one of two ways:

* ``X-Sendfile``: relay answers 200 with the file's path in an ``X-Sendfile`` header and
  no body, and lighttpd (``mod_proxy`` with ``"x-sendfile" => "enable"``) sends the file
  itself, with its own Range, conditional and HEAD handling. Only when the sink's
  ``delivery`` is ``"x-sendfile"`` and the request comes from a trusted proxy
  (``server.trusted_proxies``) that says it takes one: ``X-Sendfile-Type: X-Sendfile``,
  which the shipped ``conf/lighttpd.conf`` sets on every request. A direct client, or
  lighttpd's ``mod_sockproxy`` (which does no HTTP), never gets the header. The path
  is the name relay opened, under ``root`` as configured, percent-encoded (lighttpd
  decodes it); a symlink in it leads nowhere outside (only relative ones stay inside,
  and those lighttpd resolves as the kernel did).
* relay itself: validators, conditionals and one range as lighttpd does them
  (``relay.sinks._file_answer``); a body of up to ``_READ_WHOLE`` bytes is read and sent
  in one write, a longer one goes from the page cache to the socket with ``sendfile``
  (``relay.sinks._sendfile``).

Files are opened on the event loop, as lighttpd opens them on its own: on a local disk
an open and an fstat take microseconds. The audit record names the file, its size and
who sent it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from urllib.parse import quote_from_bytes

from relay.config import FilesSinkConfig
from relay.errors import BadGateway, RelayError
from relay.flowcontrol import NO_BODY
from relay.reply import STREAMING, Reply
from relay.request import Request
from relay.sinks._confine import open_beneath
from relay.sinks._file_answer import decide, etag, http_date, media_type, read_asked
from relay.sinks._sendfile import FileSender
from relay.sinks.base import ANSWERED, Answered, Receipt, SinkSlots
from relay.timers import Deadlines

#: bodies up to this size are read and sent with the head in one write: cheaper than
#: a sendfile, and as large as a socket buffer takes at once
_READ_WHOLE = 64 * 1024


class FilesSink:
    remembers_keys = False

    def __init__(self, config: FilesSinkConfig, deadlines: Deadlines) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._x_sendfile = config.delivery == "x-sendfile"
        #: opened once: every file is resolved beneath this descriptor
        self._root_fd = os.open(config.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        #: the root as configured, percent-encoded: what lighttpd's x-sendfile-docroot names
        self._front_root = quote_from_bytes(os.fsencode(config.root).rstrip(b"/") + b"/", safe="/").encode("ascii")

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> FileSender | Answered | None:
        if request.body is not NO_BODY:
            return None  # read (and dropped) the general way
        return self.answer_now(request, reply, on_done)

    def answer_now(self, request: Request, reply: Reply,
                   on_done: Callable[[BaseException | None], None]) -> FileSender | Answered:
        """Answer at once; ``on_done`` follows on a later turn (or when a file sent with
        sendfile is all out)."""
        try:
            sender = self._serve(request, reply, on_done)
        except RelayError as err:
            self._loop.call_soon(on_done, err)
            return ANSWERED
        except OSError as exc:  # the file system failed under a file relay had opened (EIO, ...)
            self._loop.call_soon(on_done, BadGateway(f"reading the file failed: {exc.strerror or exc}", self.name))
            return ANSWERED
        if sender is None:
            self._loop.call_soon(on_done, None)
            return ANSWERED
        return sender

    def _serve(self, request: Request, reply: Reply,
               on_done: Callable[[BaseException | None], None]) -> FileSender | None:
        relative = request.route_path[len(request.flow.config.path):]
        fd, info = open_beneath(self._root_fd, relative)
        try:
            sender = self._answer(request, reply, fd, info, relative, on_done)
        except BaseException:
            os.close(fd)
            raise
        if sender is None:
            os.close(fd)  # answered whole; else the sender owns it
        return sender

    def _answer(self, request: Request, reply: Reply, fd: int, info: os.stat_result, relative: str,
                on_done: Callable[[BaseException | None], None]) -> FileSender | None:
        kind = b"Content-Type: " + media_type(relative) + b"\r\n"
        asked = read_asked(request.headers.forward)
        if self._x_sendfile and request.from_proxy and asked.sendfile_type is not None \
                and asked.sendfile_type.lower() == b"x-sendfile":
            # the name relay just opened beneath the root: any symlink in it stays inside
            # (openat2 refuses absolute ones), so lighttpd following it reaches the same file
            target = self._front_root + quote_from_bytes(relative.encode("utf-8"), safe="/").encode("ascii")
            request.served = (relative, info.st_size, "x-sendfile")
            reply.send_whole(200, kind + b"X-Sendfile: " + target + b"\r\n", (), 0)
            return None
        answer = decide(asked, info, etag(info), http_date(int(info.st_mtime)), request.method,
                        request.version == "1.0")
        request.served = (relative, info.st_size, "relay")
        headers = kind + answer.headers
        if request.head_only or answer.length == 0:
            reply.send_whole(answer.status, headers, (), answer.length)
            return None
        if answer.length <= _READ_WHOLE:
            data = os.pread(fd, answer.length, answer.offset)
            if len(data) != answer.length:
                raise BadGateway("the file changed while it was read", self.name)
            reply.send_whole(answer.status, headers, (data,), answer.length)
            return None
        return self._stream(reply, fd, answer.status, headers, answer.offset, answer.length, on_done)

    def _stream(self, reply: Reply, fd: int, status: int, headers: bytes, offset: int, length: int,
                on_done: Callable[[BaseException | None], None]) -> FileSender:
        def sent(failure: BaseException | None) -> None:
            if failure is None:
                reply.end()
            on_done(failure)

        sender = FileSender(reply.transport, fd, offset, length, self._deadlines, reply.sent, sent)
        reply.begin_sized(status, headers, length)

        def head_released() -> None:
            if reply.state == STREAMING:
                sender.start()
            else:  # withdrawn: its audit record could not be written
                sender.abort()
                on_done(None)

        reply.when_released(head_released)
        return sender

    def open(self, request: Request, answers: bool, reply: Reply | None) -> FilesDelivery:
        return FilesDelivery(self, request)

    async def close(self) -> None:
        os.close(self._root_fd)


class FilesDelivery:
    """The general way, for a GET that came with a body (read and dropped) or when the
    quick one could not start: the same answer, awaited."""

    stopped = False

    def __init__(self, sink: FilesSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        self._quick: FileSender | Answered = ANSWERED

    async def write(self, data: bytes) -> None:
        pass  # a body sent with a GET means nothing to a file

    async def finish(self) -> Receipt:
        return {}

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def settle(failure: BaseException | None) -> None:
            if not done.done():
                done.set_result(failure)

        self._quick = self._sink.answer_now(self._request, reply, settle)
        try:
            failure = await done
        finally:
            self._quick.abort()
        if failure is not None:
            raise failure if isinstance(failure, RelayError) else BadGateway(str(failure), self._sink.name)

    def abort(self) -> None:
        self._quick.abort()

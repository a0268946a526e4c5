"""The two pipes between :class:`~datapipe.engine.pool.ProcessPool` and one child, used
without blocking: the parent must never wait on a child (a child hung with the pipe full, or
writing a large result while the parent writes it a large task, would stop the whole run).

Both directions use multiprocessing's ``Connection`` framing (a big-endian ``i`` length, or
-1 then a ``Q`` length), so the child reads tasks with ``Connection.recv`` and writes results
with ``Connection.send_bytes``. Tasks are pickles (the parent is trusted); results are read
as bytes only and decoded by :mod:`datapipe.engine.wire`.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import struct
from collections import deque
from typing import Any

PIPE_BYTES = 1 << 20
#: a message at least this large is read straight into a buffer of its size (fewer copies)
BIG_MESSAGE = 64 << 10
_SMALL = 64 << 10


def grow_pipe(fd: int) -> None:
    """Fewer, larger reads and writes for big records (Linux; elsewhere the default size)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pass


def frame(obj: Any) -> list[memoryview]:
    """``obj`` pickled and framed as ``Connection.send`` does (plain pickle: a task holds no
    process handles, and ``ForkingPickler`` builds a pickler per call, a third of the cost)."""
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    n = len(data)
    head = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    if n < _SMALL:  # one write: the child wakes once, not for the length alone
        return [memoryview(head + bytes(data))]
    return [memoryview(head), memoryview(data)]


class Outbox:
    """Frames waiting for a child's task pipe (a non-blocking fd), written as it drains."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: deque[memoryview] = deque()

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def put(self, frames: list[memoryview]) -> None:
        self.chunks.extend(frames)
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes now; the rest waits for the pipe to drain."""
        while self.chunks:
            head = self.chunks[0]
            try:
                n = os.write(self.fd, head)
            except BlockingIOError:
                return
            except OSError:  # the child is gone; its result pipe tells how
                self.chunks.clear()
                return
            if n == len(head):
                self.chunks.popleft()
            else:
                self.chunks[0] = head[n:]


class Inbox:
    """Whole messages from a child's result pipe (a non-blocking fd).

    ``messages`` holds the complete ones in order; ``eof`` is set when the child closed the
    pipe; ``error`` when it sent a length no message may have (negative, or above
    ``max_message``: a child builds each message in memory under its cap).
    """

    def __init__(self, fd: int, scratch: bytearray, max_message: int | None) -> None:
        self.fd = fd
        self.scratch = scratch
        self.max_message = max_message
        self.messages: deque[bytes | bytearray] = deque()
        self.eof = False
        self.error: str | None = None
        self._buf = bytearray()
        self._big: bytearray | None = None
        self._big_got = 0

    def read(self, budget: int) -> None:
        """Read what the pipe holds, up to about ``budget`` bytes (so that one child cannot
        keep the parent from the others' deadlines)."""
        got = 0
        while got < budget and not self.error:
            big = self._big
            try:
                if big is not None:
                    with memoryview(big) as view:
                        n = os.readv(self.fd, [view[self._big_got :]])
                else:
                    n = os.readv(self.fd, [self.scratch])
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n == 0:
                self.eof = True
                return
            got += n
            if big is not None:
                self._big_got += n
                if self._big_got == len(big):
                    self.messages.append(big)
                    self._big = None
            else:
                with memoryview(self.scratch) as view:
                    self._buf += view[:n]
                self._split()

    def _split(self) -> None:
        buf, pos = self._buf, 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from("!i", buf, pos)
            head = 4
            if n == -1:
                if len(buf) - pos < 12:
                    break
                (n,) = struct.unpack_from("!Q", buf, pos + 4)
                head = 12
            elif n < 0:
                self.error = f"message length {n}"
                return
            if self.max_message is not None and n > self.max_message:
                self.error = f"a {n}-byte message, more than the worker's memory cap"
                return
            have = len(buf) - pos - head
            if have < n and n >= BIG_MESSAGE:  # read the rest straight into its own buffer
                self._big = bytearray(n)
                with memoryview(buf) as view:
                    self._big[:have] = view[pos + head :]
                self._big_got = have
                pos = len(buf)
                break
            if have < n:
                break
            with memoryview(buf) as view:
                self.messages.append(bytes(view[pos + head : pos + head + n]))
            pos += head + n
        if pos:
            del buf[:pos]

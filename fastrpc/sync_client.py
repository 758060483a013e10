"""The blocking client: plain sockets over the same core as the async client.

Many threads may share one ``SyncClient``. Their calls are multiplexed by id
on its one connection: a thread sends its requests under a send lock, then
waits. Whichever waiting thread finds nobody reading becomes the reader: it
reads, hands every decoded reply to its waiter and wakes the others, and
passes the job on once its own replies are in. No event loop, no thread per
call, no background thread.
"""

from __future__ import annotations

import functools
import select
import socket
import threading
import time
from ssl import MemoryBIO, SSLContext, SSLWantReadError, SSLZeroReturnError
from typing import Any, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .auth import AUTH_METHOD
from .errors import CallTimeout, ConnectionClosed, FastRPCError, FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .net import connect_failed, set_nodelay
from .protocol import ABSENT, ClientConnection
from .retry import check_retries, resendable, retry_delay

__all__ = ["SyncClient"]


class _Batch:
    """The outcomes of the calls one thread sent together, and the event it waits on.

    The core's waiter for call ``i`` is ``(batch, i)``. The event exists only
    once its thread sleeps while another reads (a lone thread reads for
    itself and never needs one); it is set when the last outcome arrives, and
    also to hand the sleeping thread the reading.
    """

    __slots__ = ("results", "errors", "left", "event")

    def __init__(self, size: int) -> None:
        self.results: List[Any] = [None] * size
        self.errors: List[Optional[BaseException]] = [None] * size
        self.left = size
        self.event: Optional[threading.Event] = None


def _failed(size: int, error: BaseException) -> _Batch:
    batch = _Batch(size)
    batch.errors = [error] * size
    batch.left = 0
    return batch


def _deliver(waiter: Tuple[_Batch, int], result: Any, error: Optional[BaseException]) -> None:
    batch, index = waiter
    batch.results[index] = result
    batch.errors[index] = error
    batch.left -= 1
    if not batch.left and batch.event is not None:
        batch.event.set()


class _Tls:
    """TLS over the non-blocking socket through memory BIOs, so that the select()
    design stays as it is. The reading thread and a sending thread never use
    the TLS state at once: one lock guards it."""

    def __init__(self, context: SSLContext, server_hostname: Optional[str]) -> None:
        self._incoming, self._outgoing = MemoryBIO(), MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._lock = threading.Lock()

    def handshake(self, sock: socket.socket) -> None:
        """Run the handshake on ``sock`` while it is still blocking (with its connect timeout)."""
        while True:
            try:
                self._tls.do_handshake()
                done = True
            except SSLWantReadError:
                done = False
            data = self._outgoing.read()
            if data:
                sock.sendall(data)
            if done:
                return
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection during the TLS handshake")
            self._incoming.write(data)

    def encrypt(self, data: bytes) -> bytes:
        with self._lock:
            self._tls.write(data)
            return self._outgoing.read()

    def decrypt(self, data: bytes) -> Optional[bytes]:
        """The plaintext ``data`` completes (maybe b""); None once the server closed the TLS session."""
        chunks = []
        with self._lock:
            self._incoming.write(data)
            while True:
                try:
                    chunk = self._tls.read(65536)
                except SSLWantReadError:
                    break
                except SSLZeroReturnError:
                    return None
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


#: Seconds to spend sending the cancel frames of calls that timed out.
CANCEL_SEND_TIMEOUT = 1.0


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class SyncClient:
    """A blocking connection to a fastrpc server, safe to share between threads.

    >>> with SyncClient("127.0.0.1", 8080, timeout=5.0) as client:   # doctest: +SKIP
    ...     client.call("add", [1, 2])
    3

    ``timeout`` is the default per-call timeout in seconds (None: wait
    forever); it covers sending and waiting for the reply. ``ids=False`` is
    the ordered mode for servers that answer without ids, in request order.
    Errors are those of the async client: ``RemoteError`` subclasses for
    error replies, ``CallTimeout``, ``ConnectionClosed``. ``retries`` and
    ``idempotent`` work as with ``fastrpc.connect``: a lost connection is
    replaced, and idempotent calls lost with it are sent again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = 10.0,
        ids: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        token: Optional[str] = None,
        ssl: Optional[SSLContext] = None,
        server_hostname: Optional[str] = None,
        retries: int = 0,
        idempotent: Iterable[str] = (),
    ) -> None:
        self.timeout = timeout
        self.retries = check_retries(retries)
        self.idempotent = frozenset(idempotent)
        self._dial = functools.partial(_Link, host, port, ids=ids, max_frame_size=check_max_frame_size(max_frame_size),
                                       token=token, ssl=ssl, server_hostname=server_hostname)
        self._connect_timeout = connect_timeout
        self._link = self._dial(connect_timeout)
        self._redial = threading.Lock()  # one thread replaces a lost connection; the others wait for it
        self._closing = False

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._link.failure is not None

    def call(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None,
    ) -> Any:
        """Call ``method`` with ``params`` and return its result (see ``Client.call``)."""
        batch = self._run([(method, params)], timeout, idempotent)
        if batch.errors[0] is not None:
            raise batch.errors[0]
        return batch.results[0]

    def call_many(
        self,
        calls: Iterable[Union[Tuple[str], Tuple[str, Any]]],
        *,
        timeout: Optional[float] = ABSENT,
        return_exceptions: bool = False,
        idempotent: Optional[bool] = None,
    ) -> List[Any]:
        """Send ``(method, params)`` calls in one write; return their results in order.

        An entry of just ``(method,)`` sends no params. Every reply is waited for before anything is raised. If a call
        failed, its exception is raised (the first in list order), unless
        ``return_exceptions`` is true: failed calls then hold their exception
        in the list, as with ``asyncio.gather``. ``timeout`` bounds the whole
        batch. With ``retries``, the idempotent calls of the batch lost with a
        connection are sent again, together.
        """
        batch = self._run([(call[0], call[1] if len(call) > 1 else ABSENT) for call in calls], timeout, idempotent)
        errors = batch.errors
        if not return_exceptions:
            for error in errors:
                if error is not None:
                    raise error
        return [result if error is None else error for result, error in zip(batch.results, errors)]

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionClosed."""
        self._closing = True
        self._link.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _run(self, calls: Sequence[Tuple[str, Any]], timeout: Optional[float], idempotent: Optional[bool]) -> _Batch:
        """Run a batch on the connection; with ``retries``, replace a lost one and resend what may be resent."""
        if timeout is ABSENT:
            timeout = self.timeout
        if not self.retries:
            return self._link.run(calls, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        batch = _Batch(len(calls))
        todo = list(range(len(calls)))  # the calls still to be made or to be made again
        for attempt in range(self.retries + 1):
            link = self._link
            try:
                if link.failure is not None:
                    link = self._reconnect(link, deadline)
            except ConnectionClosed as exc:
                part, redo = _failed(len(todo), exc), todo  # none of them was sent: all may go again
            else:
                try:
                    part = link.run([calls[i] for i in todo], _remaining(deadline))
                except ConnectionClosed as exc:  # some may have gone out before the connection broke
                    part = _failed(len(todo), exc)
                redo = [i for i, error in zip(todo, part.errors) if isinstance(error, ConnectionClosed)
                        and resendable(calls[i][0], idempotent, self.idempotent)]
            for i, result, error in zip(todo, part.results, part.errors):
                batch.results[i], batch.errors[i] = result, error
            if not redo or attempt == self.retries or self._closing:
                break
            todo = redo
            delay = retry_delay(attempt)
            if deadline is not None and time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
        batch.left = 0
        return batch

    def _reconnect(self, lost: "_Link", deadline: Optional[float]) -> "_Link":
        with self._redial:
            if self._link is lost and not self._closing:
                timeout = self._connect_timeout
                if deadline is not None:
                    timeout = _remaining(deadline) if timeout is None else min(timeout, _remaining(deadline))
                self._link = self._dial(timeout)
                lost.close()
            link = self._link
        if link.failure is not None:
            raise ConnectionClosed(link.failure)
        return link


class _Link:
    """One connection and its core: the calls of many threads multiplexed on one socket."""

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout: Optional[float],
        *,
        ids: bool,
        max_frame_size: int,
        token: Optional[str],
        ssl: Optional[SSLContext],
        server_hostname: Optional[str],
    ) -> None:
        self._core = ClientConnection(_deliver, ids=ids, max_frame_size=max_frame_size)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:  # socket.timeout among them
            raise connect_failed(host, port, exc, connect_timeout) from exc
        set_nodelay(sock)
        self._tls: Optional[_Tls] = None
        if ssl is not None:
            try:
                self._tls = _Tls(ssl, server_hostname or host)
                self._tls.handshake(sock)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                sock.close()
                raise connect_failed(host, port, exc, tls=True) from exc
        # Non-blocking: every wait goes through select() with the caller's deadline.
        sock.setblocking(False)
        self._sock = sock
        self._send_lock = threading.Lock()  # keeps frames whole and in core order on the wire
        self._state = threading.Lock()  # guards the core's call table and the fields below
        self._reading = False  # a thread is reading for everyone
        self._read_done = threading.Condition(self._state)  # notified when that thread stops reading
        self._waiting: Set[_Batch] = set()  # batches whose threads sleep while another reads
        self.failure: Optional[str] = None  # why the connection is unusable (None while it is usable)
        if token is not None:
            batch = self.run([(AUTH_METHOD, token)], connect_timeout)
            if batch.errors[0] is not None:
                self.close()
                raise batch.errors[0]

    def close(self) -> None:
        self._lost(None)
        # Readers and senders wake up on the shut-down socket; close the
        # descriptor only once neither uses it.
        with self._state:
            self._read_done.wait_for(lambda: not self._reading, timeout=5.0)
        with self._send_lock:
            self._sock.close()

    def run(self, calls: Sequence[Tuple[str, Any]], timeout: Optional[float]) -> _Batch:
        """Send ``calls`` and wait for all their outcomes, within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        batch = _Batch(len(calls))
        keys = self._send(calls, batch, deadline)
        if not self._wait(batch, deadline):
            with self._state:
                for key in keys:
                    self._core.forget(key)  # a late reply is dropped; a cancel frame is queued
            try:
                self._send((), batch, time.monotonic() + CANCEL_SEND_TIMEOUT)  # tell the server to stop them
            except (CallTimeout, ConnectionClosed):
                pass  # the calls timed out either way; the connection's state says the rest
            what = f"call to {calls[0][0]!r}" if len(calls) == 1 else f"batch of {len(calls)} calls"
            raise CallTimeout(f"{what} timed out after {timeout} s")
        return batch

    def _send(self, calls: Sequence[Tuple[str, Any]], batch: _Batch, deadline: Optional[float]) -> List[int]:
        core = self._core
        with self._send_lock:
            with self._state:
                if self.failure is not None:
                    raise ConnectionClosed(self.failure)
                keys: List[int] = []
                try:
                    left = _remaining(deadline)
                    for index, (method, params) in enumerate(calls):
                        keys.append(core.request(method, params, (batch, index), deadline=left))
                except FrameTooLarge:
                    # Nothing of the batch goes out.
                    core.data_to_send()
                    for key in keys:
                        core.forget(key, cancel=False)
                    raise
                data = core.data_to_send()
            if self._tls is not None and data:
                data = self._tls.encrypt(data)  # under the send lock: records leave in order
            view = memoryview(data)
            while view:
                try:
                    view = view[self._sock.send(view):]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._lost(exc)
                    raise ConnectionClosed(self.failure) from exc
                if view and not select.select([], [self._sock], [], _remaining(deadline))[1]:
                    if len(view) < len(data):
                        # Half a frame is on the wire: the stream cannot be resynchronised.
                        self._lost(CallTimeout("a send timed out halfway through a frame"))
                    with self._state:
                        for key in keys:
                            core.forget(key, cancel=False)  # not (all) sent: nothing to cancel
                    raise CallTimeout(f"sending timed out after {len(data) - len(view)} of {len(data)} bytes")
        return keys

    def _wait(self, batch: _Batch, deadline: Optional[float]) -> bool:
        """Wait until the batch is complete (True) or the deadline passes (False)."""
        state = self._state
        while True:
            with state:
                if not batch.left:
                    return True
                if not self._reading:
                    self._reading = True
                    break
                # Someone else reads: sleep until our replies are in or the
                # reading is handed to us.
                if batch.event is None:
                    batch.event = threading.Event()
                else:
                    batch.event.clear()
                event = batch.event
                self._waiting.add(batch)
            woken = event.wait(_remaining(deadline))
            with state:
                self._waiting.discard(batch)
                if not woken:
                    return not batch.left
        try:
            return self._read_until(batch, deadline)
        finally:
            with state:
                self._reading = False
                if self.failure is not None:
                    self._read_done.notify_all()  # close() may be waiting (it sets failure first)
                for other in self._waiting:
                    if other.left:
                        other.event.set()  # type: ignore[union-attr]  # your turn to read
                        break

    def _read_until(self, batch: _Batch, deadline: Optional[float]) -> bool:
        """Read for everyone until ``batch`` is complete (True) or the deadline passes (False)."""
        core = self._core
        sock = self._sock
        while batch.left:
            if self.failure is not None:
                return True  # the core failed every pending call
            if not select.select([sock], [], [], _remaining(deadline))[0]:
                return False
            try:
                if self._tls is None:
                    nbytes = sock.recv_into(core.get_buffer(-1))
                else:
                    raw = sock.recv(65536)
                    data = self._tls.decrypt(raw) if raw else None  # None: the connection ended
                    nbytes = -1 if data is None else len(data)  # 0: part of a TLS record, no plaintext yet
            except BlockingIOError:
                continue
            except OSError as exc:  # ssl.SSLError among them
                self._lost(exc)
                continue
            if nbytes < 0 or (nbytes == 0 and self._tls is None):
                self._lost(None)
                continue
            with self._state:
                try:
                    if self._tls is None:
                        core.buffer_updated(nbytes)
                    elif data:
                        core.receive_data(data)
                except FastRPCError as exc:
                    self._lost(exc)
        return True

    def _lost(self, cause: Optional[BaseException]) -> None:
        """The connection is unusable: fail every pending call, naming ``cause``."""
        with self._state:
            if self.failure is not None:
                return
            self.failure = "connection closed" + (f": {cause}" if cause else "")
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._core.close(cause)

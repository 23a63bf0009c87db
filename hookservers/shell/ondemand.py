"""gRPC only while someone is connected: the hook server's unix socket, relayed on demand.

Owns the public unix socket (a plain one: a poll without timeout wakes nobody), the private
gRPC server behind it (started on the first connection, dropped when the last one has been
gone a while), the byte relay between the two, and the hand-over of the socket to the next
program of this process (`hand_over`: main.py re-executes the hook server once gRPC is
dropped, since the memory gRPC and protobuf took is not given back otherwise). Knows nothing
about hooks or scripts.

Why: for as long as any gRPC server object exists, gRPC core keeps six threads that wake
5-10 times a second, and grpcio's sync server polls its queue every 200 ms (see
bench/RESULTS.md); grpcio cannot serve a socket it did not bind itself. A hook server sees
a call a month, so it holds no gRPC at all in between.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gRPC server itself is built by make_server, on demand
    import grpc

log = logging.getLogger("upparat.hookserver")

_CHUNK = 256 * 1024
PRIVATE_PREFIX = "upparat-hookserver-"
"""Of the private directory of each gRPC server, made in the temporary directory."""


def remove_recorded(record: Path) -> Path | None:
    """Removes the private directory `record` names, left by a server of this hook server
    that did not stop (SIGKILL, OOM, a power cut with /tmp on disk), and the record;
    returns the directory removed. Only a directory of ours with the private prefix, never
    through a symlink: the record is in root's state_dir, but what it names is in /tmp."""
    try:
        named = Path(record.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("ignoring %s: %s", record, e)
        named = None
    removed = None
    if named is not None and named.is_absolute() and named.name.startswith(PRIVATE_PREFIX):
        with contextlib.suppress(OSError):
            st = named.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                shutil.rmtree(named, ignore_errors=True)
                removed = named
    with contextlib.suppress(OSError):
        record.unlink()
    return removed


class OnDemandServer:
    """Relays every connection of `listener` to a gRPC server built by `make_server`.

    `idle_stop`: seconds after the last connection closed before the gRPC server is
    dropped ([hookserver] idle_release). `on_idle` runs (in a timer thread) each time it
    has been; `held` are connections accepted by the program before this one, served first.
    """

    def __init__(
        self,
        listener: socket.socket,
        make_server: Callable[[], grpc.Server],
        *,
        idle_stop: float,
        on_idle: Callable[[], None] | None = None,
        held: tuple[socket.socket, ...] = (),
        record: Path | None = None,
    ) -> None:
        self._listener = listener
        self._record = record
        """Names the running server's private directory while there is one, so that the
        next start removes it if this process never could (`remove_recorded`)."""
        self._idle_stop = idle_stop
        self._make_server = make_server
        self._on_idle = on_idle
        self._held = list(held)
        """Connections to serve before accepting more; while handing over, those accepted
        after the hand-over began (they go to the next program)."""
        self._handing_over = False
        self._wake_r, self._wake_w = os.pipe()
        listener.setblocking(False)  # accept only after poll said so; never block in it
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._dir: Path | None = None
        """The private directory of the running server's socket (mode 0700)."""
        self._address = ""
        self._connections: set[socket.socket] = set()
        self._idle_timer: threading.Timer | None = None
        self._closing = False
        self._accepting = threading.Thread(target=self._accept, name="hook-accept", daemon=True)

    def start(self) -> None:
        self._accepting.start()

    @property
    def listener(self) -> socket.socket:
        return self._listener

    # -- handing the socket to the next program -------------------------------------------

    def hand_over(self) -> list[socket.socket] | None:
        """Stops accepting, for an exec that keeps the listener: the connections accepted
        meanwhile, which the next program must serve, or None (nothing stopped) when this
        server is not idle: a connection, a gRPC server, or stopping."""
        with self._lock:
            if self._connections or self._server is not None or self._closing:
                return None
            self._handing_over = True
        os.write(self._wake_w, b"x")
        self._accepting.join()
        with self._lock:
            held, self._held = self._held, []
        return held

    def resume(self, held: list[socket.socket]) -> None:
        """Accepts again after a hand-over whose exec failed; serves `held` first."""
        os.read(self._wake_r, 16)
        with self._lock:
            self._handing_over = False
            self._held = held
        self._accepting = threading.Thread(target=self._accept, name="hook-accept", daemon=True)
        self._accepting.start()

    @property
    def grpc_running(self) -> bool:
        with self._lock:
            return self._server is not None

    # -- the private gRPC server -----------------------------------------------------------

    def _ensure_server(self) -> str:
        """The private server's address, starting it if needed (called with the lock)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._server is None:
            # A fresh directory per server, made now and removed with it: nothing of it
            # waits for months in /tmp for a cleaner to take away.
            folder = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
            self._write_record(folder)
            path = folder / "grpc.sock"
            server = self._make_server()
            try:
                server.add_insecure_port(f"unix://{path}")
                server.start()
            except BaseException:
                self._remove(folder)
                raise
            self._server, self._dir, self._address = server, folder, str(path)
            log.debug("gRPC server started on %s", path)
        return self._address

    def _write_record(self, folder: Path) -> None:
        if self._record is None:
            return
        temporary = self._record.with_name(self._record.name + ".tmp")
        try:
            temporary.write_text(f"{folder}\n")
            temporary.replace(self._record)
        except OSError as e:  # only a crash's leftover would stay; serving goes on
            log.warning("cannot record %s in %s: %s", folder, self._record, e)

    def _remove(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if self._record is not None:
            with contextlib.suppress(OSError):
                self._record.unlink()

    def _drop_server(self) -> tuple[grpc.Server | None, Path | None]:
        """Forgets the running server (called with the lock); the caller stops it."""
        server, folder = self._server, self._dir
        self._server, self._dir, self._address = None, None, ""
        return server, folder

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._connections or self._server is None or self._closing:
                return
            server, folder = self._drop_server()
            assert server is not None
            server.stop(grace=None).wait(5.0)
            if folder is not None:
                self._remove(folder)
        log.debug("no connection for %g s: gRPC server dropped", self._idle_stop)
        if self._on_idle is not None:
            self._on_idle()

    # -- connections ------------------------------------------------------------------------

    def _next_connection(self) -> socket.socket | None:
        """The next connection to serve, or None when accepting is over (stopping, handing
        over). Waits in poll(2) without a timeout on the listener and the wake pipe, so a
        hand-over never interrupts an accept that already took a connection."""
        with self._lock:
            if self._held and not self._handing_over:
                return self._held.pop(0)
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._wake_r in events:
                return None
            if events.get(self._listener.fileno(), 0) & (select.POLLERR | select.POLLNVAL):
                return None
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                continue  # another accept took it (there is none) or the client left
            except OSError:
                return None  # the listener was shut down: the server is stopping
            conn.setblocking(True)
            return conn

    def _accept(self) -> None:
        while True:
            conn = self._next_connection()
            if conn is None:
                return
            try:
                with self._lock:
                    if self._handing_over:
                        self._held.append(conn)  # for the next program
                        return
                    if self._closing:
                        raise OSError("the hook server is stopping")
                    address = self._ensure_server()
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(address)
                    self._connections.add(conn)
            except (OSError, RuntimeError) as e:
                log.warning("cannot serve a connection: %s", e)
                conn.close()
                continue
            relay = _Relay(conn, upstream, on_closed=self._closed)
            relay.start()

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
            if self._connections or self._closing or self._server is None:
                return
            timer = threading.Timer(self._idle_stop, self._stop_if_idle)
            timer.name = "hook-idle-stop"
            timer.daemon = True
            self._idle_timer = timer
            timer.start()

    # -- stopping ---------------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """Stops the gRPC server (calls in flight get `grace` seconds), then every relay and
        the listener."""
        with self._lock:
            self._closing = True
            server, folder = self._drop_server()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        if server is not None:
            server.stop(grace=grace).wait(grace + 4.0)
        # The wake pipe ends the poll of the accepting thread; then the listener can go.
        os.write(self._wake_w, b"x")
        self._accepting.join(2.0)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            conn.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if folder is not None:
            self._remove(folder)


class _Relay:
    """Copies bytes both ways between a client and the gRPC server until both are done."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        *,
        on_closed: Callable[[socket.socket], None],
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._on_closed = on_closed
        self._left = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for source, sink, name in (
            (self._client, self._upstream, "relay-in"),
            (self._upstream, self._client, "relay-out"),
        ):
            threading.Thread(target=self._pump, args=(source, sink), name=name, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            # One side broke: the whole connection goes, as a direct one would.
            for sock in (self._client, self._upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        else:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            self._client.close()
            self._upstream.close()
            self._on_closed(self._client)


def bind_listener(path: Path, mode: int) -> socket.socket:
    """A listening unix socket at `path` whose file never had a mode more open than `mode`.

    The umask is process-wide: call before any script runs.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(64)
    return sock

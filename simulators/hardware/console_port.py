"""The serial port of a virtual board, as the USB serial chip of a dev board: its ``name`` is
what ``mpremote connect`` takes, a pty (``/dev/pts/N``) or ``socket://127.0.0.1:N``.

Why a class of its own: the port outlives the VMs behind it (a reset does not drop mpremote's
connection), and it keeps the client's side of the console: which client is there (a pty
nobody has open, a TCP client that replaces a vanished one), and console output held for it,
dropped while nobody is connected (a UART does not stall a board). VirtualBoard's bridge
thread polls it with the VM's pipes and passes the bytes between them.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import tty

BACKLOG_MAX = 1 << 20  # console bytes held for a reader that is behind, either way


class ConsolePort:
    """``ConsolePort("pty"|"socket")``; used by one thread, then ``close()``."""

    def __init__(self, transport: str) -> None:
        self._to_client = bytearray()
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._master: int | None = None
        if transport == "pty":
            self._master, slave = os.openpty()
            tty.setraw(slave)
            self.name = os.ttyname(slave)
            os.close(slave)
            os.set_blocking(self._master, False)
        else:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.name = "socket://127.0.0.1:%d" % self._listener.getsockname()[1]

    def close(self) -> None:
        if self._master is not None:
            os.close(self._master)
        for s in (self._listener, self._client):
            if s is not None:
                s.close()

    def client_fd(self) -> int | None:
        """The connected client's fd, None if nobody is connected."""
        if self._master is not None:
            p = select.poll()
            p.register(self._master, select.POLLIN)
            if any(ev & select.POLLHUP for _, ev in p.poll(0)):
                self._to_client.clear()
                return None
            return self._master
        return self._client.fileno() if self._client is not None else None

    def poll_fds(self, client: int | None) -> dict[int, int]:
        """What to poll for, with ``client`` from ``client_fd()``: fd -> events."""
        fds = {}
        if client is not None:
            fds[client] = select.POLLIN | (select.POLLOUT if self._to_client else 0)
        if self._listener is not None:
            fds[self._listener.fileno()] = select.POLLIN
        return fds

    def poll_ms(self, client: int | None) -> int:
        """How long a poll may wait for the port."""
        # a pty nobody has open reports POLLHUP at once: look again every 20 ms
        return 20 if self._master is not None and client is None else 1000

    def is_listener(self, fd: int) -> bool:
        return self._listener is not None and fd == self._listener.fileno()

    def accept(self) -> None:
        conn, _ = self._listener.accept()
        if self._client is not None:  # a new mpremote replaces a vanished one
            self._client.close()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self._to_client = conn, bytearray()

    def write(self, data: bytes) -> None:
        """Console output to the client (dropped if none)."""
        if self.client_fd() is not None and len(self._to_client) < BACKLOG_MAX:
            self._to_client += data
            self._flush()

    def read(self, fd: int, ev: int) -> bytes:
        """What the client at ``fd`` sent, as the poll reported ``ev`` (b"": nothing; a TCP
        client that went away is dropped). Sends held output first if the client can take it."""
        if ev & select.POLLOUT:
            self._flush()
        if not ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            return b""
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data and self._client is not None:
            self._drop_client()
        return data

    def _drop_client(self) -> None:
        self._to_client.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _flush(self) -> None:
        fd = self.client_fd()
        if fd is None or not self._to_client:
            return
        try:
            n = os.write(fd, self._to_client)
            del self._to_client[:n]
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno not in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                raise
            if self._client is not None:
                self._drop_client()
            else:
                self._to_client.clear()

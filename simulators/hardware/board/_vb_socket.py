"""``socket`` as firmware sees it on the virtual board: the host's sockets, cut off while the
board's station has no IP (see _vb_network).

As lwIP on an ESP32: ``connect()`` without a link fails with EHOSTUNREACH; a socket opened on a
link that has since gone fails every use with ECONNABORTED (lwIP aborts the connections of an
address that went away), and select/poll report it (POLLERR|POLLHUP) so a waiting asyncio
task wakes up. Nothing of it reaches the peer: the host socket behind a dead one is closed only
when the station has a link again (the broker notices through its keepalive, as it would).
A board whose firmware never starts the station is wired: nothing here changes its sockets.
A blocking ``recv`` already waiting in the host's socket does not notice the link going.
"""

import errno
import io
import socket as _real
from socket import *  # noqa: F401,F403 (constants, getaddrinfo)

import _vb_network as _net

_orphans = []  # host sockets of dead ones, closed when the link is back


def _reap():
    while _orphans and _net.link_up():
        try:
            _orphans.pop().close()
        except OSError:
            pass


class socket(io.IOBase):  # noqa: N801 (the module's own name)
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0, _s=None):  # noqa: A002,F405
        _reap()
        self._vb_host = _s if _s is not None else _real.socket(af, type, proto)
        self._gen = _net.generation()
        self._closed = False

    def _dead(self):
        return _net._sta["used"] and (not _net._sta["joined"] or self._gen != _net.generation())

    def _check(self):
        if self._closed:
            raise OSError(errno.EBADF)
        if self._dead():
            raise OSError(errno.ECONNABORTED)

    def connect(self, addr):
        if not _net.link_up():
            raise OSError(errno.EHOSTUNREACH)
        self._gen = _net.generation()
        return self._vb_host.connect(addr)

    def read(self, *n):
        self._check()
        return self._vb_host.read(*n)

    def readinto(self, *args):
        self._check()
        return self._vb_host.readinto(*args)

    def readline(self, *args):
        self._check()
        return self._vb_host.readline(*args)

    def recv(self, n):
        self._check()
        return self._vb_host.recv(n)

    def recvfrom(self, n):
        self._check()
        return self._vb_host.recvfrom(n)

    def write(self, *args):
        self._check()
        return self._vb_host.write(*args)

    def send(self, data):
        self._check()
        return self._vb_host.send(data)

    def sendall(self, data):
        self._check()
        return self._vb_host.sendall(data)

    def sendto(self, data, addr):
        self._check()
        return self._vb_host.sendto(data, addr)

    def accept(self):
        self._check()
        conn, addr = self._vb_host.accept()
        return socket(_s=conn), addr

    def bind(self, addr):
        return self._vb_host.bind(addr)

    def listen(self, *backlog):
        return self._vb_host.listen(*backlog)

    def setblocking(self, flag):
        return self._vb_host.setblocking(flag)

    def settimeout(self, value):
        return self._vb_host.settimeout(value)

    def setsockopt(self, *args):
        return self._vb_host.setsockopt(*args)

    def fileno(self):
        return self._vb_host.fileno()

    def makefile(self, *args, **kw):
        return self

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._dead():
            _orphans.append(self._vb_host)  # no FIN gets out without a link
        else:
            self._vb_host.close()
        _reap()


usocket = socket

"""``select`` as firmware sees it: a poll object that also serves the control socket.

asyncio waits in ``poll.ipoll``; registering the control socket there lets a button press
(and the soft IRQ handler it fires) wake an idle event loop, as an interrupt would.
"""

import select as _real
from select import POLLERR, POLLHUP, POLLIN, POLLOUT  # noqa: F401

import time as _time

import _vb_ctl as _ctl


def poll():
    return _Poll()


class _Poll:
    def __init__(self):
        self._p = _real.poll()
        self._ctl = _ctl._sock
        self._wrapped = {}  # id(host socket) -> the board's socket around it (_vb_socket)
        if self._ctl is not None:
            self._p.register(self._ctl, POLLIN)

    def _host(self, obj):
        host = getattr(obj, "_vb_host", None)
        if host is None:
            return obj
        self._wrapped[id(host)] = obj
        return host

    def register(self, obj, mask=POLLIN | POLLOUT):
        self._p.register(self._host(obj), mask)

    def unregister(self, obj):
        host = getattr(obj, "_vb_host", None)
        if host is not None:
            self._wrapped.pop(id(host), None)
            obj = host
        self._p.unregister(obj)

    def modify(self, obj, mask):
        self._p.modify(self._host(obj), mask)

    def _dead(self):
        """The board's sockets whose link went: reported as errors, as lwIP's poll does."""
        return [(s, POLLERR | POLLHUP) for s in self._wrapped.values() if s._dead()]

    def poll(self, timeout=-1):
        return self.ipoll(timeout)

    def ipoll(self, timeout=-1, flags=0):
        end = None if timeout is None or timeout < 0 else _time.ticks_add(_time.ticks_ms(), timeout)
        while True:
            due = _ctl.tick()
            left = -1 if end is None else max(0, _time.ticks_diff(end, _time.ticks_ms()))
            if due is not None and (left < 0 or due < left):
                left = max(0, due)
            ready = self._dead() if self._wrapped else []
            if ready:
                left = 0
            host = False
            for entry in self._p.ipoll(left, flags):
                if entry[0] is self._ctl and self._ctl is not None:
                    host = True
                elif not self._wrapped or id(entry[0]) not in self._wrapped:
                    ready.append((entry[0], entry[1]))
                elif not self._wrapped[id(entry[0])]._dead():
                    ready.append((self._wrapped[id(entry[0])], entry[1]))
            if host:
                if flags:
                    self._p.modify(self._ctl, POLLIN)
                _ctl.service(0)
            if not ready and self._wrapped:
                ready = self._dead()  # a host command just took the link
            if ready or (end is not None and _time.ticks_diff(end, _time.ticks_ms()) <= 0):
                return ready

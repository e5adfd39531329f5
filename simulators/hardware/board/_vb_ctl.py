"""Board side of the control socket: JSON lines between the VM and the host (VirtualBoard).

The firmware owns the VM's only thread, so host commands (a button press, UART bytes) are
handled where firmware waits anyway: ``time.sleep*``, ``select.poll`` (hence asyncio),
``machine.idle``/``lightsleep`` and input reads all call ``wait``/``service`` here. That is
also where a real ESP32 runs its soft IRQ handlers and soft timers, so firmware sees the same
ordering. Imported before the fake ``time``/``select`` replace the real ones in sys.modules.
"""

import json
import select
import socket
import time


class HardReset(BaseException):
    """machine.reset() or the watchdog: the VM exits with 100 + cause and the host restarts it."""


class SoftReset(BaseException):
    """machine.soft_reset(): back to boot.py like Ctrl-D."""


class Halt(BaseException):
    """The host is gone (console or control socket closed): stop the VM."""


sleeping = None  # the number of the light sleep under way (a host's warp names it), else None
warp_ms = 0  # time warp (see _vb_time): ms the board's clocks were moved ahead while it slept


def ms():
    """The board's own millisecond clock for its internals (soft timers, waits, scans): the
    VM's ticks plus the time warp. Never wraps on the 64-bit VM."""
    return time.ticks_ms() + warp_ms


handlers = {}  # command name -> function(message)
ticks = []  # functions run at every wait; each returns ms until it is due again, or None
go = False  # the host has sent its boot-time state
_sock = None
_poll = None
_buf = b""


def connect(host, port):
    global _sock, _poll
    s = socket.socket()
    s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: an event is one small write, send it now
    s.connect(socket.getaddrinfo(host, port)[0][-1])
    _sock = s
    _poll = select.poll()
    _poll.register(s, select.POLLIN)


def send(event):
    """Report ``event`` (a dict; bytes must be hex strings) to the host."""
    if _sock is not None:
        _sock.write(json.dumps(event).encode() + b"\n")


def service(timeout_ms=0):
    """Handle the commands that arrive within ``timeout_ms`` (-1: until one does)."""
    global _buf
    if _sock is None or not _poll.poll(timeout_ms):
        return False
    data = _sock.recv(512)  # small: a 4 KB block is what a fragmented heap lacks first
    if not data:
        raise Halt()
    _buf += data
    while True:
        end = _buf.find(b"\n")
        if end < 0:
            return True
        line, _buf = _buf[:end], _buf[end + 1:]  # consumed first: handlers may re-enter
        try:
            msg = json.loads(line)
            fn = handlers.get(msg.get("cmd"))
        except ValueError:
            continue
        if fn:
            fn(msg)


def tick():
    """Run the due soft timers and the watchdog check; ms until the next one is due."""
    due = None
    for fn in ticks:
        d = fn()
        if d is not None and (due is None or d < due):
            due = d
    return due


def wait(delay_ms):
    """Sleep ``delay_ms`` while serving host commands and soft timers."""
    end = ms() + max(0, int(delay_ms))
    while True:
        due = tick()
        left = end - ms()
        if left <= 0:
            service(0)
            return
        if due is not None and due < left:
            left = max(0, due)
        if _sock is None:
            time.sleep_ms(left)
        else:
            service(left)


def _go(msg):
    global go
    go = True


handlers["go"] = _go


def hello(info, timeout_ms=3000):
    """Announce the boot and apply the state the host replays (input levels) before boot.py."""
    if _sock is None:
        return
    send(info)
    end = time.ticks_add(time.ticks_ms(), timeout_ms)
    while not go and time.ticks_diff(end, time.ticks_ms()) > 0:
        service(max(0, time.ticks_diff(end, time.ticks_ms())))

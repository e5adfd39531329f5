"""A virtual MicroPython board: the real unix-port VM running simulators/hardware/board/board.py.

Why: the firmware is flashed and driven with the real mpremote and must run unchanged, so the
board needs a serial port, a flash that survives resets, and pins a test can press and watch.

- ``.port`` is what ``mpremote connect`` takes, a pty or a socket (console_port.py); it stays
  up across VM restarts. A bridge thread passes the console bytes between it and the VM.
- The bridge turns each Ctrl-C byte into SIGINT for the VM: the VM has one thread, busy with
  main.py, and this is how mpremote can interrupt a main.py that never returns.
- ``.control`` is the host end of the board's control socket (board_control.py): press
  buttons, feed UART bytes, set the WiFi access point, wait for the board's events.
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
- Time warp (``warp=True``): sleeps take no time. ``Control`` keeps the virtual clock and
  warps a light sleep, the board here skips a deep sleep: up to its timer, unless an input
  scheduled with ``Control.at(vt, fn)`` comes first (the clock then stops there and the input
  happens). Awake, the board runs at real speed. See board/_vb_time.py.

Every wait has a timeout.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .board_control import BoardError, Control
from .board_program import board_program
from .console_port import BACKLOG_MAX, ConsolePort

RESET_EXIT = 100  # the VM exits with 100 + reset cause to be restarted
PWRON_RESET, HARD_RESET, DEEPSLEEP_RESET = 1, 2, 4
TIMER_WAKE = 4  # esp_sleep_wakeup_cause_t
EPOCH_2000 = 946684800  # Unix time of 2000-01-01, where an ESP32's clock starts


def _micropython() -> str:
    """The VM, found as micropython_vm.binary() finds it ($ANSIM_MICROPYTHON, the one beside this
    Python, or one tools/build_vm.sh built)."""
    from .micropython_vm import MicroPythonMissing, binary
    try:
        return binary()
    except MicroPythonMissing as err:
        raise BoardError(str(err)) from None


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn: the VM gets SIGKILL if the bridge thread that started it goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
        self._console = ConsolePort(self.transport)
        self.port = self._console.name
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
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._console.close()
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
        program, path = board_program(vm)
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
            client = self._console.client_fd()
            fds = {self._wake_r: select.POLLIN}
            if self._vm_out is not None:
                fds[self._vm_out] = select.POLLIN
            if self._vm_in is not None and self._to_vm:
                fds[self._vm_in] = select.POLLOUT
            fds.update(self._console.poll_fds(client))
            poller = select.poll()
            for fd, mask in fds.items():
                poller.register(fd, mask)
            timeout = self._console.poll_ms(client)
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
                    self._from_client(self._console.read(client, ev))
                elif self._console.is_listener(fd):
                    self._console.accept()

    def _from_vm(self) -> bool:
        """Console output to the client (dropped if none); True if the VM ended."""
        try:
            data = os.read(self._vm_out, 65536)
        except OSError:
            data = b""
        if data:
            self._console.write(data)
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

    def _from_client(self, data: bytes) -> None:
        """Console input to the VM; a Ctrl-C in it interrupts the VM."""
        if not data:
            return
        if b"\x03" in data:
            self._interrupt()
        if self._vm_in is not None and len(self._to_vm) < BACKLOG_MAX:
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

"""A MicroPython board without hardware, run by the unix-port VM (see VirtualBoard).

Why a program and not the VM's own REPL: mpremote needs a board's raw REPL on its serial line,
boot.py and main.py after each reset, a flash filesystem and ``machine``/``bluetooth``/
``network``; the unix port has none of these. This program is that board:

- console = stdin/stdout (the UART): friendly and raw REPL as pyexec.c does them (Ctrl-A raw,
  Ctrl-B friendly, Ctrl-C clear, Ctrl-D execute or soft reboot, raw-paste ``\\x05A\\x01``).
  REPL globals persist between executions and are main.py's, as on a board;
- flash = a host directory mounted at ``/`` (``vfs.VfsPosix``), sys.path ``['', '.frozen', '/lib']``;
- the _vb_* modules replace machine, bluetooth, network, socket, time and select in sys.modules before
  any firmware runs, so the firmware is unchanged; they report pins, PWM, UART and
  advertisements on the control socket (JSON lines, see _vb_ctl) and take button presses;
- resets: a soft reset (Ctrl-D, sys.exit, machine.soft_reset) forgets imported modules and
  globals, runs boot.py, and main.py only in friendly mode (so ``mpremote soft-reset`` does
  not start main.py, as on a real board); machine.reset and the watchdog exit the VM with code
  100 + cause and the host starts a new one, which is what a hard reset does to RAM.

Ctrl-C while main.py runs: the VM has one thread and nobody reads the console then. A board's
UART interrupt sees Ctrl-C anyway; here the host bridge does: it sends SIGINT to the VM with
every Ctrl-C byte it forwards, and the unix port raises KeyboardInterrupt wherever the code is,
even in a blocking socket read. The byte itself still arrives and is read by the REPL. A stray
KeyboardInterrupt outside user code only restarts the current REPL loop. The VM's SIGINT handler
is what ``micropython.kbd_intr(3)`` installs on the unix port (as pyexec arms Ctrl-C before it
runs code on an ESP32); main() does that first and every run re-arms it, because the VM installs
it only around what it runs itself, and 1.25's ``-m`` not even then: SIGINT's default action
would kill the VM.

Configuration: env ANSIM_VBOARD names a JSON file {"root": dir, "control": [host, port],
"uid": hex, "cause": n, "rtc_offset": s, "warp": bool, "ticks_start": ms, "chip": "esp32"|"esp32c3",
"wake": reason, "wake_pins": [...], "rtc_memory": hex} (argv crashes the VM beyond ~255
characters; ``rtc_offset``: how far the board's clock is ahead of the host's, ``warp`` and
``ticks_start``: the time warp, see _vb_time; ``wake``/``wake_pins``/``rtc_memory``: after a
deep sleep, see _vb_machine.deepsleep). Without it,
argv[1] is the root and there is no control socket.
"""

import binascii
import builtins
import gc
import json
import micropython
import os
import sys

import vfs

import _vb_ctl as ctl
import _vb_bluetooth
import _vb_esp32
import _vb_machine
import _vb_network
import _vb_os
import _vb_select
import _vb_socket
import _vb_time

RAW, FRIENDLY = "raw", "friendly"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
BANNER = ("MicroPython v%d.%d.%d on ansim virtual board; unix VM\r\n"
          "Type \"help()\" for more information.\r\n" % sys.implementation.version[:3]).encode()
PASTE_WINDOW = 512
FAKES = {"machine": _vb_machine, "bluetooth": _vb_bluetooth, "esp32": _vb_esp32, "network": _vb_network,
         "os": _vb_os, "uos": _vb_os, "time": _vb_time, "utime": _vb_time, "select": _vb_select, "uselect": _vb_select,
         "socket": _vb_socket, "usocket": _vb_socket}

_write = sys.stdout.buffer.write
_readinto = sys.stdin.buffer.readinto
_byte = bytearray(1)
_print = builtins.print


class _Reboot(Exception):
    """A REPL asks for a soft reboot, then continues in ``mode``."""

    def __init__(self, mode):
        self.mode = mode


def getc():
    if not _readinto(_byte):
        raise ctl.Halt()
    return _byte[0]


class Board:
    def __init__(self, cause):
        self.cause = cause
        self.keep = set(sys.modules)
        self.g = {}
        self.tee = False  # firmware prints also go to the host as {"ev": "print"}

    def print(self, *args, sep=" ", end="\n", file=None):
        if file is not None:
            return _print(*args, sep=sep, end=end, file=file)
        _print(*args, sep=sep, end=end)
        if self.tee:
            ctl.send({"ev": "print", "text": sep.join([str(a) for a in args]) + end})

    def run(self):
        """Boot, serve the REPL, reboot; a KeyboardInterrupt skips the rest of a boot."""
        mode, soft, booting = FRIENDLY, False, True
        while True:
            try:
                if booting:
                    self.fresh(soft)
                    if not soft:
                        ctl.hello({"ev": "hello", "cause": self.cause})
                    soft = True
                    if not self.run_file("boot.py") and mode == FRIENDLY:
                        self.run_file("main.py")
                    booting = False
                mode = self.repl(mode)
                booting = True
            except KeyboardInterrupt:
                booting = False
            except (ctl.SoftReset, SystemExit):
                booting = True

    def fresh(self, soft):
        """A soft reboot: what a board forgets (modules, globals, irq handlers, PWM)."""
        if soft:
            _write(b"MPY: soft reboot\r\n")
        for name in list(sys.modules):
            if name not in self.keep:
                del sys.modules[name]
        _vb_machine._soft_reset()
        _vb_bluetooth._soft_reset()
        sys.path[:] = ["", ".frozen", "/lib"]
        os.chdir("/")
        self.g = {"__name__": "__main__"}
        gc.collect()
        ctl.send({"ev": "boot", "soft": soft})

    def run_file(self, name):
        """Runs boot.py or main.py; True if it was interrupted (then main.py is skipped)."""
        try:
            with open(name) as f:
                src = f.read()
        except OSError:
            return False
        ctl.send({"ev": "run", "file": name})
        self.tee = True
        micropython.kbd_intr(3)
        try:
            exec(compile(src, name, "exec"), self.g)
            ctl.send({"ev": "exit", "file": name, "error": None})
        except (ctl.HardReset, ctl.Halt, ctl.SoftReset, SystemExit):
            raise
        except BaseException as e:  # noqa: B036 (a board prints whatever ended main.py)
            sys.print_exception(e)
            ctl.send({"ev": "exit", "file": name, "error": repr(e)})
            return isinstance(e, KeyboardInterrupt)
        finally:
            self.tee = False
        return False

    def execute(self, src, kind):
        """Runs REPL input; a SystemExit becomes a soft reboot in the current mode."""
        micropython.kbd_intr(3)
        try:
            exec(compile(src, "<stdin>", kind), self.g)
        except (ctl.HardReset, ctl.Halt, ctl.SoftReset):
            raise
        except SystemExit:
            raise ctl.SoftReset()
        except BaseException as e:  # noqa: B036
            return e
        return None

    def repl(self, mode):
        """Serves the console until a soft reboot is asked for; returns the mode to keep."""
        banner, prompt = True, True
        while True:
            try:
                if banner:
                    banner = False
                    ctl.send({"ev": "repl", "mode": mode})
                    _write(RAW_BANNER if mode == RAW else BANNER)
                mode = self.raw(prompt) if mode == RAW else self.friendly(prompt)
                prompt = True
            except KeyboardInterrupt:
                prompt = False  # the Ctrl-C byte that came with it does the visible part
            except _Reboot as r:
                return r.mode
            except ctl.SoftReset:
                return mode

    def raw(self, prompt):
        if prompt:
            _write(b">")
        line = bytearray()
        while True:
            c = getc()
            if c == 1:  # Ctrl-A: raw-paste request ("\x05A\x01") or raw REPL reset
                if line == b"\x05A":
                    self.raw_paste()
                else:
                    _write(RAW_BANNER)
                _write(b">")
                line = bytearray()
            elif c == 2:
                _write(b"\r\n" + BANNER)
                return FRIENDLY
            elif c == 3:
                line = bytearray()
            elif c == 4:
                _write(b"OK")
                if not line:
                    _write(b"\r\n")
                    raise _Reboot(RAW)
                self.raw_exec(bytes(line))
                _write(b">")
                line = bytearray()
            else:
                line.append(c)

    def raw_paste(self):
        """Raw-paste mode: no 10 ms pause per 256 bytes in mpremote, and no "OK"."""
        _write(b"R\x01" + bytes([PASTE_WINDOW & 0xFF, PASTE_WINDOW >> 8]) + b"\x01")
        src, window = bytearray(), PASTE_WINDOW
        while True:
            c = getc()
            if c == 4 or c == 3:
                break
            src.append(c)
            window -= 1
            if not window:
                _write(b"\x01")
                window = PASTE_WINDOW
        _write(b"\x04")
        if c == 3:
            raise KeyboardInterrupt()
        self.raw_exec(bytes(src))

    def raw_exec(self, src):
        try:
            err = self.execute(src, "exec")
        except ctl.SoftReset:
            _write(b"\x04\x04")
            raise _Reboot(RAW)
        _write(b"\x04")
        if err is not None:
            sys.print_exception(err)
        _write(b"\x04")

    def friendly(self, prompt):
        if prompt:
            _write(b">>> ")
        line, block, esc = bytearray(), [], False
        while True:
            c = getc()
            if esc:  # skip an escape sequence (arrow keys) up to its final letter
                esc = not (c >= 0x40 and c != 0x5B)
            elif c == 1:
                _write(b"\r\n" + RAW_BANNER)
                return RAW
            elif c == 2:
                _write(b"\r\n" + BANNER + b">>> ")
                line, block = bytearray(), []
            elif c == 3:
                _write(b"\r\n>>> ")
                line, block = bytearray(), []
            elif c == 4:
                if not line and not block:
                    _write(b"\r\n")
                    raise _Reboot(FRIENDLY)
            elif c == 13 or c == 10:
                _write(b"\r\n")
                text, line = line.decode(), bytearray()
                if block:  # a compound statement ends with an empty line
                    if text.strip():
                        block.append(text)
                        _write(b"... ")
                        continue
                    text, block = "\n".join(block) + "\n", []
                elif text.rstrip().endswith(":"):
                    block = [text]
                    _write(b"... ")
                    continue
                if text.strip():
                    err = self.execute(text, "single")
                    if err is not None:
                        sys.print_exception(err)
                _write(b">>> ")
            elif c == 8 or c == 127:
                if line:
                    line.pop()
                    _write(b"\x08 \x08")
            elif c == 27:
                esc = True
            elif c >= 32:
                line.append(c)
                _write(bytes([c]))


def _config():
    path = os.getenv("ANSIM_VBOARD")
    if path:
        with open(path) as f:
            return json.load(f)
    return {"root": sys.argv[1]}


def main():
    micropython.kbd_intr(3)  # before the hello, after which the host sends SIGINT with Ctrl-C
    cfg = _config()
    uid = binascii.unhexlify(cfg.get("uid", "240ac4000001"))
    cause = cfg.get("cause", _vb_machine.PWRON_RESET)
    if cfg.get("control"):
        ctl.connect(cfg["control"][0], cfg["control"][1])
    _vb_machine._setup(uid, cause, cfg.get("wake", 0), cfg.get("wake_pins", ()),
                       binascii.unhexlify(cfg.get("rtc_memory", "")), cfg.get("chip", "esp32"))
    _vb_esp32._setup(cfg.get("chip", "esp32"))
    _vb_time._setup(cfg.get("rtc_offset", 0), cfg.get("warp", False), cfg.get("ticks_start", 0))
    _vb_bluetooth._setup(uid[:5] + bytes([(uid[5] + 2) & 0xFF]))
    _vb_network._setup(uid)
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(cfg["root"]), "/")
    for name in FAKES:
        sys.modules[name] = FAKES[name]
    board = Board(cause)
    builtins.print = board.print
    try:
        board.run()
    except ctl.HardReset as e:
        ctl.send({"ev": "reset", "cause": e.args[0]})
        sys.exit(100 + e.args[0])
    except ctl.Halt:
        sys.exit(0)


main()

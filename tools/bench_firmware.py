"""The benchmark behind ``ansim bench firmware``: each role's firmware on the virtual board
(the real MicroPython unix VM, simulators/hardware/virtual_board.py) against a real mosquitto, printed
next to a baseline measured in the same run, because these machines are shared and noisy:
compare columns, not runs.

1. Latency, ``--runs`` times per role (p50 / p95 / max), all on the host's monotonic clock:
   the start is taken just before the host sends the command (``Control.set_pin`` to the
   board, or paho's ``publish``); the end is ``Control.note``'s receive time ``t`` of the
   board's event, or the time paho's ``on_message`` runs in the subscriber.

   - bell: button press -> its ``bell_press`` frame at a paho subscriber on the same broker;
     press -> siren pin. Between presses a ``resolved`` center_ack brings the bell back to
     idle, and the button stays released 100 ms (it re-arms after 50 ms).
   - streetlight (no button): an authenticated ``light_command`` (brighten, 80 % and 70 % in
     turn) published on its down topic -> the PWM duty change.
   - wearable: the SOS condition, i.e. the third press's falling edge of a triple press ->
     the first ``adv`` event whose data holds an ansim frame that the device key opens as
     ``sos``. ``sos_timeout_s`` 1 ends each SOS, so every run starts from idle.

   Baselines: a minimal main.py on the same kind of board with the simplest code that does
   the same visible thing: a raw-socket MQTT 3.1.1 client that publishes a fixed payload of
   the frame's length (QoS 0) and sets the siren pin from the button's falling-edge handler;
   a raw-socket subscriber that toggles the PWM duty on every publish; a button handler that
   calls ``gap_advertise`` with a fixed advertisement. The difference is what the firmware
   adds (its poll loop, asyncio, frame building with HMAC, counters kept in flash, QoS 1).
   The VM runs on a PC: this is the firmware's structure (poll intervals, task order), not an
   ESP32's CPU time, which is slower, notably for the pure-Python HMAC.

2. Heap, per role and for an empty board (main.py an idle loop): board.py, the _vb_* fakes
   and the REPL live in the same heap as the firmware; the empty board is the baseline. The
   VM is the 64-bit unix port (a word is 8 bytes); the targets are for a 32-bit ESP32.

   - MICROPY_MEM_STATS is built in (``micropython.mem_peak()``), but it counts allocations
     minus explicit frees: memory the GC reclaims is never subtracted, so its "peak" grows
     with garbage and is no high-water mark. Not used.
   - live: a boot.py adds a tick to _vb_ctl that runs ``gc.collect()`` and reads
     ``gc.mem_alloc()`` at every wait (every sleep and asyncio poll) while the role runs its
     scenario: boot, online, the latency cycle once, a heartbeat. Live data only, but peaks
     between two waits (modules being compiled, a frame being built) are missed.
   - smallest: the smallest ``-X heapsize`` at which the same scenario completes, without
     the probe: bisection in ``--heap-resolution`` KB steps upward from 95 % of the live peak
     (no heap holds less than what is live in it), the result run once more to confirm
     ("flaky" if that failed and a step more was needed); a MemoryError printed by the
     firmware, even one it survives, is a failure. It includes every transient,
     fragmentation and the GC's tables (~1.5 %), and the board's own needs (it reads host
     commands 512 bytes at a time: with 4 KB reads, that block was what a fragmented heap
     lacked first, and the bound was tens of KB looser), so it is an upper bound. With
     ``--mpy`` the modules are flashed precompiled, as ``ansim flash --mpy`` does: nothing
     is compiled on the board.
   - the firmware's share, 64-bit: LOW = its live peak minus the empty board's live peak;
     HIGH = its smallest heap minus what the board always holds (the empty board's lowest
     live reading, minus the probe's own bytes): at every moment board + firmware fitted in
     that heap, and the board never held less. The empty board's own smallest heap is
     printed, not subtracted: it is the board's boot, a transient that is over before the
     firmware starts (smaller since the board runs precompiled: 75 -> 50 KB on 32-bit). LOW also carries the fakes' state for the pins and
     the radio the firmware set up (0.7 KB for the wearable's), so verdicts take
     ``FAKES_KB`` off it.
   - 32-bit: an object takes at most as many bytes on a 32-bit port (GC blocks are 4 words:
     32 B here, 16 B there) and at least half (only words shrink; strings and bytecode do
     not). So an ESP32 needs between (LOW - FAKES_KB) / 2 and HIGH: a target is "met" if
     HIGH is within it, "MISSED" if (LOW - FAKES_KB) / 2 is over it, else "unproven". The
     estimate (LOW - FAKES_KB) / 2 .. HIGH / 2 uses MicroPython's own factor (the unix
     port's ``-X heapsize=<n>w`` doubles a heap on 64-bit); an estimate, not evidence.
   - a 32-bit VM: ``make vm32`` (tools/build_vm32.sh) builds the unix port with gcc -m32 from
     Debian's micropython source; ``ANSIM_MICROPYTHON=<it>`` makes the virtual board run it,
     and the heap is then read in the ESP32's word size (the header says "32-bit"): the
     bounds are then LOW - FAKES_KB .. HIGH themselves, no halving.
   - frozen: ``--frozen`` with a VM that has the firmware frozen in (``make vm32`` builds
     ``micropython-frozen``; firmware/manifest.py is the same list for an ESP32 image) flashes
     only main.py and config.json: module code then stays in the image, not in the heap, as
     on a board whose firmware image holds it.
   - what the firmware keeps: one more board imports the role's modules one by one and builds
     the role's object, with ``gc.mem_alloc()`` after ``gc.collect()`` each time. A module's
     figure also carries the qstr pool growth it happened to trigger (a few KB either way).
"""

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.fixtures.broker import MosquittoBroker, connect_client
from ansim_simulators.hardware.micropython_vm import binary as micropython_binary
from ansim_simulators.hardware.virtual_board import BoardError, VirtualBoard
from ansim_tools.flash import FlashError, copy_to_directory, firmware_files, precompile

ROLES = ("bell", "streetlight", "wearable")
LATENCY_TARGET_MS = 50.0
HEAP_TARGETS_KB = {"wearable": 24, "bell": 48, "streetlight": 48}
BUTTON, TAMPER, SIREN, STROBE, PWM_PIN = 0, 4, 25, 26, 5
RELEASE_S = 0.1  # the bell and the wearable re-arm a button after 50 ms released
TAP_S = 0.08  # each of a triple press's first two taps, down and up
WAIT_S = 10.0  # for any one step of a scenario
LATENCY_HEAP = "512k"
FAKES_KB = 1.0  # the _vb_* fakes' own state for a firmware's pins and radio (measured: 0.7 KB)


def say(text=""):
    print(text, flush=True)


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples):
    return {"n": len(samples), "p50": statistics.median(samples), "p95": percentile(samples, 0.95),
            "max": max(samples)}


class ScenarioFailed(RuntimeError):
    pass


# -- the host side ------------------------------------------------------------------------------

class Rig:
    """A private mosquitto and a paho subscriber that stamps every message with the host's
    monotonic clock when paho hands it over (the clock of ``Control.note``)."""

    def __init__(self, workdir):
        self.broker = MosquittoBroker(workdir=Path(workdir) / "broker").start()
        self._cond = threading.Condition()
        self.messages = []
        try:
            self.client = connect_client("127.0.0.1", self.broker.port, client_id="bench-firmware")
        except BaseException:
            self.broker.stop()
            raise
        self.client.paho.on_message = self._on_message
        # the instrument must not add Nagle's wait: its PUBACKs for the devices' QoS 1 messages
        # would otherwise hold its next publish until the broker's delayed ACK (~40 ms)
        self.client.paho.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def port(self):
        return self.broker.port

    def _on_message(self, client, userdata, msg):
        t = time.monotonic()
        with self._cond:
            self.messages.append((t, msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def subscribe(self, topic):
        self.client.subscribe(topic)

    def publish(self, topic, payload):
        """Hand to paho (QoS 1) and return at once; returns the monotonic time just before."""
        t = time.monotonic()
        self.client.paho.publish(topic, payload, qos=1)
        return t

    def mark(self):
        with self._cond:
            return len(self.messages)

    def wait(self, predicate, since, board, timeout=WAIT_S, what="a message"):
        """The first (t, topic, payload) from ``since`` on for which ``predicate`` holds;
        ScenarioFailed early if the board's firmware died."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if predicate(*m):
                        return m
                since = max(since, len(self.messages))
                _check_alive(board)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioFailed("no %s within %.0f s" % (what, timeout))
                self._cond.wait(min(left, 0.05))

    def close(self):
        self.client.close()
        self.broker.stop()


def _fatal(e):
    """An event that means the firmware (or the VM) is gone."""
    ev = e.get("ev")
    return (ev == "exit" and e.get("file") == "main.py") or ev in ("vm_exit", "bridge_error") or (
        ev == "print" and "MemoryError" in e.get("text", ""))


def _check_alive(board):
    for e in board.control.events():
        if _fatal(e):
            raise ScenarioFailed("the firmware stopped: %s" % json.dumps(e)[:200])


def expect(board, since, predicate=None, timeout=WAIT_S, **fields):
    """Control.wait_for that fails at once (ScenarioFailed) when main.py or the VM ends."""
    def match(e):
        return all(e.get(k) == v for k, v in fields.items()) and (predicate is None or predicate(e))

    try:
        e = board.control.wait_for(lambda e: match(e) or _fatal(e), timeout=timeout, since=since)
    except TimeoutError:
        raise ScenarioFailed("no event %s within %.0f s" % (fields, timeout)) from None
    if not match(e):
        raise ScenarioFailed("the firmware stopped: %s" % json.dumps(e)[:200])
    return e


def printed(board, text, since, timeout=WAIT_S):
    return expect(board, since, lambda e: text in e.get("text", ""), timeout, ev="print")


def _board(flash_dir, workdir, heap, start_timeout=10.0):
    board = VirtualBoard(flash_dir, "socket", workdir=workdir, heap=heap, start_timeout=start_timeout)
    return board.start()


def _prints(board, last=12):
    return "".join(e.get("text", "") for e in board.control.events() if e.get("ev") == "print").splitlines()[-last:]


class _Failing:
    """``with _Failing(board, what):`` a ScenarioFailed names the step and the board's last prints."""

    def __init__(self, board, what):
        self.board, self.what = board, what

    def __enter__(self):
        return self.board

    def __exit__(self, kind, err, tb):
        if kind is ScenarioFailed:
            raise ScenarioFailed("%s: %s; the board's last prints: %s" % (self.what, err, _prints(self.board))) from err



# -- the roles ----------------------------------------------------------------------------------

BASE_CONNECT = """
import machine, socket, time
s = socket.socket()
s.connect(socket.getaddrinfo(HOST, PORT)[0][-1])
cid = b"bench-baseline"
body = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x00\\x00" + bytes([len(cid)]) + cid
s.write(bytes([0x10, len(body)]) + body)
s.read(4)  # CONNACK
t = TOPIC.encode()
"""

BELL_BASELINE = BASE_CONNECT + """
body = bytes([0, len(t)]) + t + PAYLOAD
publish = bytes([0x30, len(body)]) + body
siren = machine.Pin(SIREN, machine.Pin.OUT, value=0)

def edge(pin):
    if pin.value() == 0:
        s.write(publish)
        siren.value(1)
    else:
        siren.value(0)

machine.Pin(BUTTON, machine.Pin.IN, machine.Pin.PULL_UP).irq(edge, machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)
print("baseline: ready")
while True:
    time.sleep_ms(1000)
"""

LIGHT_BASELINE = BASE_CONNECT + """
body = b"\\x00\\x01" + bytes([0, len(t)]) + t + b"\\x00"
s.write(bytes([0x82, len(body)]) + body)
s.read(5)  # SUBACK
pwm = machine.PWM(machine.Pin(PWM_PIN), freq=1000, duty_u16=0)
duty = 0
print("baseline: ready")
while True:
    data = s.recv(256)
    if not data:
        break
    if data[0] & 0xF0 == 0x30:
        duty = 65535 - duty
        pwm.duty_u16(duty)
"""

WEARABLE_BASELINE = """
import bluetooth, machine, time
radio = bluetooth.BLE()
radio.active(True)

def edge(pin):
    radio.gap_advertise(30000, ADV, connectable=False)

machine.Pin(BUTTON, machine.Pin.IN, machine.Pin.PULL_UP).irq(edge, machine.Pin.IRQ_FALLING)
print("baseline: ready")
while True:
    time.sleep_ms(1000)
"""

EMPTY_MAIN = """
import time
print("idle")
while True:
    time.sleep_ms(100)
"""

# boot.py of the heap runs: the live heap after a collection at every wait point.
HEAP_PROBE = """
import gc
import _vb_ctl
gc.collect()
_hwm = [0, 0, 1 << 30, gc.mem_alloc()]  # peak, samples, lowest, (then) the probe's own size

def _probe():
    gc.collect()
    a = gc.mem_alloc()
    if a > _hwm[0]:
        _hwm[0] = a
    if a < _hwm[2]:
        _hwm[2] = a
    _hwm[1] += 1

def _report(msg):
    gc.collect()
    _vb_ctl.send({"ev": "heap", "peak": _hwm[0], "lowest": _hwm[2], "samples": _hwm[1], "probe": _hwm[3],
                  "now": gc.mem_alloc()})

_vb_ctl.ticks.append(_probe)
_vb_ctl.handlers["heap"] = _report
gc.collect()
_hwm[3] = gc.mem_alloc() - _hwm[3]
"""

# main.py of the breakdown run: what each module keeps after import, then the role's object.
BREAKDOWN_MAIN = """
import gc, json, time
gc.collect()
out = []
base = gc.mem_alloc()
for name in MODULES:
    __import__(name)
    gc.collect()
    a = gc.mem_alloc()
    out.append((name, a - base))
    base = a
from ansim_device import config as config_module
obj = getattr(__import__(ROLE), CLASS)(config_module.load())
gc.collect()
out.append((ROLE + "." + CLASS + "(config)", gc.mem_alloc() - base))
print("BREAKDOWN " + json.dumps(out))
while True:
    time.sleep_ms(100)
"""


def _script(body, **values):
    return "".join("%s = %r\n" % kv for kv in values.items()) + body


class Role:
    """One role: how to flash it and its baseline, wait until it works, and one measured cycle.
    ``measure`` returns {metric: ms}; ``metrics`` names them with their descriptions."""

    name = ""
    device_id = 0
    cls = ""
    modules = ()
    metrics = {}

    def __init__(self):
        self.key = os.urandom(16)
        self.keys = DeviceKeys(self.key)
        self.hex_id = "%08x" % self.device_id
        self.up = topics.topic(self.device_id, topics.UP)
        self.down = topics.topic(self.device_id, topics.DOWN)
        self.base_topic = "ansim/bench/baseline/" + self.name
        self.down_counter = 0
        self.mpy_dir = None  # set: flash modules precompiled there (ansim flash --mpy)
        self.frozen = False  # set: the VM image holds the modules; flash main.py only (ansim flash --frozen)
        self._plan = None

    def config(self, port, heartbeat_s):
        return {"device_id": self.hex_id, "role": self.name, "key": self.key.hex(),
                "position": [37.5663, 126.9779], "broker": {"host": "127.0.0.1", "port": port},
                "heartbeat_s": heartbeat_s}

    def plan(self):
        """What ``ansim flash`` puts on the board (with ``--mpy``: precompiled modules)."""
        if self._plan is None:
            self._plan = firmware_files(self.name, frozen=self.frozen)
            if self.mpy_dir is not None:
                self.mpy_dir.mkdir(parents=True, exist_ok=True)
                self._plan = precompile(self._plan, self.mpy_dir)
        return self._plan

    def flash(self, directory, port, heartbeat_s=30, main=None, boot=None):
        directory = Path(directory)
        copy_to_directory(self.plan(), directory)
        (directory / "config.json").write_text(json.dumps(self.config(port, heartbeat_s)))
        if main is not None:
            (directory / "main.py").write_text(main)
        if boot is not None:
            (directory / "boot.py").write_text(boot)
        self.down_counter = 0  # a fresh flash: a fresh replay guard

    def flash_baseline(self, directory, port):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "main.py").write_text(self.baseline_script(port))

    def ready_baseline(self, board):
        printed(board, "baseline: ready", 0)

    def heartbeat(self, rig, board):
        """Wait for a heartbeat sent from now on."""
        rig.wait(lambda t, topic, p: topic == self.up and self._kind(p) == "heartbeat", rig.mark(), board,
                 what="heartbeat")

    def _kind(self, payload):
        try:
            return frames.unpack(payload, self.keys).kind
        except FrameError:
            return None

    def downlink(self, kind, fields):
        self.down_counter += 1
        return frames.build_plain(kind, fields, self.keys, self.device_id, self.down_counter, downlink=True)


class Bell(Role):
    name, device_id, cls = "bell", 0x00020001, "Bell"
    modules = ("ansim_protocol.errors", "ansim_protocol.crypto", "ansim_protocol.frames", "ansim_protocol.topics",
               "ansim_device.counter", "asyncio", "ansim_device.mqtt", "ansim_device.link", "bell")
    metrics = {"publish": "button press -> bell_press at a paho subscriber on the same mosquitto",
               "siren": "button press -> siren pin"}

    def config(self, port, heartbeat_s):
        return dict(super().config(port, heartbeat_s), button_pin=BUTTON, tamper_pin=TAMPER, siren_pin=SIREN,
                    strobe_pin=STROBE)

    def subscriptions(self):
        return (self.up, self.base_topic)

    def ready(self, rig, board, since):
        """Online, and its boot report (the virtual lid reads open) delivered: a frame queued
        before the link was up is sent by a loop that looks every 200 ms, and a press in that
        window would wait behind it (the first press right after boot or a reconnection)."""
        printed(board, "bell: online as", 0)
        rig.wait(lambda t, topic, p: topic == self.up and self._kind(p) == "tamper", since, board,
                 what="tamper report")

    def measure(self, rig, board):
        since, mark = rig.mark(), board.control.mark()
        t0 = time.monotonic()
        board.control.set_pin(BUTTON, 0)
        t, _, payload = rig.wait(lambda t, topic, p: topic == self.up and self._kind(p) == "bell_press",
                                 since, board, what="bell_press")
        siren = expect(board, mark, ev="pin", pin=SIREN, value=1)
        board.control.set_pin(BUTTON, 1)
        # a resolved ack ends the alarm: the next press starts from idle, siren off
        press = frames.unpack(payload, self.keys)
        rig.publish(self.down, self.downlink("center_ack", {"acked_counter": press.counter, "status": "resolved"}))
        expect(board, mark, ev="pin", pin=STROBE, value=0)
        time.sleep(RELEASE_S)
        return {"publish": (t - t0) * 1e3, "siren": (siren["t"] - t0) * 1e3}

    def baseline_script(self, port):
        size = len(frames.build_plain("bell_press", {"button": 1}, self.keys, self.device_id, 1))
        return _script(BELL_BASELINE, HOST="127.0.0.1", PORT=port, TOPIC=self.base_topic, PAYLOAD=bytes(size),
                       BUTTON=BUTTON, SIREN=SIREN)

    def measure_baseline(self, rig, board):
        since, mark = rig.mark(), board.control.mark()
        t0 = time.monotonic()
        board.control.set_pin(BUTTON, 0)
        t, _, _ = rig.wait(lambda t, topic, p: topic == self.base_topic, since, board, what="baseline publish")
        siren = expect(board, mark, ev="pin", pin=SIREN, value=1)
        mark = board.control.mark()
        board.control.set_pin(BUTTON, 1)
        expect(board, mark, ev="pin", pin=SIREN, value=0)
        time.sleep(RELEASE_S)  # paced as the firmware's presses
        return {"publish": (t - t0) * 1e3, "siren": (siren["t"] - t0) * 1e3}


def duty(pct):
    return pct * 65535 // 100


class Streetlight(Role):
    name, device_id, cls = "streetlight", 0x00030001, "Streetlight"
    modules = Bell.modules[:-1] + ("streetlight",)
    metrics = {"pwm": "light_command published on its down topic -> PWM duty change"}

    def config(self, port, heartbeat_s):
        return dict(super().config(port, heartbeat_s), pwm_pin=PWM_PIN)

    def subscriptions(self):
        return (self.up,)

    def ready(self, rig, board, since):
        printed(board, "light: online as", 0)
        self.level = None

    def measure(self, rig, board):
        level = 70 if self.level == 80 else 80  # never the schedule's 60 % or 0 %
        self.level = level
        command = self.downlink("light_command", {"action": "brighten", "level_pct": level, "duration_s": 0,
                                                  "expires": int(time.time()) + 60})
        mark = board.control.mark()
        t0 = rig.publish(self.down, command)
        pwm = expect(board, mark, ev="pwm", pin=PWM_PIN, duty_u16=duty(level))
        return {"pwm": (pwm["t"] - t0) * 1e3}

    def baseline_script(self, port):
        return _script(LIGHT_BASELINE, HOST="127.0.0.1", PORT=port, TOPIC=self.base_topic, PWM_PIN=PWM_PIN)

    def measure_baseline(self, rig, board):
        payload = self.downlink("light_command", {"action": "brighten", "level_pct": 80, "duration_s": 0,
                                                  "expires": int(time.time()) + 60})
        mark = board.control.mark()
        t0 = rig.publish(self.base_topic, payload)
        pwm = expect(board, mark, ev="pwm", pin=PWM_PIN)
        return {"pwm": (pwm["t"] - t0) * 1e3}


class Wearable(Role):
    name, device_id, cls = "wearable", 0x00010001, "Wearable"
    modules = ("ansim_protocol.errors", "ansim_protocol.crypto", "ansim_protocol.frames", "ansim_protocol.ble",
               "ansim_device.counter", "ansim_device.clock", "ansim_device.beacon", "wearable")
    metrics = {"advert": "SOS condition (3rd press's falling edge) -> first advert holding an ansim frame"}

    def config(self, port, heartbeat_s):
        return dict(super().config(port, heartbeat_s), button_pin=BUTTON, sos_timeout_s=1)

    def subscriptions(self):
        return ()

    def ready(self, rig, board, since):
        printed(board, "wearable: ready", 0)

    def _advert_kind(self, e):
        if not e.get("data"):
            return None
        try:
            return frames.unpack(ble.frame_from_advertisement(bytes.fromhex(e["data"])), self.keys).kind
        except FrameError:
            return None

    def measure(self, rig, board):
        ctl = board.control
        for _ in range(2):
            ctl.set_pin(BUTTON, 0)
            time.sleep(TAP_S)
            ctl.set_pin(BUTTON, 1)
            time.sleep(TAP_S)
        mark = ctl.mark()
        t0 = time.monotonic()
        ctl.set_pin(BUTTON, 0)
        adv = expect(board, mark, lambda e: self._advert_kind(e) == "sos", ev="adv")
        ctl.set_pin(BUTTON, 1)
        printed(board, "not acknowledged in time", mark)  # sos_timeout_s 1: idle again
        time.sleep(RELEASE_S)
        return {"advert": (adv["t"] - t0) * 1e3}

    def heartbeat(self, rig, board):
        expect(board, board.control.mark(), lambda e: self._advert_kind(e) == "heartbeat", ev="adv")

    def baseline_script(self, port):
        return _script(WEARABLE_BASELINE, ADV=ble.advertisement(bytes(frames.SEALED_SIZE)), BUTTON=BUTTON)

    def measure_baseline(self, rig, board):
        mark = board.control.mark()
        t0 = time.monotonic()
        board.control.set_pin(BUTTON, 0)
        adv = expect(board, mark, ev="adv")
        board.control.set_pin(BUTTON, 1)
        time.sleep(RELEASE_S)
        return {"advert": (adv["t"] - t0) * 1e3}


ROLE_CLASSES = {"bell": Bell, "streetlight": Streetlight, "wearable": Wearable}


# -- 1. latency -----------------------------------------------------------------------------------

def bench_latency(role, rig, tmp, runs):
    for topic in role.subscriptions():
        rig.subscribe(topic)
    base, fw = {m: [] for m in role.metrics}, {m: [] for m in role.metrics}
    role.flash_baseline(tmp / "baseline-flash", rig.port)
    board = _board(tmp / "baseline-flash", tmp / "baseline-vm", LATENCY_HEAP)
    try:
        with _Failing(board, "%s baseline" % role.name):
            role.ready_baseline(board)
            for _ in range(runs):
                for m, v in role.measure_baseline(rig, board).items():
                    base[m].append(v)
    finally:
        board.stop()
    role.flash(tmp / "flash", rig.port)
    since = rig.mark()
    board = _board(tmp / "flash", tmp / "vm", LATENCY_HEAP)
    try:
        with _Failing(board, "%s firmware" % role.name):
            role.ready(rig, board, since)
            for _ in range(runs):
                for m, v in role.measure(rig, board).items():
                    fw[m].append(v)
    finally:
        board.stop()
    result = {}
    for m, what in role.metrics.items():
        b, f = summary(base[m]), summary(fw[m])
        result[m] = {"what": what, "baseline": b, "firmware": f, "added_p50": f["p50"] - b["p50"],
                     "added_p95": f["p95"] - b["p95"], "baseline_ms": base[m], "firmware_ms": fw[m]}
        say("   %s: %s" % (role.name, what))
        for label, s in (("minimal main.py (baseline)", b), ("%s firmware" % role.name, f)):
            say("     %-28s p50 %6.1f ms   p95 %6.1f ms   max %6.1f ms" % (label, s["p50"], s["p95"], s["max"]))
        say("     added by the firmware: p50 %+.1f ms, p95 %+.1f ms" % (result[m]["added_p50"], result[m]["added_p95"]))
    return result


# -- 2. heap --------------------------------------------------------------------------------------

class Scenario:
    """Boot, come online, one latency cycle, one heartbeat: what a heap must be big enough for.
    ``role`` None is the empty board (main.py an idle loop)."""

    def __init__(self, role, rig, tmp):
        self.role, self.rig, self.tmp = role, rig, tmp
        self.count = 0

    def flash(self, directory, boot=None):
        if self.role is None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "main.py").write_text(EMPTY_MAIN)
            if boot is not None:
                (directory / "boot.py").write_text(boot)
        else:
            self.role.flash(directory, self.rig.port, heartbeat_s=1, boot=boot)

    def run(self, heap_kb, probe=False):
        """None if the scenario completed in ``heap_kb`` (the probe's reading with ``probe``);
        else ScenarioFailed/BoardError is raised."""
        self.count += 1
        name = "%s-%d" % (self.role.name if self.role else "empty", self.count)
        flash_dir = self.tmp / (name + "-flash")
        self.flash(flash_dir, HEAP_PROBE if probe else None)
        since = self.rig.mark()
        board = _board(flash_dir, self.tmp / (name + "-vm"), "%dk" % heap_kb, start_timeout=5.0)
        try:
            with _Failing(board, "%s in a %d KB heap" % (name, heap_kb)):
                if self.role is None:
                    printed(board, "idle", 0)
                    time.sleep(1.0)  # as long as a role's heartbeat period: the board idles
                else:
                    self.role.ready(self.rig, board, since)
                    self.role.measure(self.rig, board)
                    self.role.heartbeat(self.rig, board)
                if probe:
                    mark = board.control.mark()
                    board.control.send({"cmd": "heap"})
                    return expect(board, mark, ev="heap")
                _check_alive(board)
                return None
        finally:
            board.stop()

    def works(self, heap_kb):
        try:
            self.run(heap_kb)
            return True
        except (ScenarioFailed, BoardError):
            return False


def smallest_heap(scenario, lo_kb, hi_kb, resolution):
    """Bisection between ``lo_kb`` (assumed too small) and ``hi_kb`` (known to work), then the
    result run once more; a failure there moves it up one step (at most three times)."""
    runs = 0
    while hi_kb - lo_kb > resolution:
        mid = (lo_kb + hi_kb) // 2
        runs += 1
        if scenario.works(mid):
            hi_kb = mid
        else:
            lo_kb = mid
    confirmed = False
    for _ in range(3):
        runs += 1
        if scenario.works(hi_kb):
            confirmed = True
            break
        hi_kb += resolution
    return {"kb": hi_kb, "confirmed": confirmed, "runs": runs}


def heap_for(role, rig, tmp, resolution):
    """The probe's readings (live heap at wait points) and the smallest working heap, in KB
    (64-bit, the whole VM heap: board and firmware)."""
    scenario = Scenario(role, rig, tmp)
    if role is not None:
        for topic in role.subscriptions():
            rig.subscribe(topic)
    probe = scenario.run(int(LATENCY_HEAP[:-1]), probe=True)
    live_kb = probe["peak"] / 1024
    search = smallest_heap(scenario, max(1, int(live_kb * 0.95)), int(LATENCY_HEAP[:-1]), resolution)
    return {"live_peak_kb": live_kb, "live_lowest_kb": probe["lowest"] / 1024, "probe_kb": probe["probe"] / 1024,
            "probe_samples": probe["samples"], "smallest_heap_kb": search["kb"], "confirmed": search["confirmed"],
            "search_runs": search["runs"]}


def firmware_share(h, empty):
    """The firmware's part of the heap, 64-bit KB: (low, high).

    low: its live peak at wait points minus the empty board's (transients between waits
    missed). high: the smallest heap it ran in minus what the board always holds (the empty
    board's lowest live reading without the probe): at any moment live(board) + live(firmware)
    fitted in that heap, and live(board) never went below that."""
    return (h["live_peak_kb"] - empty["live_peak_kb"],
            h["smallest_heap_kb"] - (empty["live_lowest_kb"] - empty["probe_kb"]))


def breakdown(role, rig, tmp):
    """[(what, bytes kept)] for the role's modules imported one by one, then its object."""
    directory = tmp / "breakdown-flash"
    role.flash(directory, rig.port, main=_script(BREAKDOWN_MAIN, MODULES=list(role.modules), ROLE=role.name,
                                                   CLASS=role.cls))
    board = _board(directory, tmp / "breakdown-vm", LATENCY_HEAP)
    try:
        with _Failing(board, "%s breakdown" % role.name):
            e = printed(board, "BREAKDOWN ", 0)
    finally:
        board.stop()
    return [tuple(x) for x in json.loads(e["text"].split("BREAKDOWN ", 1)[1])]


def range_32bit(low_kb, high_kb, bits):
    """What an ESP32 needs, bounded from the VM's figures: on a 64-bit VM between half and all
    of them, on a 32-bit VM the figures themselves (module docstring)."""
    return [(low_kb - FAKES_KB) / (2 if bits == 64 else 1), high_kb]


def verdict(low_kb, high_kb, target_kb, bits=64):
    lowest, highest = range_32bit(low_kb, high_kb, bits)
    if highest <= target_kb:
        return "met"
    if lowest > target_kb:
        return "MISSED"
    return "unproven"


# -- the command ----------------------------------------------------------------------------------

def vm_info():
    out = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.maxsize > 1 << 32, "
                          "'.'.join(str(v) for v in sys.implementation.version[:3]))"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    frozen = subprocess.run([micropython_binary(), "-c", "import ansim_protocol.frames, ansim_device.clock"],
                            capture_output=True, text=True, timeout=30, env=dict(os.environ, MICROPYPATH=".frozen"))
    return {"bits": 64 if out[0] == "True" else 32, "version": out[1], "frozen": frozen.returncode == 0}


def run(args):
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLE_CLASSES]
    if unknown or not roles:
        say("ansim bench firmware: unknown role(s) %s (known: %s)" % (", ".join(unknown), ", ".join(ROLES)))
        return 2
    missing = []
    for r in roles:
        try:
            firmware_files(r)
        except FlashError as err:
            missing.append(r)
            say("ansim bench firmware: %s skipped: %s" % (r, err))
    roles = [r for r in roles if r not in missing]
    if not roles:
        return 2
    vm = vm_info()
    if args.frozen and not vm["frozen"]:
        say("ansim bench firmware: --frozen needs a VM with the firmware frozen in (make vm32, then "
            "ANSIM_MICROPYTHON=/tmp/ansim-vm32/micropython-frozen); %s has none" % micropython_binary())
        return 2
    results = {"vm": vm, "runs": args.runs, "mpy": bool(args.mpy), "frozen": bool(args.frozen), "roles": {},
               "missing": missing}
    say("ansim bench firmware (%d cores, MicroPython %s unix VM, %d-bit; %d runs per role)"
        % (os.cpu_count(), vm["version"], vm["bits"], args.runs))
    with tempfile.TemporaryDirectory(prefix="ansim-bench-fw-") as tmp:
        tmp = Path(tmp)
        rig = Rig(tmp)
        try:
            objects = {r: ROLE_CLASSES[r]() for r in roles}
            for r in roles:
                objects[r].frozen = bool(args.frozen)
                if args.mpy:
                    objects[r].mpy_dir = tmp / ("mpy-" + r)
            say("\n1. latency on the virtual board (host monotonic clock: command sent -> event received)")
            for r in roles:
                results["roles"][r] = {"latency": bench_latency(objects[r], rig, tmp / ("latency-" + r), args.runs)}
            if not args.no_heap:
                results["empty_board"] = _heap_section(objects, roles, rig, tmp, args.heap_resolution, results)
        except (ScenarioFailed, BoardError) as err:
            print("ansim bench firmware: %s" % err, file=sys.stderr)
            return 1
        finally:
            rig.close()
    _summary(results, roles, args.no_heap)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _heap_section(objects, roles, rig, tmp, resolution, results):
    say("\n2. heap on the virtual board, KB of the %d-bit VM's heap%s"
        % (results["vm"]["bits"], " (modules frozen in the VM image, ansim flash --frozen)" if results["frozen"] else
           " (modules precompiled, ansim flash --mpy)" if results["mpy"] else
           " (modules as .py, as ansim flash copies them by default)"))
    say("   scenario: boot, online, one cycle of 1., a heartbeat. live: gc.mem_alloc() after gc.collect() at every")
    say("   wait point; smallest: the smallest -X heapsize that runs the scenario (bisection, %d KB steps)"
        % resolution)
    empty = heap_for(None, rig, tmp / "heap-empty", resolution)
    say("     %-24s live %6.1f (lowest %.1f, probe %.1f)   smallest %4d%s"
        % ("empty board (baseline)", empty["live_peak_kb"], empty["live_lowest_kb"], empty["probe_kb"],
           empty["smallest_heap_kb"], "" if empty["confirmed"] else " (flaky)"))
    for r in roles:
        h = heap_for(objects[r], rig, tmp / ("heap-" + r), resolution)
        low, high = firmware_share(h, empty)
        bits = results["vm"]["bits"]
        estimate = [low - FAKES_KB, high] if bits == 32 else [(low - FAKES_KB) / 2, high / 2]
        h.update(share_kb=[low, high], range_32bit_kb=range_32bit(low, high, bits), estimate_32bit_kb=estimate,
                 target_kb=HEAP_TARGETS_KB[r], verdict=verdict(low, high, HEAP_TARGETS_KB[r], bits))
        results["roles"][r]["heap"] = h
        say("     %-24s live %6.1f   smallest %4d%s   firmware's share %.1f .. %.1f"
            % (r + " firmware", h["live_peak_kb"], h["smallest_heap_kb"], "" if h["confirmed"] else " (flaky)",
               low, high))
    say("   firmware's share: from its live peak minus the empty board's, to its smallest heap minus what the")
    if results["vm"]["bits"] == 32:
        say("   board always holds (%.1f KB), in 32-bit words as on an ESP32 (less %.0f KB of the fakes' state)"
            % (empty["live_lowest_kb"] - empty["probe_kb"], FAKES_KB))
    else:
        say("   board always holds (%.1f KB). A 32-bit ESP32 needs between half (less %.0f KB of the fakes' state)"
            % (empty["live_lowest_kb"] - empty["probe_kb"], FAKES_KB))
        say("   and all of it; halving is an estimate")
    say("\n3. what the firmware keeps, KB (%d-bit; gc.mem_alloc() after gc.collect() around each import)"
        % results["vm"]["bits"])
    for r in roles:
        parts = breakdown(objects[r], rig, tmp / ("breakdown-" + r))
        results["roles"][r]["breakdown"] = parts
        kept = sum(p[1] for p in parts) / 1024
        biggest = sorted(parts, key=lambda p: -p[1])
        say("   %-12s %s" % (r, ", ".join("%s %.1f" % (name, size / 1024) for name, size in biggest)))
        say("   %-12s total %.1f; while running another %.1f (live peak minus the board minus this)"
            % ("", kept, results["roles"][r]["heap"]["share_kb"][0] - kept))
    return empty


def _summary(results, roles, no_heap):
    say("\nsummary against the targets")
    for r in roles:
        for m, lat in results["roles"][r]["latency"].items():
            ok = lat["firmware"]["p95"] <= LATENCY_TARGET_MS
            say("  %-28s %6.1f ms p95 (baseline %.1f)           target <= %d ms  %s"
                % ("%s %s latency" % (r, m), lat["firmware"]["p95"], lat["baseline"]["p95"], LATENCY_TARGET_MS,
                   "ok" if ok else "MISSED"))
        if no_heap:
            continue
        h = results["roles"][r]["heap"]
        say("  %-28s %4.1f-%.1f KB on 32-bit, estimate %.1f-%.1f  target <= %d KB  %s"
            % ("%s heap" % r, h["range_32bit_kb"][0], h["range_32bit_kb"][1], h["estimate_32bit_kb"][0],
               h["estimate_32bit_kb"][1], h["target_kb"], h["verdict"]))
    say("  (%s host; the VM is not an ESP32: latency shows the firmware's structure, not an ESP32's CPU time)"
        % platform.machine())

"""Each role's measured cycle on the virtual board for ``ansim bench firmware`` (bench_firmware),
and its baseline.

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
"""

import json
import os
import time
from pathlib import Path

from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_tools.firmware_rig import expect, main_script, printed
from ansim_tools.flash import copy_to_directory, firmware_files, precompile

ROLES = ("bell", "streetlight", "wearable")
BUTTON, TAMPER, SIREN, STROBE, PWM_PIN = 0, 4, 25, 26, 5
RELEASE_S = 0.1  # the bell and the wearable re-arm a button after 50 ms released
TAP_S = 0.08  # each of a triple press's first two taps, down and up

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
        return main_script(BELL_BASELINE, HOST="127.0.0.1", PORT=port, TOPIC=self.base_topic, PAYLOAD=bytes(size),
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
        return main_script(LIGHT_BASELINE, HOST="127.0.0.1", PORT=port, TOPIC=self.base_topic, PWM_PIN=PWM_PIN)

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
        return main_script(WEARABLE_BASELINE, ADV=ble.advertisement(bytes(frames.SEALED_SIZE)), BUTTON=BUTTON)

    def measure_baseline(self, rig, board):
        mark = board.control.mark()
        t0 = time.monotonic()
        board.control.set_pin(BUTTON, 0)
        adv = expect(board, mark, ev="adv")
        board.control.set_pin(BUTTON, 1)
        time.sleep(RELEASE_S)
        return {"advert": (adv["t"] - t0) * 1e3}


ROLE_CLASSES = {"bell": Bell, "streetlight": Streetlight, "wearable": Wearable}

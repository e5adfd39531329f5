"""Lightweight in-process devices: bells and streetlights on a local broker, wearables on the
virtual air, each speaking the real protocol (the codec of ansim_protocol, its own key, its
own counter).

Why: the firmware on a virtual board costs a MicroPython VM per device; a district has
thousands. These devices send exactly the frames the firmware sends (same envelopes, keys and
counters, the same topics, retained online/offline state with a last will), so the agent
cannot tell them apart, at a few kilobytes each. What they do not model: the firmware's
timing (debounce, re-send schedules), sirens, PWM; their behaviour is what the agent sees.

A ``Link`` is one MQTT connection. Scenario devices have one each (a WiFi drop or a power cut
is that socket closing without DISCONNECT, so the broker fires the device's will); the load
generator shares one link among many devices (``Link(devices=[...])``): then there is no
per-device will, and per-device broker logins cannot apply.
"""

import json
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of

ADVERTISE_S = 15.0        # a wearable advertises an SOS this long unless acknowledged
ADVERTISE_MS = 100
BELL_BUTTON = 1


class Counters:
    """Every device's last counter, in a JSON file: they survive a device's power loss, as the
    firmware's PersistentCounter does (a device that reused a counter would be refused)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._values = json.loads(self.path.read_text()) if self.path.exists() else {}

    def next(self, device_id):
        with self._lock:
            value = self._values.get("%08x" % device_id, 0) + 1
            self._values["%08x" % device_id] = value
            return value

    def save(self):
        with self._lock:
            self.path.write_text(json.dumps(self._values))


class Link:
    """One MQTT connection to a local broker for ``devices`` (Bell/Light objects). Reconnects
    by itself while powered; frames sent while down wait and go when it is back."""

    def __init__(self, host, port, devices, client_id, username=None, password=None):
        self.host, self.port, self.devices = host, port, {d.spec.device_id: d for d in devices}
        self.client_id, self.username, self.password = client_id, username, password
        self.connected = threading.Event()
        self._pending = []
        self._lock = threading.Lock()
        self._client = None
        self.on_puback = None  # (mid) -> None, for the load generator
        for d in devices:
            d.link = self

    def power_on(self):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(0.1, 1)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if len(self.devices) == 1:
            (device_id,) = self.devices
            client.will_set(topics.topic(device_id, topics.STATE), b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = self._on_message
        client.on_publish = lambda c, u, mid, rc, p: self.on_puback and self.on_puback(mid)
        self._client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def power_off(self):
        """The device loses power (or its WiFi): the socket dies without a DISCONNECT."""
        client, self._client = self._client, None
        if client is None:
            return
        client.loop_stop()
        sock = client.socket()
        self.connected.clear()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def publish(self, topic, payload, retain=False):
        """Returns paho's message id, or None when the frame waits for the connection."""
        with self._lock:
            if self._client is None or not self.connected.is_set():
                self._pending.append((topic, payload, retain))
                return None
            return self._client.publish(topic, payload, qos=1, retain=retain).mid

    def _on_connect(self, client, _u, _f, reason, _p):
        if reason.is_failure:
            return
        client.subscribe([(topics.topic(d, topics.DOWN), 1) for d in self.devices])
        for d in self.devices:
            client.publish(topics.topic(d, topics.STATE), b"online", qos=1, retain=True)
        with self._lock:
            pending, self._pending = self._pending, []
            self.connected.set()
            for topic, payload, retain in pending:
                client.publish(topic, payload, qos=1, retain=retain)

    def _on_message(self, _c, _u, msg):
        try:
            _, device_id, _ = topics.parse(msg.topic)
        except Exception:
            return
        device = self.devices.get(device_id)
        if device is not None:
            device.on_down(bytes(msg.payload), time.time())


class Fixed:
    """What bells and streetlights share: key, counter, heartbeats, verified downlinks."""

    def __init__(self, spec, key, counters):
        self.spec, self.keys, self.counters = spec, DeviceKeys(key), counters
        self.link = None
        self.powered = False
        self.received = []        # (unix time, Frame) of every verified downlink
        self.started = time.time()

    def send(self, kind, fields):
        counter = self.counters.next(self.spec.device_id)
        frame = frames.build_plain(kind, fields, self.keys, self.spec.device_id, counter)
        self.link.publish(topics.topic(self.spec.device_id, topics.UP), frame)
        return counter

    def heartbeat(self):
        if self.powered:
            self.send("heartbeat", {"battery_pct": 255, "faults": 0,
                                    "uptime_min": min(0xFFFFFF, int((time.time() - self.started) / 60))})

    def on_down(self, payload, at):
        try:
            frame = frames.unpack(payload, self.keys)
        except frames.FrameError:
            return
        self.received.append((at, frame))
        self.handle(frame)

    def handle(self, frame):
        pass


class Bell(Fixed):
    def press(self):
        return self.send("bell_press", {"button": BELL_BUTTON})


class Light(Fixed):
    """A streetlight: follows light_commands and reports its state, as the firmware does: after
    every command, and once as it comes up (with its first heartbeat), so the agent and a
    center's map know every light before anything happens."""

    MODES = {"blink": "blink", "brighten": "brighten", "restore": "schedule"}
    SCHEDULE_PCT = 60

    def __init__(self, spec, key, counters):
        super().__init__(spec, key, counters)
        self.last_command = 0
        self.state_reported = False

    def heartbeat(self):
        if not self.powered:
            self.state_reported = False  # it reports again as it boots
        elif not self.state_reported:
            self.state_reported = True
            self._report("schedule", self.SCHEDULE_PCT)
        super().heartbeat()

    def handle(self, frame):
        if frame.kind != "light_command":
            return
        action = frame.fields["action"]
        self.last_command = frame.counter
        self._report(self.MODES[action], frame.fields["level_pct"] if action != "restore" else self.SCHEDULE_PCT)

    def _report(self, mode, level):
        self.send("light_state", {"commanded_pct": level, "actual_pct": level, "mode": mode, "faults": 0,
                                  "last_command": self.last_command})


class Wearable:
    """A wearable on the virtual air: its SOS, test and cancel frames sealed under its rotating
    id, advertised from its current position (which a walk moves) until the center's ack is
    heard or ``ADVERTISE_S`` passes."""

    def __init__(self, spec, key, counters, air, on_air=None):
        """``on_air(advertiser, wearable)``: called before its advertiser first sends, so the
        air's RSSI model places the very first advertisement too."""
        self.spec, self.keys, self.counters, self.air = spec, DeviceKeys(key), counters, air
        self.on_air = on_air
        self.position = spec.position
        self.powered = True
        self.advertiser = None
        self.last_sos = None
        self.acks = []            # (unix time, Frame) of center_acks heard
        self._until = 0.0

    def fix(self):
        if not self.spec.fix:
            return {"lat": None, "lon": None, "accuracy_m": 0}
        return {"lat": self.position[0], "lon": self.position[1], "accuracy_m": 8}

    def press(self, button):
        counter = self.counters.next(self.spec.device_id)
        if button in ("sos", "triple"):
            kind, fields = "sos", self.fix()
            self.last_sos = counter
        elif button == "test":
            kind, fields = "test_sos", self.fix()
        else:
            kind, fields = "cancel", {"sos_counter": self.last_sos or 0}
        frame = frames.build_sealed(kind, fields, self.keys, counter, epoch_of(time.time()))
        self.advertise(ble.advertisement(frame))
        return counter

    def advertise(self, data):
        air = self.air
        if self.advertiser is None:
            self.advertiser = air.call(air.air.add_advertiser(data, interval_ms=ADVERTISE_MS, start=False))
            if self.on_air is not None:
                self.on_air(self.advertiser, self)
            air.call(self.advertiser.start())
        else:
            air.call(self.advertiser.update(data))
            air.call(self.advertiser.start())
        self._until = time.monotonic() + ADVERTISE_S

    def tick(self):
        if self.advertiser is not None and self.advertiser.advertising and time.monotonic() > self._until:
            self.stop()

    def stop(self):
        if self.advertiser is not None and self.advertiser.advertising:
            self.air.call(self.advertiser.stop())

    def heard(self, data, at):
        """An advertisement heard on the air (called on the air's loop: must not wait on it):
        the center's ack to this wearable ends its SOS."""
        if len(data) != frames.SEALED_SIZE or data[0] & 0x0F != frames.SEALED_DOWN:
            return False
        try:
            frame = frames.unpack(data, self.keys)
        except frames.FrameError:
            return False
        if frame.kind == "center_ack" and all(f.fields != frame.fields for _, f in self.acks):
            self.acks.append((at, frame))
            if frame.fields["acked_counter"] == self.last_sos:
                self._until = 0.0  # tick() stops it: this runs on the air's own loop
        return True

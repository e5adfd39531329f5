"""A fixed device's authenticated link to the edge agent over MQTT (SPEC.md 6.2), shared by
the bell and the streetlight: topics, last will, uplink counter, downlink verification, the
clock (``time`` frames), heartbeats.
"""

import asyncio
import gc
import time

from ansim_device import clock
from ansim_device.counter import PersistentCounter, ReplayGuard
from ansim_device.mqtt import MQTTClient
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError


class DeviceLink:
    """``on_frame(frame)`` gets each downlink frame of ``kind`` that is authentic and addressed
    to this device; replay checks are the caller's (``self.guard``), since some frames (expired
    commands) must be refused before their counter is spent. Authentic ``time`` frames (the
    agent sends one when the device comes online) set the clock here, replay-checked by the
    same guard: the agent has one downlink counter per device. ``faults`` goes out in every
    heartbeat (the role sets its bits)."""

    def __init__(self, config, name, kind, guard_file, on_frame, on_connect=None, on_disconnect=None):
        self.config, self.name, self.kind = config, name, kind
        self.device_id = config["device_id_int"]
        self.keys = DeviceKeys(config["key_bytes"])
        self.heartbeat_s = int(config.get("heartbeat_s", 30))
        self.faults = 0
        self.started = time.ticks_ms()
        self.uplink = PersistentCounter("/state/up")
        self.guard = ReplayGuard(guard_file)
        self._on_frame, self._on_connect, self._on_disconnect = on_frame, on_connect, on_disconnect
        broker = config.get("broker") or {}
        self.up_topic = topics.topic(self.device_id, topics.UP)
        self.down_topic = topics.topic(self.device_id, topics.DOWN)
        self.state_topic = topics.topic(self.device_id, topics.STATE)
        self.mqtt = MQTTClient(config["device_id"], broker.get("host", "192.168.4.1"),
                               int(broker.get("port", 1883)), keepalive=int(config.get("keepalive_s", 30)),
                               will=(self.state_topic, b"offline", True, 1),
                               on_message=self._message, on_connect=self._connected,
                               on_disconnect=self._disconnected, username=broker.get("username"),
                               password=broker.get("password"))

    @property
    def connected(self):
        return self.mqtt.connected

    def frame(self, kind, fields):
        """(counter, signed uplink frame); the counter is taken now, at the event."""
        counter = self.uplink.next()
        return counter, frames.build_plain(kind, fields, self.keys, self.device_id, counter)

    async def publish(self, frame):
        await self.mqtt.publish(self.up_topic, frame)

    async def send(self, kind, fields):
        """Publish a new frame if the broker is there; False if it could not be sent."""
        if not self.mqtt.connected:
            return False
        try:
            await self.publish(self.frame(kind, fields)[1])
            return True
        except Exception as e:  # noqa: B902 (the link loop notices and reconnects)
            print("%s: %s not sent: %r" % (self.name, kind, e))
            return False

    def _message(self, topic, payload):
        if topic != self.down_topic:
            return
        try:
            frame = frames.unpack(payload, self.keys)
        except FrameError as e:
            print("%s: frame rejected: %s" % (self.name, e.reason))
            return
        if not frame.downlink or frame.device_id != self.device_id:
            print("%s: frame not addressed to this %s" % (self.name, self.name))
            return
        if frame.kind == "time":
            self._set_clock(frame)
            return
        if frame.kind != self.kind:
            print("%s: ignoring %s" % (self.name, frame.kind))
            return
        self._on_frame(frame)

    def _set_clock(self, frame):
        if not self.guard.accept(frame.counter):
            print("%s: time %d replayed" % (self.name, frame.counter))
            return
        old = clock.unix_time()
        clock.set_unix_time(frame.fields["unix_time"])
        print("%s: clock set %d -> %d (Unix time, time frame %d)"
              % (self.name, old, clock.unix_time(), frame.counter))

    async def _connected(self):
        await self.mqtt.subscribe(self.down_topic, 1)
        await self.mqtt.publish(self.state_topic, b"online", retain=True)
        if self._on_connect is not None:
            self._on_connect()
        print("%s: online as %s" % (self.name, self.config["device_id"]))

    def _disconnected(self):
        if self._on_disconnect is not None:
            self._on_disconnect()

    async def heartbeats(self):
        while True:
            await asyncio.sleep(self.heartbeat_s)
            gc.collect()
            uptime_min = time.ticks_diff(time.ticks_ms(), self.started) // 60000
            await self.send("heartbeat", {"battery_pct": 255, "uptime_min": min(uptime_min, 0xFFFFFF),
                                          "faults": self.faults})
            print("%s: heap alloc %d free %d" % (self.name, gc.mem_alloc(), gc.mem_free()))

"""Smart streetlight: PWM dimming on a dusk-to-dawn schedule, obeying authenticated
``light_command`` frames from the edge agent (SPEC.md sections 4 and 6.2).

- Output: ``machine.PWM`` on ``config["pwm_pin"]`` (default 5); level in percent -> duty_u16.
- Schedule: ``config["schedule"]`` = {"on": "18:00", "off": "06:00", "night_pct": 60,
  "day_pct": 0} by the board's ``time.localtime()`` (on an ESP32 that is the RTC: set it to
  local time, or the schedule runs in UTC).
- Commands: only from ``ansim/v1/dev/{id}/down``, verified with the device key (downlink
  auth), counter above the last accepted (``ReplayGuard``, persisted), not expired
  (``expires`` < now: ignored). ``blink`` toggles 100 % / 10 % every 250 ms, ``brighten``
  holds ``level_pct``, both for ``duration_s`` (0: until ``restore``); ``restore`` goes back
  to the schedule.
- Broker link lost: any command is dropped and the light runs its schedule (mode
  ``fallback``) until the link is back.
- Uplink: ``light_state`` after every change of mode or level, ``heartbeat`` every
  ``heartbeat_s`` (default 30), counters from ``PersistentCounter`` under /state/.
"""

import asyncio
import gc
import os
import time

import machine
from ansim_device.counter import PersistentCounter, ReplayGuard
from ansim_device.mqtt import MQTTClient
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError

BLINK_HIGH, BLINK_LOW, BLINK_MS = 100, 10, 250
MODE_SCHEDULE, MODE_BLINK, MODE_BRIGHTEN, MODE_FALLBACK = "schedule", "blink", "brighten", "fallback"
UNIX_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ESP32 counts from 2000
CLOCK_SET_AFTER = 1700000000  # a clock before Nov 2023 was never set: expiry cannot be judged


def unix_time():
    return time.time() + UNIX_OFFSET


def _minutes(hhmm):
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # exists


class Streetlight:
    def __init__(self, config):
        self.config = config
        self.device_id = config["device_id_int"]
        self.keys = DeviceKeys(config["key_bytes"])
        sched = config.get("schedule") or {}
        self.on_min = _minutes(sched.get("on", "18:00"))
        self.off_min = _minutes(sched.get("off", "06:00"))
        self.night_pct = int(sched.get("night_pct", 60))
        self.day_pct = int(sched.get("day_pct", 0))
        self.heartbeat_s = int(config.get("heartbeat_s", 30))
        _mkdir("/state")
        self.uplink = PersistentCounter("/state/up")
        self.guard = ReplayGuard("/state/cmd")
        self.pwm = machine.PWM(machine.Pin(int(config.get("pwm_pin", 5))), freq=1000, duty_u16=0)
        self.started = time.ticks_ms()
        # what the light is doing
        self.mode = MODE_FALLBACK  # no broker yet
        self.level = 0  # commanded level of blink/brighten
        self.until = None  # ticks_ms when the command ends, None: until restore
        self.since = time.ticks_ms()
        self.actual = None  # percent now on the PWM
        self.reported = None  # (mode, commanded) last published
        self.changed = asyncio.Event()
        broker = config.get("broker") or {}
        self.up_topic = topics.topic(self.device_id, topics.UP)
        self.down_topic = topics.topic(self.device_id, topics.DOWN)
        self.state_topic = topics.topic(self.device_id, topics.STATE)
        self.mqtt = MQTTClient(config["device_id"], broker.get("host", "192.168.4.1"),
                               int(broker.get("port", 1883)), keepalive=int(config.get("keepalive_s", 30)),
                               will=(self.state_topic, b"offline", True, 1),
                               on_message=self.on_message, on_connect=self.on_connect,
                               on_disconnect=self.on_disconnect)

    # -- levels ---------------------------------------------------------------------------
    def schedule_pct(self):
        t = time.localtime()
        now = t[3] * 60 + t[4]
        if self.on_min == self.off_min:
            night = True
        elif self.on_min < self.off_min:
            night = self.on_min <= now < self.off_min
        else:  # the night spans midnight
            night = now >= self.on_min or now < self.off_min
        return self.night_pct if night else self.day_pct

    def commanded_pct(self):
        if self.mode == MODE_BLINK or self.mode == MODE_BRIGHTEN:
            return self.level
        return self.schedule_pct()

    def output_pct(self):
        if self.mode == MODE_BLINK:
            phase = time.ticks_diff(time.ticks_ms(), self.since) // BLINK_MS
            return BLINK_HIGH if phase % 2 == 0 else BLINK_LOW
        return self.commanded_pct()

    def set_output(self, pct):
        if pct != self.actual:
            self.actual = pct
            self.pwm.duty_u16(pct * 65535 // 100)

    def set_mode(self, mode, level=0, duration_s=0):
        self.mode, self.level, self.since = mode, level, time.ticks_ms()
        self.until = time.ticks_add(self.since, duration_s * 1000) if duration_s else None
        self.changed.set()

    # -- downlink -------------------------------------------------------------------------
    def on_message(self, topic, payload):
        if topic != self.down_topic:
            return
        try:
            frame = frames.unpack(payload, self.keys)
        except FrameError as e:
            print("light: frame rejected:", e.reason)
            return
        if not frame.downlink or frame.device_id != self.device_id:
            print("light: frame not addressed to this light")
            return
        if frame.kind != "light_command":
            print("light: ignoring", frame.kind)
            return
        f = frame.fields
        now = unix_time()
        if now > CLOCK_SET_AFTER and f["expires"] < now:
            print("light: command %d expired" % frame.counter)
            return
        if not self.guard.accept(frame.counter):
            print("light: command %d replayed" % frame.counter)
            return
        action = f["action"]
        if action == "blink":
            self.set_mode(MODE_BLINK, BLINK_HIGH, f["duration_s"])
        elif action == "brighten":
            self.set_mode(MODE_BRIGHTEN, f["level_pct"], f["duration_s"])
        else:
            self.set_mode(MODE_SCHEDULE)
        print("light: command %d %s %d%% %ds" % (frame.counter, action, f["level_pct"], f["duration_s"]))

    async def on_connect(self):
        await self.mqtt.subscribe(self.down_topic, 1)
        await self.mqtt.publish(self.state_topic, b"online", retain=True)
        if self.mode == MODE_FALLBACK:
            self.set_mode(MODE_SCHEDULE)
        self.reported = None  # tell the agent where we are
        self.changed.set()
        print("light: online as %s" % self.config["device_id"])

    def on_disconnect(self):
        self.set_mode(MODE_FALLBACK)
        print("light: broker lost, schedule fallback")

    # -- uplink ---------------------------------------------------------------------------
    async def send(self, kind, fields):
        if not self.mqtt.connected:
            return False
        frame = frames.build_plain(kind, fields, self.keys, self.device_id, self.uplink.next())
        try:
            await self.mqtt.publish(self.up_topic, frame)
            return True
        except Exception as e:  # noqa: B902 (the link loop notices and reconnects)
            print("light: %s not sent: %r" % (kind, e))
            return False

    async def report(self):
        mode = self.mode
        commanded = self.commanded_pct()
        # while blinking the high level is what the light shows at its brightest
        actual = BLINK_HIGH if mode == MODE_BLINK else self.actual or 0
        if await self.send("light_state", {"commanded_pct": commanded, "actual_pct": actual,
                                           "mode": mode, "faults": 0,
                                           "last_command": max(0, self.guard.last)}):
            self.reported = (mode, commanded)

    # -- tasks ----------------------------------------------------------------------------
    async def drive(self):
        """Sets the PWM: at once after a command, every 250 ms while blinking, every second
        otherwise (schedule edges, command expiry); reports changes."""
        reporting = None
        while True:
            if self.until is not None and time.ticks_diff(time.ticks_ms(), self.until) >= 0:
                self.set_mode(MODE_SCHEDULE if self.mqtt.connected else MODE_FALLBACK)
            self.changed.clear()
            self.set_output(self.output_pct())
            if (self.mode, self.commanded_pct()) != self.reported and self.mqtt.connected \
                    and (reporting is None or reporting.done()):
                reporting = asyncio.create_task(self.report())
            if self.mode == MODE_BLINK:
                wait = BLINK_MS - time.ticks_diff(time.ticks_ms(), self.since) % BLINK_MS
            else:
                wait = 1000
            try:
                await asyncio.wait_for(self.changed.wait(), wait / 1000)
            except asyncio.TimeoutError:
                pass

    async def heartbeat(self):
        while True:
            await asyncio.sleep(self.heartbeat_s)
            gc.collect()
            uptime_min = time.ticks_diff(time.ticks_ms(), self.started) // 60000
            await self.send("heartbeat", {"battery_pct": 255, "uptime_min": min(uptime_min, 0xFFFFFF),
                                          "faults": 0})
            print("light: heap alloc %d free %d" % (gc.mem_alloc(), gc.mem_free()))

    async def run(self):
        self.set_output(self.output_pct())
        await asyncio.gather(self.mqtt.run(), self.drive(), self.heartbeat())


def main(config):
    asyncio.run(Streetlight(config).run())

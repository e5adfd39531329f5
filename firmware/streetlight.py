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
import time

import machine
from ansim_device.link import DeviceLink

BLINK_HIGH, BLINK_LOW, BLINK_MS = 100, 10, 250
MODE_SCHEDULE, MODE_BLINK, MODE_BRIGHTEN, MODE_FALLBACK = "schedule", "blink", "brighten", "fallback"
UNIX_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ESP32 counts from 2000
CLOCK_SET_AFTER = 1700000000  # a clock before Nov 2023 was never set: expiry cannot be judged


def unix_time():
    return time.time() + UNIX_OFFSET


def _minutes(hhmm):
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class Streetlight:
    def __init__(self, config):
        sched = config.get("schedule") or {}
        self.on_min = _minutes(sched.get("on", "18:00"))
        self.off_min = _minutes(sched.get("off", "06:00"))
        self.night_pct = int(sched.get("night_pct", 60))
        self.day_pct = int(sched.get("day_pct", 0))
        self.pwm = machine.PWM(machine.Pin(int(config.get("pwm_pin", 5))), freq=1000, duty_u16=0)
        # what the light is doing
        self.mode = MODE_FALLBACK  # no broker yet
        self.level = 0  # commanded level of blink/brighten
        self.until = None  # ticks_ms when the command ends, None: until restore
        self.since = time.ticks_ms()
        self.actual = None  # percent now on the PWM
        self.reported = None  # (mode, commanded) last published
        self.changed = asyncio.Event()
        self.link = DeviceLink(config, "light", "light_command", "/state/cmd", self.on_command,
                               self.on_connect, self.on_disconnect)

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
    def on_command(self, frame):
        f = frame.fields
        now = unix_time()
        if now > CLOCK_SET_AFTER and f["expires"] < now:
            print("light: command %d expired" % frame.counter)
            return
        if not self.link.guard.accept(frame.counter):
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

    def on_connect(self):
        if self.mode == MODE_FALLBACK:
            self.set_mode(MODE_SCHEDULE)
        self.reported = None  # tell the agent where we are
        self.changed.set()

    def on_disconnect(self):
        self.set_mode(MODE_FALLBACK)
        print("light: broker lost, schedule fallback")

    # -- uplink ---------------------------------------------------------------------------
    async def report(self):
        mode = self.mode
        commanded = self.commanded_pct()
        # while blinking the high level is what the light shows at its brightest
        actual = BLINK_HIGH if mode == MODE_BLINK else self.actual or 0
        if await self.link.send("light_state", {"commanded_pct": commanded, "actual_pct": actual,
                                           "mode": mode, "faults": 0,
                                           "last_command": max(0, self.link.guard.last)}):
            self.reported = (mode, commanded)

    # -- tasks ----------------------------------------------------------------------------
    async def drive(self):
        """Sets the PWM: at once after a command, every 250 ms while blinking, every second
        otherwise (schedule edges, command expiry); reports changes."""
        reporting = None
        while True:
            if self.until is not None and time.ticks_diff(time.ticks_ms(), self.until) >= 0:
                self.set_mode(MODE_SCHEDULE if self.link.connected else MODE_FALLBACK)
            self.changed.clear()
            self.set_output(self.output_pct())
            if (self.mode, self.commanded_pct()) != self.reported and self.link.connected \
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

    async def run(self):
        self.set_output(self.output_pct())
        await asyncio.gather(self.link.mqtt.run(), self.drive(), self.link.heartbeats())


def main(config):
    asyncio.run(Streetlight(config).run())

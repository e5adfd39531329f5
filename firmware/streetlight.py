"""Smart streetlight: PWM dimming on a dusk-to-dawn schedule, obeying authenticated
``light_command`` frames from the edge agent (SPEC.md sections 4 and 6.2).

- Output: ``machine.PWM`` on ``config["pwm_pin"]`` (default 5); level in percent -> duty_u16.
- Schedule: ``config["schedule"]`` = {"on": "18:00", "off": "06:00", "night_pct": 60,
  "day_pct": 0} in local time = the RTC's UTC + ``config["utc_offset_min"]`` (default 0; 540
  in Seoul; a fixed offset, no daylight saving). The RTC holds UTC: the agent sets it with a
  ``time`` frame each time the light connects (``ansim_device.clock``). While the clock is not
  set (power loss, no agent yet) the light cannot tell night from day and holds ``night_pct``.
- Commands: only from ``ansim/v1/dev/{id}/down``, verified with the device key (downlink
  auth), counter above the last accepted (``ReplayGuard``, persisted), not expired
  (``expires`` < now: ignored without spending the counter; with the clock not set expiry
  cannot be judged and the command is obeyed). ``blink`` toggles 100 % / 10 % every 250 ms,
  ``brighten`` holds ``level_pct``, both for ``duration_s`` (0: until ``restore``);
  ``restore`` goes back to the schedule.
- Broker link lost (the broker or the WiFi gone): any command is dropped and the light runs
  its schedule (mode ``fallback``) until the link is back.
- WiFi: with ``config["wifi"]`` ({"ssid", "password"}) the station joins the site's access
  point and keeps it joined (``ansim_device.wifi``: backoff 2 s doubling to 60 s, wrong password
  or missing access point on the console and the status LED, ``status_led_pin`` default 2); MQTT
  runs only while it is joined. Without "wifi": no station.
- Lamp fault: with ``config["lamp_sense_pin"]`` (an ADC on the lamp's current or light
  sensor; default none: no sensing), a reading below ``lamp_sense_min_u16`` (default 4000)
  for 2 s while the output is above 0 sets faults bit 0; a reading at or above it for 2 s
  clears it. While the lamp is dark nothing is judged and the last verdict stands.
- Watchdog: ``machine.WDT`` of ``config["watchdog_s"]`` (default 30; 0: none), fed by the
  drive loop (at least every second): a hung firmware resets the board. It cannot be stopped:
  at the REPL (mpremote, ``ansim flash``) the board resets ``watchdog_s`` after main.py stopped.
- Uplink: ``light_state`` after every change of mode, level or faults, ``heartbeat`` (with
  the faults) every ``heartbeat_s`` (default 30), counters from ``PersistentCounter`` under
  /state/.
"""

import asyncio
import time

import machine
from ansim_device import clock
from ansim_device.link import DeviceLink

BLINK_HIGH, BLINK_LOW, BLINK_MS = 100, 10, 250
MODE_SCHEDULE, MODE_BLINK, MODE_BRIGHTEN, MODE_FALLBACK = "schedule", "blink", "brighten", "fallback"
LAMP_FAULT = 0x01  # faults bit 0 (SPEC.md 4, light_state)
LAMP_FAULT_MS = 2000  # a sensor reading must hold this long to set or clear the fault


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
        self.utc_offset_s = int(config.get("utc_offset_min", 0)) * 60
        self.pwm = machine.PWM(machine.Pin(int(config.get("pwm_pin", 5))), freq=1000, duty_u16=0)
        self.watchdog_ms = int(float(config.get("watchdog_s", 30) or 0) * 1000)
        self.wdt = None  # started by run()
        sense = config.get("lamp_sense_pin")
        self.sense = None
        if sense is not None:
            self.sense = machine.ADC(machine.Pin(int(sense)), atten=machine.ADC.ATTN_11DB)
        self.sense_min = int(config.get("lamp_sense_min_u16", 4000))
        self.lamp_low = None  # last reading below sense_min? None: lamp dark, nothing judged
        self.lamp_since = 0  # ticks_ms since the readings say lamp_low
        # what the light is doing
        self.mode = MODE_FALLBACK  # no broker yet
        self.level = 0  # commanded level of blink/brighten
        self.until = None  # ticks_ms when the command ends, None: until restore
        self.since = time.ticks_ms()
        self.actual = None  # percent now on the PWM
        self.reported = None  # (mode, commanded, faults) last published
        self.changed = asyncio.Event()
        self.link = DeviceLink(config, "light", "light_command", "/state/cmd", self.on_command,
                               self.on_connect, self.on_disconnect)
        self.wifi = None
        if config.get("wifi"):  # else wired otherwise (a test's virtual board): no station
            from ansim_device.wifi import Station
            self.wifi = Station(config, "light")

    # -- levels ---------------------------------------------------------------------------
    def schedule_pct(self):
        if not clock.is_set():
            return self.night_pct  # night or day unknown: rather lit than dark
        now = (clock.unix_time() + self.utc_offset_s) % 86400 // 60
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
        if not clock.is_set():
            print("light: clock not set, expiry of command %d not checked" % frame.counter)
        elif f["expires"] < clock.unix_time():
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

    # -- lamp sensing ---------------------------------------------------------------------
    def sense_lamp(self):
        """One reading of the lamp sensor; the fault changes when a verdict has held 2 s."""
        if self.sense is None:
            return
        if not self.actual:
            self.lamp_low = None  # a dark lamp says nothing
            return
        low = self.sense.read_u16() < self.sense_min
        now = time.ticks_ms()
        if low != self.lamp_low:
            self.lamp_low, self.lamp_since = low, now
        elif time.ticks_diff(now, self.lamp_since) >= LAMP_FAULT_MS:
            faults = (self.link.faults | LAMP_FAULT) if low else (self.link.faults & ~LAMP_FAULT)
            if faults != self.link.faults:
                self.link.faults = faults
                print("light: lamp fault" if low else "light: lamp fault cleared")

    # -- uplink ---------------------------------------------------------------------------
    def state(self):
        return self.mode, self.commanded_pct(), self.link.faults

    async def report(self):
        mode, commanded, faults = state = self.state()
        # while blinking the high level is what the light shows at its brightest
        actual = BLINK_HIGH if mode == MODE_BLINK else self.actual or 0
        if await self.link.send("light_state", {"commanded_pct": commanded, "actual_pct": actual,
                                                "mode": mode, "faults": faults,
                                                "last_command": max(0, self.link.guard.last)}):
            self.reported = state

    # -- tasks ----------------------------------------------------------------------------
    async def drive(self):
        """Sets the PWM: at once after a command, every 250 ms while blinking, every second
        otherwise (schedule edges, command expiry); senses the lamp; feeds the watchdog;
        reports changes."""
        reporting = None
        while True:
            if self.wdt is not None:
                self.wdt.feed()
            if self.until is not None and time.ticks_diff(time.ticks_ms(), self.until) >= 0:
                self.set_mode(MODE_SCHEDULE if self.link.connected else MODE_FALLBACK)
            self.changed.clear()
            self.set_output(self.output_pct())
            self.sense_lamp()
            if self.state() != self.reported and self.link.connected \
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
        if self.watchdog_ms:
            self.wdt = machine.WDT(timeout=self.watchdog_ms)
            print("light: watchdog %d ms" % self.watchdog_ms)
        self.set_output(self.output_pct())
        await asyncio.gather(self.drive(), self.link.heartbeats(), *self.network())

    def network(self):
        """The MQTT link's tasks: with WiFi, the station's and MQTT only while it is joined."""
        if self.wifi is None:
            return [self.link.mqtt.run()]
        return [self.wifi.run(), self.wifi.show(), self.wifi.while_joined(self.link.mqtt.run, self.link.mqtt._close)]


def main(config):
    asyncio.run(Streetlight(config).run())

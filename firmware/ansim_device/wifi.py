"""Keeps a bell's or streetlight's WiFi station joined to the site's access point
(``config["wifi"]`` = {"ssid": ..., "password": ...}, written by ``ansim provision``).

Why hand-written: MicroPython's ``network.WLAN`` only starts a join; nothing in the firmware
or micropython-lib waits for it without blocking (a streetlight must keep its schedule and a
bell its button while the network is away), tells a wrong password from a missing access
point on the console and a status LED, backs off between tries or notices a link that went.

- Join: ``WLAN(STA_IF).active(True)``, ``connect(ssid, password)``, then up to ``timeout_s``
  (default 20) for ``isconnected()``. The ESP32 driver retries by itself meanwhile; the try is
  judged only when it ends (``status()`` keeps the last failure until the next IP, so an early
  look would blame a fixed access point for its old fault).
- A failed try: a console line with the SSID and the ``status()`` (never the password),
  ``disconnect()`` (the driver stops retrying), a wait of 2 s doubling to 60 s, a new try;
  never a reset. Joined again: back to 2 s.
- Status LED on ``config["status_led_pin"]`` (default 2, the DevKit's LED; active high) while
  not joined after a failed try: wrong password (STAT_WRONG_PASSWORD) two 100 ms flashes every
  2 s; no access point (STAT_NO_AP_FOUND) one 100 ms flash every 2 s; anything else (a
  timeout) 1 s on, 1 s off. Off while joined or at the first try.
- Joined: ``isconnected()`` is checked every 500 ms; a lost link is said on the console and
  joined again as above.
- ``while_joined(start, stop)`` runs ``start()`` (the MQTT client's ``run``) only while joined:
  cancelled, and ``stop()`` called, when the link goes; started again when it is back. So MQTT
  waits for the link instead of retrying into nothing, and reconnects as soon as it is there.
"""

import asyncio
import time

import machine
import network

CHECK_MS = 500  # how often a joined station is checked
POLL_MS = 100  # how often a join is looked at
BACKOFF_MIN_S, BACKOFF_MAX_S = 2, 60
# LED patterns: (level, ms) steps, repeated while the trouble lasts
WRONG_PASSWORD, NO_AP, NO_LINK = "wrong password", "no access point", "no link"
PATTERNS = {WRONG_PASSWORD: ((1, 100), (0, 200), (1, 100), (0, 1600)),
            NO_AP: ((1, 100), (0, 1900)),
            NO_LINK: ((1, 1000), (0, 1000))}


class Station:
    def __init__(self, config, name):
        wifi = config["wifi"]
        self.name = name
        self.ssid = wifi["ssid"]
        self._password = wifi.get("password") or ""
        self.timeout_ms = int(float(wifi.get("timeout_s", 20)) * 1000)
        self.wlan = network.WLAN(network.STA_IF)
        self.led = machine.Pin(int(config.get("status_led_pin", 2)), machine.Pin.OUT, value=0)
        self.joined = False
        self.trouble = None  # WRONG_PASSWORD, NO_AP, NO_LINK after a failed try; None
        self._led = asyncio.Event()  # set when joined or trouble changed, for show()
        self._link = asyncio.Event()  # the same, for while_joined()
        self.tries = 0

    def _set(self, joined, trouble=None):
        if joined != self.joined or trouble != self.trouble:
            self.joined, self.trouble = joined, trouble
            self._led.set()
            self._link.set()

    async def _join(self):
        """One try: True if joined within timeout_ms, else the trouble is set."""
        wlan = self.wlan
        self.tries += 1
        started = time.ticks_ms()
        print("wifi: joining %s (try %d)" % (self.ssid, self.tries))
        try:
            wlan.connect(self.ssid, self._password)
        except OSError as e:
            print("wifi: connect to %s failed: %r" % (self.ssid, e))
        while time.ticks_diff(time.ticks_ms(), started) < self.timeout_ms:
            if wlan.isconnected():
                ip = wlan.ifconfig()[0]
                print("wifi: joined %s as %s in %d ms" % (self.ssid, ip, time.ticks_diff(time.ticks_ms(), started)))
                self._set(True)
                return True
            await asyncio.sleep_ms(POLL_MS)
        status = wlan.status()
        if status == network.STAT_WRONG_PASSWORD:
            trouble, why = WRONG_PASSWORD, "wrong password"
        elif status == network.STAT_NO_AP_FOUND:
            trouble, why = NO_AP, "access point not found"
        else:
            trouble, why = NO_LINK, "no link after %d s" % (self.timeout_ms // 1000)
        print("wifi: cannot join %s: %s (status %d)" % (self.ssid, why, status))
        try:
            wlan.disconnect()  # the driver stops retrying until the next try
        except OSError:
            pass
        self._set(False, trouble)
        return False

    async def run(self):
        """Joins, watches, joins again; forever."""
        self.wlan.active(True)
        backoff = BACKOFF_MIN_S
        while True:
            if await self._join():
                backoff = BACKOFF_MIN_S
                while self.wlan.isconnected():
                    await asyncio.sleep_ms(CHECK_MS)
                print("wifi: lost %s (status %d)" % (self.ssid, self.wlan.status()))
                self._set(False)
                continue  # join again at once
            print("wifi: next try in %d s" % backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def show(self):
        """Drives the status LED with the pattern of the trouble."""
        while True:
            pattern = PATTERNS.get(self.trouble)
            if pattern is None:
                self.led.value(0)
                self._led.clear()
                await self._led.wait()
                continue
            trouble = self.trouble
            for level, ms in pattern:
                if self.trouble != trouble:
                    break
                self.led.value(level)
                await asyncio.sleep_ms(ms)

    async def while_joined(self, start, stop=None):
        """Runs ``start()`` while joined; cancels it (then ``stop()``) when the link goes."""
        task = None
        while True:
            self._link.clear()
            if self.joined and task is None:
                task = asyncio.create_task(start())
            elif not self.joined and task is not None:
                task.cancel()
                task = None
                await asyncio.sleep_ms(0)  # the task's own cleanup runs
                if stop is not None:
                    stop()
                continue  # the link may be back already
            await self._link.wait()

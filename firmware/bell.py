"""Emergency bell: a button that calls the police (SPEC.md sections 4 and 6.2).

- Button on ``config["button_pin"]`` (default 0), active low with the pull-up. A falling edge
  (soft IRQ, latched: a press shorter than the poll is not lost) or a low level seen by the
  10 ms poll is a press, taken at once, if a poll saw the button released since it was last
  seen pressed, ``DEBOUNCE_MS`` (50 ms) or more before: contact bounce makes no second press,
  and a release of 50 ms counts even when the polls run late (measured from the last poll
  that saw the button pressed, the time is never shorter than the release itself).
- Every press is its own ``bell_press`` (a new counter, a new alert at the agent); a press
  during an alarm neither restarts it nor announces again.
- A press publishes a plain ``bell_press`` frame (QoS 1) at once; the siren and the strobe
  (``siren_pin`` 25, ``strobe_pin`` 26, active high) come on after the publish has started, and
  the announcement "ANNOUNCE: 긴급신고가 접수되었습니다. 경찰관을 연결 중입니다" is printed and
  written to the voice module on UART ``config["voice"]`` (default UART 1, 9600 baud, tx 17,
  rx 16: the ESP32's UART1 default pins are the flash's, so they are always given). The text
  goes out as one UTF-8 line; a module that wants another framing needs its own writer.
  A press that cannot be sent (broker down) is kept and sent when the link is back, also
  after a power cut: presses and tamper changes wait in flash too (``SavedFrames``), and go
  first after the next boot; the location is the bell's registered one at the agent, nothing is sent for it. Every uplink
  frame (presses, tamper, heartbeats) leaves through one outbox in counter order, one at a
  time until its PUBACK: the agent refuses a counter below one it has accepted, so a frame
  that overtook an older one would make the older one a "replay".
- ``center_ack`` from ``ansim/v1/dev/{id}/down``, verified with the device key, counter above
  the last accepted (``ReplayGuard``, persisted), for one of this alarm's presses: "received"
  or "dispatched" -> "ANNOUNCE: 경찰관이 연결되었습니다", then the siren stops (the strobe stays
  on); "resolved" -> strobe off, the bell is idle again. Without any ack the siren stops after
  ``siren_max_s`` (default 180) and the alarm ends after ``alarm_max_s`` (default 1800).
- Tamper switch on ``tamper_pin`` (default 4), closed to ground when the lid is shut: a level
  stable for 50 ms is a change, sent as ``tamper`` opened/closed (kept until sent, like a
  press). An open lid at boot is reported too.
- ``heartbeat`` every ``heartbeat_s`` (default 30), skipped while the broker is away;
  counters from ``PersistentCounter``.
- WiFi: with ``config["wifi"]`` ({"ssid", "password"}) the station joins the site's access
  point and keeps it joined (``ansim_device.wifi``: backoff 2 s doubling to 60 s, wrong password
  or missing access point on the console and the status LED, ``status_led_pin`` default 2); MQTT
  runs only while it is joined. Presses and tamper changes made while the WiFi is away wait in
  the outbox (and in flash) like those of a broker outage. Without "wifi": no station.
- Watchdog: ``machine.WDT`` of ``config["watchdog_s"]`` (default 30; 0: none), fed by the
  10 ms poll: a hung bell resets. It cannot be stopped: at the REPL (mpremote, ``ansim
  flash``) the board resets ``watchdog_s`` after main.py stopped.
"""

import asyncio
import time

import machine
from ansim_device.link import DeviceLink
from ansim_device.saved import SavedFrames

POLL_MS, DEBOUNCE_MS = 10, 50
PENDING_MAX = 16  # frames kept in the outbox while the broker is away
KEPT = ("bell_press", "tamper")  # outbox frames also kept in flash, through a power cut
CALLING = "긴급신고가 접수되었습니다. 경찰관을 연결 중입니다"
CONNECTED = "경찰관이 연결되었습니다"
IDLE, ALARM, CONFIRMED = "idle", "alarm", "confirmed"


class Bell:
    def __init__(self, config):
        self.siren_max_ms = int(config.get("siren_max_s", 180)) * 1000
        self.alarm_max_ms = int(config.get("alarm_max_s", 1800)) * 1000
        Pin = machine.Pin
        self.button = Pin(int(config.get("button_pin", 0)), Pin.IN, Pin.PULL_UP)
        self.tamper = Pin(int(config.get("tamper_pin", 4)), Pin.IN, Pin.PULL_UP)
        self.siren = Pin(int(config.get("siren_pin", 25)), Pin.OUT, value=0)
        self.strobe = Pin(int(config.get("strobe_pin", 26)), Pin.OUT, value=0)
        self.fell = False  # a falling edge on the button since the last poll (soft IRQ)
        self.button.irq(self._on_edge, Pin.IRQ_FALLING)
        self.voice = None
        voice = config.get("voice", {})
        if voice is not None:
            try:
                self.voice = machine.UART(int(voice.get("uart", 1)), baudrate=int(voice.get("baudrate", 9600)),
                                          tx=int(voice.get("tx", 17)), rx=int(voice.get("rx", 16)))
            except Exception as e:  # noqa: B902 (the bell works without its voice)
                print("bell: no voice module: %r" % e)
        self.state = IDLE
        self.sounding = False
        self.alarm_since = self.siren_since = 0
        self.presses = []  # counters of this alarm's bell_press frames
        self.saved = SavedFrames("/state/outbox")
        self.outbox = self.saved.load()  # (kind, frame) in counter order, not yet acknowledged by the broker
        if self.outbox:
            print("bell: %d frames from before the power went still to send" % len(self.outbox))
        self.more = asyncio.Event()  # something was put in the outbox, or the link came up
        self.link = DeviceLink(config, "bell", "center_ack", "/state/ack", self.on_ack,
                               on_connect=self.more.set, on_disconnect=lambda: print("bell: broker lost"))
        self.link.send = self.send  # the link's heartbeats go through the outbox too
        self.wifi = None
        if config.get("wifi"):  # else wired otherwise (a test's virtual board): no station
            from ansim_device.wifi import Station
            self.wifi = Station(config, "bell")
        self.watchdog_ms = int(float(config.get("watchdog_s", 30) or 0) * 1000)
        self.wdt = None

    def _on_edge(self, pin):
        self.fell = True  # only a flag: the poll loop does the work

    # -- outputs --------------------------------------------------------------------------
    def announce(self, text):
        print("ANNOUNCE: " + text)
        if self.voice is not None:
            try:
                self.voice.write((text + "\n").encode())
            except Exception as e:  # noqa: B902
                print("bell: voice write failed: %r" % e)

    def siren_off(self):
        self.sounding = False
        self.siren.value(0)

    def end_alarm(self, why):
        self.siren_off()
        self.strobe.value(0)
        self.state = IDLE
        self.presses = []
        print("bell: alarm over (%s)" % why)

    # -- uplink ---------------------------------------------------------------------------
    def queue(self, kind, fields):
        """Build the frame now (its counter is taken at the event) and put it in the outbox."""
        if len(self.outbox) >= PENDING_MAX:
            print("bell: %d frames waiting, %s dropped" % (len(self.outbox), kind))
            return None
        counter, frame = self.link.frame(kind, fields)
        self.outbox.append((kind, frame))
        self.more.set()
        if kind in KEPT:
            self._save()
        return counter

    def _save(self):
        self.saved.save([entry for entry in self.outbox if entry[0] in KEPT])

    async def send(self, kind, fields):
        """``DeviceLink.send`` for the link's own frames (heartbeats): through the outbox, and
        only while the broker is there (a heartbeat kept through an outage says nothing)."""
        return self.link.connected and self.queue(kind, fields) is not None

    async def sender(self):
        """Publishes the outbox (QoS 1) oldest first, each frame until its PUBACK; while the
        link is down the frames wait, and go as soon as it is back."""
        while True:
            if not self.outbox or not self.link.connected:
                self.more.clear()
                await self.more.wait()
            else:
                kind, frame = self.outbox[0]
                try:
                    await self.link.publish(frame)
                    self.outbox.pop(0)
                    if kind in KEPT:
                        self._save()
                except Exception as e:  # noqa: B902 (the link loop notices and reconnects)
                    print("bell: %s not sent yet: %r" % (kind, e))
                    await asyncio.sleep_ms(200)

    async def pressed(self):
        counter = self.queue("bell_press", {"button": 1})
        await asyncio.sleep_ms(0)  # the sender starts the publish first
        if counter is None:
            return
        self.presses = (self.presses + [counter])[-8:]
        print("bell: press %d" % counter)
        if self.state == IDLE:
            self.state = ALARM
            self.alarm_since = self.siren_since = time.ticks_ms()
            self.sounding = True
            self.siren.value(1)
            self.strobe.value(1)
            self.announce(CALLING)

    # -- downlink -------------------------------------------------------------------------
    def on_ack(self, frame):
        if not self.link.guard.accept(frame.counter):
            print("bell: ack %d replayed" % frame.counter)
            return
        acked, status = frame.fields["acked_counter"], frame.fields["status"]
        print("bell: ack %d for press %d: %s" % (frame.counter, acked, status))
        if acked not in self.presses:
            return  # an earlier alarm's, or a test: nothing to announce
        if status == "resolved":
            self.end_alarm("resolved")
        elif status in ("received", "dispatched") and self.state == ALARM:
            self.state = CONFIRMED
            self.announce(CONNECTED)
            self.siren_off()

    # -- tasks ----------------------------------------------------------------------------
    async def inputs(self):
        """Polls the button and the tamper switch; runs the alarm's timeouts; feeds the watchdog."""
        pressed_at = time.ticks_add(time.ticks_ms(), -DEBOUNCE_MS)  # last poll that saw it pressed
        released = True  # a poll saw the button released since then (a button held at boot counts)
        lid = self.tamper.value()
        lid_seen, lid_since = lid, time.ticks_ms()
        if lid:
            self.queue("tamper", {"state": "opened"})
            print("bell: lid open at boot")
        while True:
            now = time.ticks_ms()
            if self.wdt is not None:
                self.wdt.feed()
            fell, self.fell = self.fell, False
            if fell or self.button.value() == 0:
                if released and time.ticks_diff(now, pressed_at) >= DEBOUNCE_MS:
                    await self.pressed()
                pressed_at, released = now, False
            else:
                released = True
            level = self.tamper.value()
            if level != lid_seen:
                lid_seen, lid_since = level, now
            elif level != lid and time.ticks_diff(now, lid_since) >= DEBOUNCE_MS:
                lid = level
                self.queue("tamper", {"state": "opened" if lid else "closed"})
                print("bell: lid %s" % ("opened" if lid else "closed"))
            if self.sounding and time.ticks_diff(now, self.siren_since) >= self.siren_max_ms:
                self.siren_off()  # no ack yet: quiet, strobe on, still waiting for one
                print("bell: no ack, siren stopped")
            if self.state != IDLE and time.ticks_diff(now, self.alarm_since) >= self.alarm_max_ms:
                self.end_alarm("timeout")
            await asyncio.sleep_ms(POLL_MS)

    async def run(self):
        if self.watchdog_ms > 0:
            self.wdt = machine.WDT(timeout=self.watchdog_ms)
            print("bell: watchdog %d ms" % self.watchdog_ms)
        await asyncio.gather(self.sender(), self.inputs(), self.link.heartbeats(), *self.network())

    def network(self):
        """The MQTT link's tasks: with WiFi, the station's and MQTT only while it is joined."""
        if self.wifi is None:
            return [self.link.mqtt.run()]
        return [self.wifi.run(), self.wifi.show(), self.wifi.while_joined(self.link.mqtt.run, self.link.mqtt._close)]


def main(config):
    asyncio.run(Bell(config).run())

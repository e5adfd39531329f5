"""Wearable SOS button (U-안심 terminal for children and the elderly), SPEC.md 3.2 and 6.1.

One button, an LED, a vibration motor, a battery and optionally a GNSS receiver; no network
but BLE. Everything it sends is a 24-byte sealed frame in a BLE advertisement, heard by the
edge agents nearby.

- Button on ``button_pin`` (default 0), active low with the pull-up; a falling edge (soft IRQ,
  latched) or a low level seen by the 10 ms poll is a press at once; the button re-arms after
  ``DEBOUNCE_MS`` released.
- SOS: a press held ``LONG_MS`` (1 s), or the third of three presses within ``TRIPLE_MS``
  (1.5 s). The first advertisement goes out at once, then a burst of ``BURST_MS`` (3 s) at
  ``BURST_INTERVAL_MS`` (30 ms); then ``RESEND_MS`` (1 s) of advertising at the end of every
  ``resend_every_s`` (10 s) until the center's ack arrives or ``sos_timeout_s`` (120) passes.
  The same frame is sent all along (the agent deduplicates it); the radio scans for the ack
  meanwhile, and ``LISTEN_AFTER_ACK_MS`` (2 s) after it for the ``time`` frame the agent may
  send with it (either may be heard first: SPEC.md 3.2). Another SOS gesture while one is running restarts the burst. Intervals under
  100 ms need a Bluetooth 5 controller (ESP32-C3/S3); a Bluetooth 4.2 one (the first ESP32)
  may refuse them for non-connectable advertising.
- Cancel: a second long press within ``CANCEL_MS`` (5 s) of the SOS sends ``cancel`` (a burst)
  and stops the re-sends.
- Test mode (the button held while the wearable starts, or ``"test_mode": true``): gestures send
  ``test_sos``, which the agent takes through the whole path without dispatching anyone.
- Feedback on ``led_pin`` (2) and ``vibration_pin`` (4), active high: sent (one buzz), acked
  (three buzzes, the last long), cancelled (three short buzzes), no ack in time (one long buzz
  and light), low battery (three slow LED blinks), test mode (fast LED blinks).
- Battery: ADC on ``battery_pin`` (none: not fitted) through a divider ``battery_divider``
  (2.0); below ``battery_low_mv`` (3450) a ``low_battery`` frame is sent once, until it has
  recovered by 100 mV. Heartbeats every ``heartbeat_s`` (21600) carry the percentage.
- Location: ``gnss`` ({"uart": 2, "baudrate": 9600, "rx": 16, "tx": 17}) reads NMEA; the SOS
  carries the newest fix younger than 2 min, else "no fix" (the agent uses where it heard
  the wearable).
- Sleep: idle, it light-sleeps until the next heartbeat with the button as an ext0 wake source.
- Clock: epochs come from the RTC in Unix time (``ansim flash`` sets it; ``time`` frames from
  the agent correct it). The last epoch used is kept in flash: after power loss the clock
  restarts from there, so the agent, which expects the next epochs, still recognises it.
- A ``machine.WDT`` (``watchdog_s``, 30; 0: none) resets a hung wearable.
"""

import time

import machine
from ansim_device import clock
from ansim_device.beacon import Beacon
from ansim_device.counter import PersistentCounter, ReplayGuard
from ansim_protocol import frames
from ansim_protocol.crypto import ROTATION_PERIOD_S, DeviceKeys, epoch_of
from ansim_protocol.errors import FrameError

try:
    import esp32
except ImportError:  # a port without ext0 wake: idle in short naps instead
    esp32 = None

EXT0_WAKE = 2  # machine.wake_reason() after the button woke a light sleep (ESP32 port)
POLL_MS, DEBOUNCE_MS, LONG_MS, TRIPLE_MS, CANCEL_MS = 10, 50, 1000, 1500, 5000
BURST_MS, BURST_INTERVAL_MS = 3000, 30
RESEND_MS = 1000
LISTEN_AFTER_ACK_MS = 2000  # the time frame the agent sends with the ack may be heard after it
REPORT_BURST_MS, REPORT_INTERVAL_MS = 1000, 50  # heartbeats, low battery
TEST_HOLD_MS = 2000
BATTERY_EMPTY_MV, BATTERY_FULL_MV, BATTERY_HYSTERESIS_MV = 3300, 4200, 100
NO_FIX = {"lat": None, "lon": None, "accuracy_m": 0}

# feedback patterns: (led, vibration, ms) steps
SENT = ((0, 1, 300),)
ACKED = ((1, 1, 150), (0, 0, 150), (1, 1, 150), (0, 0, 150), (1, 1, 600))
CANCELLED = ((0, 1, 100), (0, 0, 100)) * 3
NO_ACK = ((1, 1, 1000),)
LOW_BATTERY = ((1, 0, 100), (0, 0, 400)) * 3
TEST_MODE = ((1, 0, 50), (0, 0, 50)) * 5


class Feedback:
    """Plays a pattern on the LED and the vibration motor without blocking the loop."""

    def __init__(self, led, motor):
        self.led, self.motor = led, motor
        self.steps, self.until = (), 0

    def play(self, pattern):
        if self.busy():  # a pause first, so the wearer feels where the new pattern starts
            pattern = ((0, 0, 150),) + pattern
        self.steps = pattern
        self._next(time.ticks_ms())

    def _next(self, now):
        if not self.steps:
            self.led.value(0)
            self.motor.value(0)
            return
        (led, vibration, ms), self.steps = self.steps[0], self.steps[1:]
        self.led.value(led)
        self.motor.value(vibration)
        self.until = time.ticks_add(now, ms)

    def busy(self):
        return bool(self.steps) or self.led.value() or self.motor.value()

    def step(self, now):
        if self.busy() and time.ticks_diff(now, self.until) >= 0:
            self._next(now)


class Wearable:
    def __init__(self, config):
        Pin = machine.Pin
        self.keys = DeviceKeys(config["key_bytes"])
        self.button = Pin(int(config.get("button_pin", 0)), Pin.IN, Pin.PULL_UP)
        self.fell = False
        self.button.irq(self._on_edge, Pin.IRQ_FALLING)
        self.feedback = Feedback(Pin(int(config.get("led_pin", 2)), Pin.OUT, value=0),
                                 Pin(int(config.get("vibration_pin", 4)), Pin.OUT, value=0))
        self.sos_timeout_ms = int(config.get("sos_timeout_s", 120)) * 1000
        self.resend_every_ms = max(2, int(config.get("resend_every_s", 10))) * 1000
        self.heartbeat_ms = int(config.get("heartbeat_s", 21600)) * 1000
        watchdog_ms = int(config.get("watchdog_s", 30)) * 1000
        self.nap_max_ms = watchdog_ms // 2 if watchdog_ms else self.heartbeat_ms
        self.wdt = machine.WDT(timeout=watchdog_ms) if watchdog_ms else None
        self.battery = None
        if config.get("battery_pin") is not None:
            self.battery = machine.ADC(Pin(int(config["battery_pin"])))
            self.battery_divider = float(config.get("battery_divider", 2.0))
            self.battery_low_mv = int(config.get("battery_low_mv", 3450))
        self.battery_low = False
        self.gnss = None
        gnss = config.get("gnss")
        if gnss:
            from ansim_device.nmea import Receiver
            self.gnss = Receiver(machine.UART(int(gnss.get("uart", 2)), baudrate=int(gnss.get("baudrate", 9600)),
                                              tx=int(gnss.get("tx", 17)), rx=int(gnss.get("rx", 16))))
        self.uplink = PersistentCounter("/state/up")
        self.guard = ReplayGuard("/state/down", late=True)  # time and ack come together, in either order
        self.epochs = PersistentCounter("/state/epoch", block=1)
        self.beacon = Beacon(self.keys)
        self.test_mode = bool(config.get("test_mode", False))
        # button
        self.armed, self.pressed_at, self.released_at, self.long_done = True, 0, 0, True
        self.presses = []  # ticks of recent presses, for the triple press
        # what is on the air: one transmission at a time
        self.tx_frame = None
        self.tx_kind = None
        self.tx_counter = self.tx_start = self.tx_epoch = 0
        self.tx_until_ack = False
        self.deaf_at = None  # ticks when the radio stops listening after a transmission
        self.sos = None  # (counter, ticks) of the SOS that a long press may still cancel
        self.next_heartbeat = time.ticks_add(time.ticks_ms(), self.heartbeat_ms)
        self.uptime_ms = 0
        self._restore_clock()

    def _on_edge(self, pin):
        self.fell = True  # only a flag: the loop does the work

    # -- clock and epochs -----------------------------------------------------------------
    def _restore_clock(self):
        last = self.epochs.peek() - 1
        if last > 0 and not clock.is_set():
            # the RTC lost power: continue after the last epoch used, where the agent looks
            clock.set_unix_time((last + 1) * ROTATION_PERIOD_S)
            print("wearable: clock restarted at epoch %d (after the last used)" % (last + 1))

    def epoch(self):
        epoch = epoch_of(clock.unix_time())
        if epoch > self.epochs.peek() - 1:
            self.epochs.skip_past(epoch)
        return epoch

    # -- sending --------------------------------------------------------------------------
    def transmit(self, kind, fields, until_ack=False):
        """Seal a new frame and put it on the air now; returns its counter."""
        epoch = self.epoch()
        counter = self.uplink.next()
        frame = frames.build_sealed(kind, fields, self.keys, counter, epoch)
        interval = BURST_INTERVAL_MS if until_ack or kind == "cancel" else REPORT_INTERVAL_MS
        self.beacon.advertise(frame, epoch, interval)
        self.tx_frame, self.tx_kind, self.tx_counter, self.tx_epoch = frame, kind, counter, epoch
        self.tx_start, self.tx_until_ack = time.ticks_ms(), until_ack
        if until_ack:
            self.deaf_at = None
            self.beacon.listen(epoch)
        print("wearable: %s %d sent" % (kind, counter))
        return counter

    def end_transmission(self, why):
        self.beacon.stop()
        if self.tx_until_ack:
            # the agent sends its time frame with the ack: listen a little longer for it
            self.deaf_at = time.ticks_add(time.ticks_ms(), LISTEN_AFTER_ACK_MS if why == "acknowledged" else 0)
        print("wearable: %s %d %s" % (self.tx_kind, self.tx_counter, why))
        self.tx_frame = None
        self.tx_until_ack = False

    def step_transmission(self, now):
        if self.tx_frame is None:
            return
        elapsed = time.ticks_diff(now, self.tx_start)
        if not self.tx_until_ack:
            if elapsed >= (BURST_MS if self.tx_kind == "cancel" else REPORT_BURST_MS):
                self.end_transmission("done")
            return
        if elapsed >= self.sos_timeout_ms:
            self.end_transmission("not acknowledged in time")
            self.feedback.play(NO_ACK)
            return
        on_air = elapsed < BURST_MS or (elapsed - BURST_MS) % self.resend_every_ms >= self.resend_every_ms - RESEND_MS
        if on_air and not self.beacon.advertising:
            self.beacon.advertise(self.tx_frame, self.tx_epoch, BURST_INTERVAL_MS)
        elif not on_air and self.beacon.advertising:
            self.beacon.stop()

    def location(self):
        fix = self.gnss.fix() if self.gnss is not None else None
        if fix is None:
            return NO_FIX
        return {"lat": fix[0], "lon": fix[1], "accuracy_m": fix[2]}

    # -- gestures -------------------------------------------------------------------------
    def sos_gesture(self, now):
        if self.tx_until_ack:  # already calling: burst again, same frame
            self.tx_start = now
            self.beacon.advertise(self.tx_frame, self.tx_epoch, BURST_INTERVAL_MS)
            print("wearable: %s %d again" % (self.tx_kind, self.tx_counter))
            return
        counter = self.transmit("test_sos" if self.test_mode else "sos", self.location(), until_ack=True)
        self.sos = (counter, now)
        self.feedback.play(SENT)

    def long_press(self, now):
        if self.sos is not None and time.ticks_diff(now, self.sos[1]) <= CANCEL_MS:
            sos_counter = self.sos[0]
            self.sos = None
            if self.tx_until_ack:
                self.end_transmission("cancelled")
            self.transmit("cancel", {"sos_counter": sos_counter})
            self.feedback.play(CANCELLED)
        else:
            self.sos_gesture(now)

    def poll_button(self, now):
        fell, self.fell = self.fell, False
        if fell or self.button.value() == 0:
            if self.armed:
                self.armed, self.pressed_at, self.long_done = False, now, False
                self.presses = [t for t in self.presses if time.ticks_diff(now, t) < TRIPLE_MS] + [now]
                if len(self.presses) >= 3:
                    self.presses = []
                    self.long_done = True  # this press already made its gesture
                    self.sos_gesture(now)
            elif not self.long_done and time.ticks_diff(now, self.pressed_at) >= LONG_MS:
                self.long_done = True
                self.presses = []
                self.long_press(now)
            self.released_at = now
        elif not self.armed and time.ticks_diff(now, self.released_at) >= DEBOUNCE_MS:
            self.armed = True

    # -- receiving ------------------------------------------------------------------------
    def handle_downlink(self, now):
        if self.deaf_at is not None and time.ticks_diff(now, self.deaf_at) >= 0:
            self.deaf_at = None
            if self.tx_frame is None or not self.tx_until_ack:
                self.beacon.deafen()
        while self.beacon.inbox:
            raw = self.beacon.inbox.pop(0)
            try:
                frame = frames.unpack(raw, self.keys)
            except FrameError as e:
                print("wearable: downlink rejected: %s" % e.reason)
                continue
            if not self.guard.accept(frame.counter):
                continue  # heard again, or replayed
            if frame.kind == "time":
                old = clock.unix_time()
                clock.set_unix_time(frame.fields["unix_time"])
                print("wearable: clock set %d -> %d" % (old, frame.fields["unix_time"]))
            elif frame.kind == "center_ack":
                self.acknowledged(frame.fields["acked_counter"], frame.fields["status"])

    def acknowledged(self, counter, status):
        print("wearable: ack for %d: %s" % (counter, status))
        if self.tx_until_ack and counter == self.tx_counter:
            self.end_transmission("acknowledged")
            self.feedback.play(ACKED)

    # -- battery and heartbeat ------------------------------------------------------------
    def battery_mv(self):
        return int(self.battery.read_uv() * self.battery_divider) // 1000

    def battery_pct(self, mv):
        pct = (mv - BATTERY_EMPTY_MV) * 100 // (BATTERY_FULL_MV - BATTERY_EMPTY_MV)
        return max(0, min(100, pct))

    def check_battery(self):
        if self.battery is None or self.tx_frame is not None:
            return
        mv = self.battery_mv()
        if not self.battery_low and mv < self.battery_low_mv:
            self.battery_low = True
            self.transmit("low_battery", {"battery_pct": self.battery_pct(mv), "battery_mv": min(mv, 0xFFFF)})
            self.feedback.play(LOW_BATTERY)
        elif self.battery_low and mv >= self.battery_low_mv + BATTERY_HYSTERESIS_MV:
            self.battery_low = False

    def heartbeat(self, now):
        if self.tx_frame is not None or time.ticks_diff(now, self.next_heartbeat) < 0:
            return
        self.next_heartbeat = time.ticks_add(now, self.heartbeat_ms)
        pct = 255 if self.battery is None else self.battery_pct(self.battery_mv())
        self.uptime_ms += self.heartbeat_ms  # ticks_ms wraps after 12 days; this does not
        uptime_min = min(self.uptime_ms // 60000, 0xFFFFFF)
        self.transmit("heartbeat", {"battery_pct": pct, "uptime_min": uptime_min, "faults": 0})

    # -- the loop -------------------------------------------------------------------------
    def idle(self):
        return (self.tx_frame is None and self.deaf_at is None and self.armed and not self.presses and not self.fell
                and not self.feedback.busy() and self.button.value() == 1)

    def sleep(self, now):
        ms = max(0, min(time.ticks_diff(self.next_heartbeat, now), self.nap_max_ms))
        if esp32 is None:
            ms = min(ms, POLL_MS)
        else:
            esp32.wake_on_ext0(self.button, esp32.WAKEUP_ALL_LOW)
        self.feed()
        machine.lightsleep(ms)
        if machine.wake_reason() == EXT0_WAKE:
            self.fell = True  # the press that woke us may be over already: it counts

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def start(self):
        """Test mode if the button is held while starting; a short buzz says the wearable is on."""
        held_since = time.ticks_ms()
        while self.button.value() == 0 and time.ticks_diff(time.ticks_ms(), held_since) < TEST_HOLD_MS:
            time.sleep_ms(POLL_MS)
        if self.button.value() == 0:
            self.test_mode = True
            self.armed = False  # the hold is not a press
        print("wearable: ready%s" % (" in test mode" if self.test_mode else ""))
        self.feedback.play(TEST_MODE if self.test_mode else SENT[:1])
        self.check_battery()

    def run(self):
        self.start()
        while True:
            self.feed()
            now = time.ticks_ms()
            self.poll_button(now)
            self.handle_downlink(now)
            self.step_transmission(now)
            self.feedback.step(now)
            self.heartbeat(now)
            if self.idle():
                self.sleep(now)
                self.check_battery()
            else:
                time.sleep_ms(POLL_MS)


def main(config):
    Wearable(config).run()

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
  recovered by 100 mV. Heartbeats carry the percentage, on average every ``heartbeat_s``
  (21600, 6 h): each wait, the first after start too, is drawn uniformly in 0.5 to 1.5 times
  that (``heartbeat_interval_ms``, from the hardware RNG), so that a fixed period does not link
  the wearable's rotating ids across epochs.
- On the air every transmission opens alike: the same burst of ``BURST_MS`` (3 s) at
  ``BURST_INTERVAL_MS`` (30 ms) of a 24-byte sealed frame, whatever its type (SOS, test_sos,
  cancel, heartbeat, low_battery), so a scanner cannot tell them apart by how they open; only
  an SOS goes on with re-sends after it, on purpose (SPEC.md 3.3).
- Company id: adverts go out, and acks are heard, under ``company_id`` (0xFFFF, the Bluetooth
  SIG's test id, unless provisioned otherwise).
- Location: ``gnss`` ({"uart": 2, "baudrate": 9600, "rx": 16, "tx": 17}) reads NMEA; the SOS
  carries the newest fix younger than 2 min, else "no fix" (the agent uses where it heard
  the wearable).
- Sleep: idle, it light-sleeps (at most ``watchdog_s`` / 2 at a time) with the button as a wake
  source; idle for ``deep_sleep_after_s`` (20; null: never), or at once after a heartbeat that
  the timer woke it for, it deep-sleeps until the next heartbeat or the button, which is what
  makes a year on a 1,000 mAh cell (``ansim bench battery``). RAM is lost in deep sleep: what
  must survive (the next uplink counter, when the next heartbeat is due, uptime, low battery,
  test mode) goes to RTC memory, which is read back only after a deep-sleep reset; the next
  counter is taken from there only if the flash reservation covers it, so a wake neither skips
  counters nor writes the flash, and after power loss (RTC memory gone) or any other reset the
  flash reservation stands. Wake sources: ``esp32.wake_on_ext0`` on an ESP32,
  ``esp32.wake_on_gpio`` on an ESP32-C3 (MicroPython 1.27 on; GPIO0-5 only), light sleep only
  where neither wakes a deep sleep. A press that woke it counts even if it is over by then;
  a triple press whose first press wakes it from deep sleep needs the board to start before
  the second (a long press always works).
- Clock: epochs come from the RTC in Unix time (``ansim flash`` sets it; ``time`` frames from
  the agent correct it). A wearable whose RTC lost power has no time to make an epoch from:
  until a ``time`` frame sets its clock it counts its starts without a clock (in flash, never
  one twice) and uses the clockless epoch ``CLOCKLESS + n`` of the current start, and it
  listens ``LISTEN_AFTER_ACK_MS`` after every transmission for the time frame the agent sends
  it (SPEC.md 3.2). A frame without a time is never mistaken for one made at some time.
- A ``machine.WDT`` (``watchdog_s``, 30; 0: none) resets a hung wearable.
"""

import json
import os
import time

import machine
from ansim_device import clock
from ansim_device.beacon import Beacon
from ansim_device.counter import PersistentCounter, ReplayGuard
from ansim_protocol import frames
from ansim_protocol.crypto import CLOCKLESS, DeviceKeys, epoch_of
from ansim_protocol.errors import FrameError

try:
    import esp32
except ImportError:  # a port without ext0 wake: idle in short naps instead
    esp32 = None

EXT0_WAKE = 2  # machine.wake_reason() after the button woke a light sleep (ESP32 port)
# wake reasons of a button (esp_sleep_wakeup_cause_t): ext0, ext1, GPIO (esp32.wake_on_gpio; no constant)
BUTTON_WAKES = (EXT0_WAKE, 3, 7)
TIMER_WAKE = 4
RTC_TAG = b"aw1 "  # RTC memory: this tag, then the state as JSON (see _suspend)
POLL_MS, DEBOUNCE_MS, LONG_MS, TRIPLE_MS, CANCEL_MS = 10, 50, 1000, 1500, 5000
BURST_MS, BURST_INTERVAL_MS = 3000, 30  # every transmission opens with this burst, whatever its type
RESEND_MS = 1000
LISTEN_AFTER_ACK_MS = 2000  # the time frame the agent sends with the ack may be heard after it
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


def heartbeat_interval_ms(heartbeat_ms):
    """The wait before the next heartbeat: uniform in 0.5 to 1.5 times ``heartbeat_ms``, drawn
    from ``os.urandom`` (the ESP32's hardware RNG), so heartbeats have no fixed period."""
    r = int.from_bytes(os.urandom(2), "big")  # 0..65535
    return heartbeat_ms // 2 + int(heartbeat_ms * (r / 65536))


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
        self.beacon = Beacon(self.keys, int(config.get("company_id", 0xFFFF)))
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
        self.beat_gap_ms = heartbeat_interval_ms(self.heartbeat_ms)  # the first heartbeat is jittered too
        self.next_heartbeat = time.ticks_add(time.ticks_ms(), self.beat_gap_ms)
        self.uptime_ms = 0
        deep = config.get("deep_sleep_after_s", 20)
        self.deep_after_ms = None if deep is None or deep < 0 else int(deep * 1000)
        self.busy_at = time.ticks_ms()  # the last time the loop was not idle
        self.woke = self._resume()  # None, or the wake reason of a deep sleep this start ends
        self.clockless = self._clockless_start()

    def _on_edge(self, pin):
        self.fell = True  # only a flag: the loop does the work

    # -- deep sleep -----------------------------------------------------------------------
    def _resume(self):
        """After a deep sleep, the state _suspend left in RTC memory; the wake reason, or None
        for any other start (RTC memory also survives a watchdog or hard reset, but what was
        used after it was written is unknown then: the flash reservation stands)."""
        if not hasattr(machine, "DEEPSLEEP_RESET") or machine.reset_cause() != machine.DEEPSLEEP_RESET:
            return None
        reason = machine.wake_reason()  # a wake even without its state: a held button is no test-mode hold
        rtc = machine.RTC()
        data = rtc.memory()
        rtc.memory(b"")  # read once: a later reset of another kind must not find it
        if data[:len(RTC_TAG)] != RTC_TAG:
            return reason
        try:
            state = json.loads(data[len(RTC_TAG):].decode())
            up_next, heartbeat_at, gap_ms, uptime_ms, battery_low, test_mode = state
        except (ValueError, TypeError):
            return reason
        self.uplink.resume(up_next)  # not covered by the flash reservation: the reservation stands
        left_ms = min(max(0, heartbeat_at - time.time()) * 1000, gap_ms)
        self.next_heartbeat = time.ticks_add(time.ticks_ms(), left_ms)
        self.beat_gap_ms, self.uptime_ms = gap_ms, uptime_ms
        self.battery_low, self.test_mode = bool(battery_low), bool(test_mode)
        return reason

    def _suspend(self, now):
        """What must outlive the RAM, into RTC memory (before every deep sleep)."""
        left_s = max(0, time.ticks_diff(self.next_heartbeat, now)) // 1000
        state = [self.uplink.peek(), time.time() + left_s, self.beat_gap_ms, self.uptime_ms, self.battery_low,
                 self.test_mode]
        machine.RTC().memory(RTC_TAG + json.dumps(state).encode())

    def _arm_button_wake(self):
        if hasattr(esp32, "wake_on_ext0"):  # an ESP32: light and deep sleep
            esp32.wake_on_ext0(self.button, esp32.WAKEUP_ALL_LOW)
        else:  # an ESP32-C3 (MicroPython 1.27 on): GPIO0-5 wake it from deep sleep
            esp32.wake_on_gpio((self.button,), esp32.WAKEUP_ALL_LOW)

    def _until_deep_ms(self, now):
        """ms until it may deep-sleep (idle long enough, no SOS a long press may still cancel);
        None: never (no deep sleep here)."""
        if self.deep_after_ms is None or esp32 is None or not hasattr(machine, "deepsleep"):
            return None
        after = self.deep_after_ms
        if self.woke == TIMER_WAKE and not self.presses:
            after = 0  # woken for its heartbeat and nobody pressed: back to deep sleep once it is sent
        left = after - time.ticks_diff(now, self.busy_at)
        if self.sos is not None:
            left = max(left, CANCEL_MS + 1 - time.ticks_diff(now, self.sos[1]))
        return left

    # -- clock and epochs -----------------------------------------------------------------
    @staticmethod
    def _clockless_start():
        """0 with a clock; else which start without a clock this is (1, 2, ...). A wake from
        deep sleep is no new start: the RTC kept running, set or not."""
        if clock.is_set():
            return 0
        starts = PersistentCounter("/state/clockless", block=1)
        n = starts.peek() - 1 if machine.reset_cause() == machine.DEEPSLEEP_RESET and starts.peek() > 1 else starts.next()
        print("wearable: no clock; clockless start %d until the agent sends the time" % n)
        return n

    def epoch(self):
        if self.clockless:
            return CLOCKLESS + self.clockless
        return epoch_of(clock.unix_time())

    # -- sending --------------------------------------------------------------------------
    def transmit(self, kind, fields, until_ack=False):
        """Seal a new frame and put it on the air now; returns its counter."""
        epoch = self.epoch()
        counter = self.uplink.next()
        frame = frames.build_sealed(kind, fields, self.keys, counter, epoch)
        self.beacon.advertise(frame, epoch, BURST_INTERVAL_MS)  # the same opening for every type
        self.tx_frame, self.tx_kind, self.tx_counter, self.tx_epoch = frame, kind, counter, epoch
        self.tx_start, self.tx_until_ack = time.ticks_ms(), until_ack
        if until_ack or self.clockless:
            self.deaf_at = None
            self.beacon.listen(epoch)
        print("wearable: %s %d sent" % (kind, counter))
        return counter

    def end_transmission(self, why):
        self.beacon.stop()
        if self.tx_until_ack or self.clockless:
            # the agent sends its time frame with the ack, and to a wearable without a clock
            # after each of its frames: listen a little longer for it
            listen = why == "acknowledged" or self.clockless
            self.deaf_at = time.ticks_add(time.ticks_ms(), LISTEN_AFTER_ACK_MS if listen else 0)
        print("wearable: %s %d %s" % (self.tx_kind, self.tx_counter, why))
        self.tx_frame = None
        self.tx_until_ack = False

    def step_transmission(self, now):
        if self.tx_frame is None:
            return
        elapsed = time.ticks_diff(now, self.tx_start)
        if not self.tx_until_ack:
            if elapsed >= BURST_MS:
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
                self.clockless = 0
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
        # ticks_ms wraps after 12 days; this does not (the wait drawn, and how late it ended)
        self.uptime_ms += self.beat_gap_ms + time.ticks_diff(now, self.next_heartbeat)
        self.beat_gap_ms = heartbeat_interval_ms(self.heartbeat_ms)
        self.next_heartbeat = time.ticks_add(now, self.beat_gap_ms)
        pct = 255 if self.battery is None else self.battery_pct(self.battery_mv())
        uptime_min = min(self.uptime_ms // 60000, 0xFFFFFF)
        self.transmit("heartbeat", {"battery_pct": pct, "uptime_min": uptime_min, "faults": 0})

    # -- the loop -------------------------------------------------------------------------
    def idle(self):
        pressing = self.presses and time.ticks_diff(time.ticks_ms(), self.presses[-1]) < TRIPLE_MS
        return (self.tx_frame is None and self.deaf_at is None and self.armed and not pressing and not self.fell
                and not self.feedback.busy() and self.button.value() == 1)

    def sleep(self, now):
        ms = max(0, time.ticks_diff(self.next_heartbeat, now))
        until_deep = self._until_deep_ms(now)
        if until_deep is not None and until_deep <= 0:
            self._arm_button_wake()
            self._suspend(now)
            try:
                machine.deepsleep(ms)  # ends in a reset: main.py starts again, _resume takes over
            except ValueError as e:  # this button cannot wake this chip from deep sleep
                print("wearable: no deep sleep: %s" % e)
                self.deep_after_ms = until_deep = None
        ms = min(ms, self.nap_max_ms)
        if until_deep is not None:
            ms = min(ms, until_deep)  # then deep sleep
        if esp32 is None:
            ms = min(ms, POLL_MS)
        else:
            self._arm_button_wake()
        self.feed()
        machine.lightsleep(ms)
        if machine.wake_reason() in BUTTON_WAKES:
            self.fell = True  # the press that woke us may be over already: it counts

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def start(self):
        """Test mode if the button is held while starting; a short buzz says the wearable is on.
        A wake from deep sleep is no start: no buzz, no test-mode hold, the waking press counts."""
        if self.woke is not None:
            if self.woke in BUTTON_WAKES:
                self.fell = True
            print("wearable: awake (%s)" % ("button" if self.woke in BUTTON_WAKES else "timer"))
            self.check_battery()
            return
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
                self.busy_at = now
                time.sleep_ms(POLL_MS)


def main(config):
    Wearable(config).run()

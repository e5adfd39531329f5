"""The wearable firmware on a virtual board (the real MicroPython VM): gestures, the SOS burst
and its re-sends, cancel, test mode, low battery, GNSS, counters across power cycles. What
goes on the air is read from the board's advertising events and decoded with the device key;
tests/test_wearable_air.py takes the same firmware through the virtual radio to the agent."""

import json
import time

import pytest

from ansim_protocol import ble, frames
from ansim_protocol.crypto import CLOCKLESS, DeviceKeys, epoch_of, rotating_id
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BUTTON, LED, MOTOR, BATTERY, GNSS_UART = 0, 2, 4, 35, 2
KEY = bytes(range(16))
KEYS = DeviceKeys(KEY)
DEVICE = "00010001"
WAIT_S = 10
# 3.9 V through the 1:2 divider, as the 3.3 V ADC full scale sees it
FULL_BATTERY_U16 = 3900 * 65535 // 2 // 3300


def flash(board_dir, **settings):
    copy_to_directory(firmware_files("wearable"), board_dir)
    config = {"device_id": DEVICE, "role": "wearable", "key": KEY.hex(), "battery_pin": BATTERY}
    config.update(settings)
    (board_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def wearable(tmp_path):
    def start(**settings):
        flash(tmp_path / "flash", **settings)
        board = VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm").start()
        boards.append(board)
        board.control.set_adc(BATTERY, FULL_BATTERY_U16)  # kept for every boot from now on
        mark = board.control.mark()
        board.reset()
        ready(board, mark)
        return board

    boards = []
    yield start
    for board in boards:
        board.stop()


def ready(board, since=0):
    return printed(board, "wearable: ready", since)


def printed(board, text, since=0, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def on_air(event):
    """The frame an advertising event carries (None when advertising stopped)."""
    return None if event["data"] is None else ble.frame_from_advertisement(bytes.fromhex(event["data"]))


def next_advert(board, since, timeout=WAIT_S):
    event = board.control.wait_for(lambda e: e["data"] is not None, timeout=timeout, since=since, ev="adv")
    return event, frames.unpack(on_air(event), KEYS)


def adverts(board, since, count, timeout=WAIT_S):
    """The first ``count`` advertisements started from event ``since`` on, decoded."""
    found = []
    while len(found) < count:
        event = board.control.wait_for(lambda e: e["data"] is not None, timeout=timeout, since=since, ev="adv")
        since = board.control.events().index(event) + 1
        found.append(frames.unpack(on_air(event), KEYS))
    return found


def stopped(board, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: e["data"] is None, timeout=timeout, since=since, ev="adv")


def triple_press(board):
    """Three quick presses; returns the host time of the third press's edge."""
    ctl = board.control
    for _ in range(2):
        ctl.press(BUTTON, 60)
        time.sleep(0.06)  # released between presses (the stimulus, not a wait)
    pressed_at = time.monotonic()
    ctl.press(BUTTON, 60)
    return pressed_at


def long_press(board, ms=1200):
    board.control.press(BUTTON, ms)


def vibrations(board, since):
    return [e for e in board.control.events(since) if e.get("ev") == "pin" and e["pin"] == MOTOR and e["value"] == 1]


def test_triple_press_advertises_a_sealed_sos_at_once_then_bursts_and_resends(wearable):
    board = wearable(resend_every_s=2, sos_timeout_s=6)
    mark = board.control.mark()
    pressed_at = triple_press(board)
    first, sos = next_advert(board, mark)
    assert sos.kind == "sos" and sos.sealed and not sos.downlink
    assert sos.fields == {"lat": None, "lon": None, "accuracy_m": 0}  # no GNSS fitted
    assert 20000 <= first["interval_us"] <= 100000 and first["connectable"] is False
    assert len(on_air(first)) == frames.SEALED_SIZE
    print("\nthird press -> first advertisement %.1f ms" % ((first["t"] - pressed_at) * 1000))
    # The burst lasts at least 3 s, then the same frame comes back until the timeout.
    end = stopped(board, mark)
    assert end["t"] - first["t"] >= 3.0 - 0.05  # less what the host adds to either event's arrival
    again, resent = next_advert(board, board.control.events().index(end))
    assert on_air(again) == on_air(first) and resent.counter == sos.counter
    gave_up = printed(board, "wearable: sos %d not acknowledged in time" % sos.counter, mark)
    buzz = board.control.wait_for(lambda e: e["t"] >= gave_up["t"], timeout=WAIT_S, since=mark,
                                  ev="pin", pin=MOTOR, value=1)  # the long buzz of "no ack"
    assert board.control.wait_for(since=board.control.events().index(buzz), ev="pin", pin=MOTOR,
                                  value=0)["t"] - buzz["t"] >= 0.9


def test_a_second_long_press_within_5_s_cancels_the_sos(wearable):
    board = wearable()
    mark = board.control.mark()
    long_press(board)
    _, sos = next_advert(board, mark)
    assert sos.kind == "sos"
    time.sleep(0.3)  # the user lets go, then presses again (within 50 ms would be contact bounce)
    mark = board.control.mark()
    long_press(board)
    _, cancel = next_advert(board, mark)
    assert cancel.kind == "cancel" and cancel.fields == {"sos_counter": sos.counter}
    assert cancel.counter > sos.counter
    printed(board, "wearable: sos %d cancelled" % sos.counter, mark)
    board.control.wait_for(lambda e: len(vibrations(board, mark)) >= 3, timeout=WAIT_S, since=mark, ev="pin")


def test_a_long_press_after_the_cancel_window_is_a_new_sos_not_a_cancel(wearable):
    board = wearable()
    mark = board.control.mark()
    long_press(board)
    _, sos = next_advert(board, mark)
    sent = printed(board, "wearable: sos %d sent" % sos.counter, mark)
    time.sleep(max(0.0, sent["t"] + 4.0 - time.monotonic()))  # the user waits: this press ends after 5 s
    mark = board.control.mark()
    long_press(board)
    event, again = next_advert(board, mark)
    assert again.kind == "sos" and again.counter == sos.counter  # the same SOS, burst again
    assert not [e for e in board.control.events(mark) if "cancel" in e.get("text", "")]


def test_holding_the_button_at_start_enters_test_mode(wearable, tmp_path):
    board = wearable()
    ctl = board.control
    ctl.set_pin(BUTTON, 0)
    mark = ctl.mark()
    board.reset()
    printed(board, "wearable: ready in test mode", mark)
    ctl.set_pin(BUTTON, 1)
    time.sleep(0.2)  # the technician lets go
    mark = ctl.mark()
    triple_press(board)
    _, test = next_advert(board, mark)
    assert test.kind == "test_sos"


def test_low_battery_is_reported_once_until_recharged(wearable):
    board = wearable(heartbeat_s=3)
    ctl = board.control
    mark = ctl.mark()
    ctl.set_adc(BATTERY, 3400 * 65535 // 2 // 3300)  # 3.4 V: below 3.45 V
    sent = [(f.kind, f.fields.get("battery_pct")) for f in adverts(board, mark, 4)]
    low = sent.index(("low_battery", 11))
    # Heartbeats follow with the low percentage; no second low_battery while it stays low.
    assert sent[low + 1:] == [("heartbeat", 11)] * (3 - low)
    assert all(kind == "heartbeat" for kind, _ in sent[:low])


def test_the_sos_carries_the_gnss_fix(wearable):
    board = wearable(gnss={"uart": GNSS_UART})
    ctl = board.control
    ctl.uart(GNSS_UART, b"$GPGGA,123519,3733.9600,N,12658.8600,E,1,08,0.9,545.4,M,46.9,M,,*48\r\n")
    mark = ctl.mark()
    triple_press(board)
    _, sos = next_advert(board, mark)
    assert sos.fields["accuracy_m"] == 5  # HDOP 0.9 x 5 m
    assert sos.fields["lat"] == pytest.approx(37.566, abs=2e-5)
    assert sos.fields["lon"] == pytest.approx(126.981, abs=3e-5)


def test_a_power_cycle_never_reuses_a_counter(wearable):
    board = wearable()
    used = []
    for _ in range(3):
        mark = board.control.mark()
        triple_press(board)
        used.append(next_advert(board, mark)[1].counter)
        mark = board.control.mark()
        board.power_cycle()
        ready(board, mark)
    assert used == sorted(set(used))


def test_an_idle_wearable_sleeps_and_the_button_wakes_it(wearable):
    board = wearable()
    ctl = board.control
    mark = ctl.mark()
    ctl.wait_for(timeout=WAIT_S, since=mark, ev="sleep")
    triple_press(board)
    _, sos = next_advert(board, mark)
    assert sos.kind == "sos"


class SosOnTheAir:
    """A wearable whose clock is an hour late has sent an SOS and listens for the agent, on a
    virtual air the test can advertise on (``advertise``)."""

    def __init__(self, board):
        from ansim_simulators.hardware.ble_radio import ThreadedAir
        from ansim_simulators.hardware.board_radio import BoardRadio
        self.board, self.ctl = board, board.control
        self.air = ThreadedAir()
        self._radio = BoardRadio(board, self.air)

    def __enter__(self):
        self._radio.__enter__()
        self.mark = self.ctl.mark()
        triple_press(self.board)
        _, self.sos = next_advert(self.board, self.mark)
        self.epoch = epoch_of(time.time() + self.ctl.rtc_offset)
        self.right = int(time.time()) + 3600
        return self

    def __exit__(self, *exc):
        try:
            self._radio.__exit__(*exc)
        finally:
            self.air.close()

    def seal(self, kind, fields, counter):
        return frames.build_sealed(kind, fields, KEYS, counter, self.epoch, downlink=True)

    def advertise(self, frame):
        return self.air.call(self.air.air.add_advertiser(ble.advertisement(frame), interval_ms=30))

    def clock_set_right(self):
        self.ctl.wait_for(lambda e: abs(e["offset"] - 3600) < 5, timeout=WAIT_S, since=self.mark, ev="rtc")


def test_a_time_frame_heard_while_waiting_for_the_ack_sets_the_clock(wearable):
    with SosOnTheAir(wearable()) as sos:
        altered = bytearray(sos.seal("time", {"unix_time": sos.right + 99}, 5))
        altered[10] ^= 0x01  # under our rotating id, but not what the agent sealed
        for frame in (bytes(altered), sos.seal("time", {"unix_time": sos.right}, 6)):
            sos.advertise(frame)
        changed = printed(sos.board, "wearable: clock set", sos.mark)
        assert changed["text"].split("->")[1].strip() == str(sos.right)
        printed(sos.board, "downlink rejected: tag", sos.mark)
        sos.clock_set_right()


@pytest.mark.parametrize("first", ["center_ack", "time"])
def test_the_clock_is_set_whichever_of_time_and_ack_is_heard_first(wearable, first):
    """SPEC.md 3.2: the agent seals ``time`` (counter c) and ``center_ack`` (c + 1) together;
    the wearable may hear either first, and neither makes the other a replay."""
    with SosOnTheAir(wearable()) as sos:
        sent = {"time": sos.seal("time", {"unix_time": sos.right}, 7),
                "center_ack": sos.seal("center_ack", {"acked_counter": sos.sos.counter, "status": "received"}, 8)}
        heard = {"time": "wearable: clock set", "center_ack": "wearable: ack for"}
        second = "time" if first == "center_ack" else "center_ack"
        advertiser = sos.advertise(sent[first])
        printed(sos.board, heard[first], sos.mark)
        sos.air.call(advertiser.stop())
        sos.advertise(sent[second])
        printed(sos.board, heard[second], sos.mark)
        sos.clock_set_right()
        printed(sos.board, "wearable: sos %d acknowledged" % sos.sos.counter, sos.mark)


def test_after_power_loss_a_wearable_without_a_clock_calls_under_its_clockless_epoch(wearable):
    """SPEC.md 3.2: no clock, no epoch: it counts its starts without a clock, uses the
    clockless epoch of this start, and takes the time the agent sends it under that rid."""
    board = wearable()
    ctl = board.control
    mark = ctl.mark()
    triple_press(board)
    _, before = next_advert(board, mark)
    for start in (1, 2):  # no backup battery: at each power-on the RTC restarts at 2000-01-01
        mark = ctl.mark()
        board.clock = None
        board.power_cycle()
        printed(board, "wearable: no clock; clockless start %d" % start, mark)
        ready(board, mark)
    with SosOnTheAir(board) as sos:
        assert sos.sos.rid == rotating_id(KEYS, CLOCKLESS + 2) and sos.sos.counter > before.counter
        sos.epoch = CLOCKLESS + 2
        sos.advertise(sos.seal("time", {"unix_time": sos.right}, 9))
        printed(board, "wearable: clock set", sos.mark)
        sos.clock_set_right()
        sos.advertise(sos.seal("center_ack", {"acked_counter": sos.sos.counter, "status": "received"}, 10))
        printed(board, "wearable: sos %d acknowledged" % sos.sos.counter, sos.mark)
        mark = ctl.mark()
        ctl.wait_for(timeout=WAIT_S, since=mark, ev="sleep")
        triple_press(board)
        _, after = next_advert(board, mark)
        assert after.rid == rotating_id(KEYS, epoch_of(sos.right)) and after.counter > sos.sos.counter


def test_a_hung_wearable_is_reset_by_its_watchdog(wearable):
    board = wearable(watchdog_s=1)
    ctl = board.control
    idle = ctl.mark()
    ctl.wait_for(timeout=WAIT_S, since=idle, ev="sleep")
    with pytest.raises(TimeoutError):  # fed, also around its naps: no reset while it runs
        ctl.wait_for(timeout=2.5, since=idle, ev="wdt")
    mark = ctl.mark()
    board.freeze(1.5)  # stuck longer than the watchdog's 1 s
    ctl.wait_for(timeout=WAIT_S, since=mark, ev="wdt")
    assert ctl.wait_for(timeout=WAIT_S, since=mark, ev="hello")["cause"] == 3  # WDT_RESET
    ready(board, mark)

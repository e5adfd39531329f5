"""The wearable's deep sleep on the virtual board (the real MicroPython VM): idle, it deep-sleeps
(the VM is gone, the RAM with it) until its next heartbeat or the button; a press during deep
sleep starts it again into an SOS; heartbeats go on across deep sleeps; the counters of the
frames actually advertised (decoded with the device key) never repeat, across deep-sleep
wakes and a power loss in between, and a wake neither skips counters nor writes the flash.
The time warp (VirtualBoard(warp=True)) lets hours pass in seconds."""

import time

import pytest

from ansim_protocol import frames
from ansim_simulators.hardware.virtual_board import VirtualBoard
from test_wearable import BATTERY, BUTTON, FULL_BATTERY_U16, KEYS, WAIT_S, flash, on_air, printed

DEEPSLEEP_RESET, TIMER_WAKE, EXT0_WAKE, GPIO_WAKE = 4, 4, 2, 7
HOUR = 3600.0


@pytest.fixture
def wearable(tmp_path):
    def start(chip="esp32", warp=False, **settings):
        flash(tmp_path / "flash", **settings)
        board = VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm", warp=warp, chip=chip).start()
        boards.append(board)
        board.control.set_adc(BATTERY, FULL_BATTERY_U16)
        mark = board.control.mark()
        board.reset()
        printed(board, "wearable: ready", mark)
        return board

    boards = []
    yield start
    for board in boards:
        board.stop()


def deep_sleep(board, since, timeout=WAIT_S * 3):
    return board.control.wait_for(lambda e: e.get("mode") == "deep", timeout=timeout, since=since, ev="sleep")


def advertised(board, since=0):
    """Every frame the board started advertising from event ``since`` on, decoded, in order."""
    return [frames.unpack(on_air(e), KEYS) for e in board.control.events(since)
            if e.get("ev") == "adv" and e.get("data") is not None]


def new_frames(board, since, count, kind=None, timeout=WAIT_S * 3):
    """Wait until ``count`` frames (of ``kind``) were advertised from ``since`` on; return them,
    each once (a frame may be advertised again: re-sends, a new address)."""
    def found():
        seen, out = set(), []
        for f in advertised(board, since):
            if (kind is None or f.kind == kind) and f.counter not in seen:
                seen.add(f.counter)
                out.append(f)
        return out

    board.control.wait_for(lambda e: len(found()) >= count, timeout=timeout, since=since)
    return found()


def transmissions(sent):
    """The counters of successive transmissions (one frame may be advertised again and again)."""
    out = []
    for f in sent:
        if not out or out[-1] != f.counter:
            out.append(f.counter)
    return out


def reservation(tmp_path):
    return sorted(p.read_text() for p in (tmp_path / "flash" / "state").glob("up.*"))


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_an_idle_wearable_deep_sleeps_and_a_press_wakes_it_into_an_sos(wearable, chip):
    board = wearable(chip=chip, deep_sleep_after_s=1)
    ctl = board.control
    asleep = deep_sleep(board, 0)
    wake = asleep["wake"]
    assert wake["pins"] == [BUTTON] and wake["level"] == 0 and asleep["ms"] > 1000
    assert wake["kind"] == ("ext0" if chip == "esp32" else "gpio")  # esp32.wake_on_gpio on a C3
    assert asleep["vt"] - printed(board, "wearable: ready")["vt"] >= 1.0
    mark = ctl.mark()
    pressed_at = time.monotonic()
    ctl.press(BUTTON, 1300)  # a long press: the first press of a triple press may end before main.py runs
    woke = ctl.wait_for(since=mark, ev="wake", mode="deep", timeout=WAIT_S)
    assert woke["reason"] == (EXT0_WAKE if chip == "esp32" else GPIO_WAKE)
    assert ctl.wait_for(since=mark, ev="hello", timeout=WAIT_S)["cause"] == DEEPSLEEP_RESET
    printed(board, "wearable: awake (button)", mark)
    first = ctl.wait_for(lambda e: e["data"] is not None, since=mark, ev="adv", timeout=WAIT_S)
    sos = frames.unpack(on_air(first), KEYS)
    assert sos.kind == "sos"
    print("\npress during deep sleep -> first SOS advert %.0f ms (the hold is 1000 ms)"
          % ((first["t"] - pressed_at) * 1000))
    assert first["t"] - pressed_at < 2.5


def test_a_short_press_during_deep_sleep_counts_though_it_is_over_before_main_runs(wearable):
    board = wearable(deep_sleep_after_s=1)
    ctl = board.control
    deep_sleep(board, 0)
    mark = ctl.mark()
    ctl.press(BUTTON, 20)  # released long before the new VM has started
    printed(board, "wearable: awake (button)", mark)
    for _ in range(2):  # the rest of a triple press, after the board is up
        time.sleep(0.1)
        ctl.press(BUTTON, 60)
    assert new_frames(board, mark, 1)[0].kind == "sos"


def test_heartbeats_go_on_across_deep_sleeps_and_a_wake_costs_no_counter_and_no_flash_write(wearable, tmp_path):
    board = wearable(warp=True, heartbeat_s=1800, deep_sleep_after_s=0)
    ctl = board.control
    start = ctl.vnow()
    beats = new_frames(board, 0, 4, kind="heartbeat", timeout=120)
    stored = reservation(tmp_path)
    beats += new_frames(board, 0, 10, kind="heartbeat", timeout=180)[4:]
    assert reservation(tmp_path) == stored  # no flash write for six more heartbeats, six more wakes
    counters = [f.counter for f in beats]
    assert counters == list(range(counters[0], counters[0] + len(counters)))  # none skipped, none reused
    assert [f.fields["uptime_min"] for f in beats] == sorted(f.fields["uptime_min"] for f in beats)
    hellos = [e for e in ctl.events() if e.get("ev") == "hello"]
    assert [e["cause"] for e in hellos[-5:]] == [DEEPSLEEP_RESET] * 5
    wakes = [e for e in ctl.events() if e.get("ev") == "wake" and e.get("mode") == "deep"]
    assert {e["reason"] for e in wakes} == {TIMER_WAKE}
    # heartbeats every 0.5 to 1.5 x 30 min of the board's own clock, though minutes passed here
    assert ctl.vnow() - start >= 10 * 0.5 * 1800
    # uptime: the RTC kept running in deep sleep, the ticks restarted at every wake
    assert beats[-1].fields["uptime_min"] - beats[0].fields["uptime_min"] >= 9 * 0.5 * 30


def test_counters_never_repeat_across_deep_sleeps_and_a_power_loss_between_them(wearable):
    board = wearable(warp=True, heartbeat_s=1800, deep_sleep_after_s=0)
    ctl = board.control
    new_frames(board, 0, 2, kind="heartbeat", timeout=120)
    deep_sleep(board, ctl.mark())
    mark = ctl.mark()
    board.power_cycle()  # the battery out and back in during the deep sleep: RTC memory is gone
    printed(board, "wearable: ready", mark)
    assert ctl.wait_for(since=mark, ev="hello")["cause"] == 1
    new_frames(board, mark, 2, kind="heartbeat", timeout=120)
    mark = ctl.mark()
    board.reset()  # a hard reset keeps RTC memory, but only a deep-sleep wake may use it
    printed(board, "wearable: ready", mark)
    new_frames(board, mark, 2, kind="heartbeat", timeout=120)
    counters = transmissions(advertised(board))
    assert counters == sorted(set(counters)) and len(counters) >= 6  # increasing: none used twice


def test_a_time_warped_day_completes_with_its_heartbeats_and_an_sos(wearable):
    board = wearable(warp=True, sos_timeout_s=4, resend_every_s=2)
    ctl = board.control
    start = ctl.vnow()
    sos_at = start + 9 * HOUR
    ctl.at(sos_at, lambda: ctl.set_pin(BUTTON, 0))
    ctl.at(sos_at + 1.3, lambda: ctl.set_pin(BUTTON, 1))
    ctl.at(start + 24 * HOUR, lambda: None)  # the day's end: no sleep is warped past it
    ctl.wait_for(lambda e: e["vt"] >= start + 24 * HOUR, timeout=90)
    sent = advertised(board)
    kinds = [f.kind for f in sent]
    assert "sos" in kinds
    assert 2 <= kinds.count("heartbeat") <= 8  # 6 h on average, 3 to 9 h each
    sos = next(e for e in ctl.events() if e.get("ev") == "adv" and e["data"] and
               frames.unpack(on_air(e), KEYS).kind == "sos")
    assert sos_at + 1.0 <= sos["vt"] <= sos_at + 3.0  # a long press: the SOS when it is held 1 s
    counters = transmissions(sent)
    assert counters == sorted(set(counters))
    assert [e for e in ctl.events() if e.get("ev") == "sleep" and e.get("mode") == "deep"]

"""The virtual board's deep sleep and time warp, with a tiny main.py: as strict as an ESP32 /
ESP32-C3 running MicroPython (ports/esp32/modmachine.c, modesp32.c): RAM is lost, RTC memory
is kept (but not through a power loss), the RTC keeps running, the ticks restart at every
boot and wrap at 2**30, the wake reason says timer or pin, and what a chip cannot do raises."""

import json

import pytest

from ansim_simulators.hardware.virtual_board import VirtualBoard

HOUR_MS = 3600 * 1000
DEEPSLEEP_RESET, PWRON_RESET, HARD_RESET = 4, 1, 2
TIMER_WAKE, EXT0_WAKE, GPIO_WAKE = 4, 2, 7

MAIN = """
import esp32, json, machine, time
rtc = machine.RTC()
kept = rtc.memory()
ram = globals().get("ram", "lost")
print("BOOT " + json.dumps([machine.reset_cause(), machine.wake_reason(), list(machine.wake_pins()),
                            kept.decode(), ram, time.ticks_ms(), time.time()]))
ram = "kept"
rtc.memory(b"boot at %d" % time.time())
button = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)
if hasattr(esp32, "wake_on_ext0"):
    esp32.wake_on_ext0(button, esp32.WAKEUP_ALL_LOW)
else:
    esp32.wake_on_gpio((button,), esp32.WAKEUP_ALL_LOW)
if kept:
    machine.deepsleep()  # until the button
machine.deepsleep(2 * 3600 * 1000)
"""


def boots(board, since=0):
    return [json.loads(e["text"].split("BOOT ", 1)[1]) for e in board.control.events(since)
            if e.get("ev") == "print" and e.get("text", "").startswith("BOOT ")]


def wait_boots(board, n, since=0, timeout=20):
    board.control.wait_for(lambda e: len(boots(board, since)) >= n, timeout=timeout, since=since)
    return boots(board, since)


@pytest.fixture
def board(tmp_path):
    made = []

    def start(main=MAIN, **kw):
        (tmp_path / "flash").mkdir(exist_ok=True)
        (tmp_path / "flash" / "main.py").write_text(main)
        b = VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm", **kw).start()
        made.append(b)
        return b

    yield start
    for b in made:
        b.stop()


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_deep_sleep_resets_keeps_rtc_memory_and_the_clock_and_wakes_on_timer_or_pin(board, chip):
    b = board(warp=True, chip=chip)
    ctl = b.control
    first, timer = wait_boots(b, 2)
    assert first[:5] == [PWRON_RESET, 0, [], "", "lost"]
    assert timer[:3] == [DEEPSLEEP_RESET, TIMER_WAKE, []]
    assert timer[3] == "boot at %d" % first[6] and timer[4] == "lost"  # RTC memory kept, RAM not
    assert 7200 <= timer[6] - first[6] <= 7201  # the RTC ran through two hours, warped
    assert timer[5] < 1000  # the ticks restarted at the boot
    mark = ctl.mark()
    ctl.at(ctl.vnow() + 1800, lambda: ctl.set_pin(0, 0))  # half an hour into the next sleep
    ctl.at(ctl.vnow() + 1800.05, lambda: ctl.set_pin(0, 1))  # over before main.py runs
    (pressed,) = wait_boots(b, 1, since=mark)
    assert pressed[:3] == [DEEPSLEEP_RESET, EXT0_WAKE if chip == "esp32" else GPIO_WAKE,
                           [] if chip == "esp32" else [0]]
    assert 1799 <= pressed[6] - timer[6] <= 1801
    asleep = ctl.wait_for(lambda e: e.get("mode") == "deep", since=mark, ev="sleep")
    assert asleep["wake"]["kind"] == ("ext0" if chip == "esp32" else "gpio")


def test_rtc_memory_survives_a_hard_reset_but_not_a_power_loss(board):
    b = board(warp=True)
    wait_boots(b, 2)
    b.control.wait_for(lambda e: e.get("mode") == "deep" and e.get("ms") is None, ev="sleep")  # the button's
    mark = b.control.mark()
    b.reset()  # the reset button, in deep sleep
    (after_reset,) = wait_boots(b, 1, since=mark)
    assert after_reset[0] == HARD_RESET and after_reset[3].startswith("boot at ")
    mark = b.control.mark()
    b.power_cycle()
    (after_loss,) = wait_boots(b, 1, since=mark)
    assert after_loss[0] == PWRON_RESET and after_loss[3] == ""


def test_without_warp_a_press_wakes_a_deep_sleep_in_real_time(board):
    b = board()
    ctl = b.control
    wait_boots(b, 1)
    asleep = ctl.wait_for(lambda e: e.get("mode") == "deep", ev="sleep")
    mark = ctl.mark()
    ctl.press(0, 30)
    woke = ctl.wait_for(since=mark, ev="wake", mode="deep", timeout=5)
    assert woke["reason"] == EXT0_WAKE and woke["t"] - asleep["t"] < 5
    assert wait_boots(b, 1, since=mark)[0][:2] == [DEEPSLEEP_RESET, EXT0_WAKE]


def test_what_a_chip_cannot_do_raises(board):
    b = board(main="""
import esp32, machine
print("EXT0 %s" % hasattr(esp32, "wake_on_ext0"))
esp32.wake_on_gpio((machine.Pin(0),), esp32.WAKEUP_ALL_LOW)
try:
    machine.deepsleep(1000)
except ValueError as e:
    print("REFUSED %s" % e)
esp32.wake_on_gpio((machine.Pin(8),), esp32.WAKEUP_ALL_LOW)
try:
    machine.deepsleep(1000)
except ValueError as e:
    print("REFUSED %s" % e)
try:
    machine.RTC().memory(bytes(2049))
except ValueError as e:
    print("REFUSED %s" % e)
print("DONE")
""", chip="esp32")
    done = b.control.wait_for(lambda e: "DONE" in e.get("text", ""), ev="print")
    text = "".join(e.get("text", "") for e in b.control.events() if e.get("ev") == "print" and e["t"] <= done["t"])
    assert "EXT0 True" in text
    assert text.count("REFUSED DEEPSLEEP with gpio pins not supported on this chip") == 2  # an ESP32 cannot
    assert "REFUSED buffer too long" in text


def test_on_a_c3_only_gpio0_to_5_wake_a_deep_sleep_and_ext0_is_not_there(board):
    b = board(main="""
import esp32, machine
print("EXT0 %s" % hasattr(esp32, "wake_on_ext0"))
esp32.wake_on_gpio((machine.Pin(8),), esp32.WAKEUP_ALL_LOW)
try:
    machine.deepsleep(1000)
except ValueError as e:
    print("REFUSED %s" % e)
print("DONE")
""", chip="esp32c3")
    b.control.wait_for(lambda e: "DONE" in e.get("text", ""), ev="print")
    text = "".join(e.get("text", "") for e in b.control.events() if e.get("ev") == "print")
    assert "EXT0 False" in text and "REFUSED wake-up pin not supported" in text


def test_warped_ticks_wrap_as_an_esp32s_do(board):
    b = board(main="""
import machine, time
a = time.ticks_ms()
machine.lightsleep(120000)
b = time.ticks_ms()
print("TICKS %d %d %d %d" % (a, b, time.ticks_diff(b, a), time.ticks_add(a, 120000)))
""", warp=True, ticks_start=(1 << 30) - 60000)
    e = b.control.wait_for(lambda e: e.get("text", "").startswith("TICKS"), ev="print", timeout=10)
    a, after, diff, added = (int(x) for x in e["text"].split()[1:])
    assert after < a  # wrapped
    assert 120000 <= diff < 120500 and added == (a + 120000) % (1 << 30)

"""The device clock: the virtual board counts time as an ESP32 does (from 2000, localtime =
gmtime, RTC kept through resets and lost with power), ``ansim_device.clock`` gives Unix time on
it, and the agent's core builds the ``time`` frames it sends to fixed devices coming online."""

import ast
import calendar
import textwrap
import time

from ansim_protocol import frames
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

EPOCH_2000 = 946684800
WAIT_S = 10

# main.py for these tests: reports the clock at boot, then runs each line that arrives on UART 1
# (the test's hands on the board between resets, without mpremote).
HARNESS = """
import machine, time
from ansim_device import clock
print("boot cause %d unix %d set %d" % (machine.reset_cause(), clock.unix_time(), clock.is_set()))
uart = machine.UART(1)
while True:
    line = uart.readline()
    if line:
        exec(line.decode())
    time.sleep_ms(10)
"""


def start_board(tmp_path, clock):
    copy_to_directory(firmware_files("streetlight"), tmp_path / "flash")
    (tmp_path / "flash" / "main.py").write_text(textwrap.dedent(HARNESS))
    return VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm", clock=clock)


def printed(board, prefix, since):
    return board.control.wait_for(lambda e: e.get("text", "").startswith(prefix), timeout=WAIT_S, since=since,
                                  ev="print")["text"]


def run(board, line, prefix):
    """Run one line on the board; the text of the first print starting with ``prefix``."""
    mark = board.control.mark()
    board.control.uart(1, line.encode() + b"\n")
    return printed(board, prefix, mark)


def boot(board, since):
    """(reset cause, Unix time, clock set) that the next boot reported."""
    words = printed(board, "boot cause", since).split()
    return int(words[2]), int(words[4]), words[6] == "1"


def test_the_board_clock_counts_from_2000_like_an_esp32(tmp_path):
    with start_board(tmp_path, "host") as board:
        cause, unix, is_set = boot(board, 0)
        assert is_set and abs(unix - time.time()) < 3
        text = run(board, "print('epoch', time.gmtime(0)[0], time.time() + %d, time.localtime() == time.gmtime(), "
                          "len(time.gmtime()), time.time_ns() // 10**9 - time.time())" % EPOCH_2000, "epoch")
        _, year, board_unix, local_is_gm, fields, ns_lag = text.split()
        assert year == "2000" and abs(int(board_unix) - time.time()) < 3
        assert local_is_gm == "True" and fields == "8" and int(ns_lag) in (0, 1)

        # gmtime and mktime against CPython's calendar, over leap days, 2038 and a rollover.
        secs = [0, 59, 86399, 5097600, 1234567890, 2 ** 31 + 12345, 3155760000]
        text = run(board, "print('gm', repr(([time.gmtime(s) for s in %r], [time.mktime(time.gmtime(s)) for s in %r], "
                          "time.mktime((2024, 14, 31, 25, 0, 0, 0, 0)))))" % (secs, secs), "gm")
        gm, back, rolled = ast.literal_eval(text[3:])
        for s, t in zip(secs, gm):
            host = time.gmtime(s + EPOCH_2000)
            assert t == (host.tm_year, host.tm_mon, host.tm_mday, host.tm_hour, host.tm_min, host.tm_sec,
                         host.tm_wday, host.tm_yday)
        assert back == secs
        assert rolled == calendar.timegm((2025, 3, 4, 1, 0, 0)) - EPOCH_2000  # Feb 2025 has 28 days

        # The RTC sets the clock; its datetime reads back with weekday and microseconds.
        text = run(board, "machine.RTC().datetime((2030, 2, 28, 3, 23, 59, 30, 0)); "
                          "print('rtc', clock.unix_time(), machine.RTC().datetime())", "rtc")
        unix, dt = text.split(" ", 2)[1:]
        assert abs(int(unix) - calendar.timegm((2030, 2, 28, 23, 59, 30))) <= 2
        assert ast.literal_eval(dt)[:5] == (2030, 2, 28, 3, 23)


def test_the_rtc_survives_resets_but_not_power_loss(tmp_path):
    with start_board(tmp_path, None) as board:
        cause, unix, is_set = boot(board, 0)
        assert cause == 1 and not is_set and 0 <= unix - EPOCH_2000 < 10  # 2000-01-01 at power-on

        target = int(time.time()) + 3600  # an hour ahead of the host: clearly the board's own
        set_at = time.time()
        text = run(board, "clock.set_unix_time(%d); print('now', clock.unix_time(), clock.is_set())" % target, "now")
        assert abs(int(text.split()[1]) - target) <= 1 and text.split()[2] == "True"

        def expected():
            return target + (time.time() - set_at)

        mark = board.control.mark()
        board.control.uart(1, b"machine.soft_reset()\n")
        _, unix, is_set = boot(board, mark)
        assert is_set and abs(unix - expected()) <= 2

        for how, cause in (("machine.reset()", 2), ("machine.WDT(timeout=100)", 3), ("board.reset()", 2)):
            mark = board.control.mark()
            if how == "board.reset()":
                board.reset()
            else:
                board.control.uart(1, how.encode() + b"\n")
            assert boot(board, mark)[0] == cause, how
            _, unix, is_set = boot(board, mark)
            assert is_set and abs(unix - expected()) <= 2, how

        mark = board.control.mark()
        board.power_cycle()
        cause, unix, is_set = boot(board, mark)
        assert cause == 1 and not is_set and 0 <= unix - EPOCH_2000 < 10


def test_a_board_clock_can_start_at_a_given_time(tmp_path):
    with start_board(tmp_path, time.time() - 86400) as board:  # a day behind
        _, unix, is_set = boot(board, 0)
        assert is_set and abs(unix - (time.time() - 86400)) < 3


def test_the_core_sends_the_time_to_fixed_devices_only(tmp_path):
    from ansim_agent import config as config_module
    from ansim_agent import registry as registry_module
    from ansim_agent.core import Core
    from ansim_agent.store import Store

    street = Street(tmp_path / "street", center_port=1)
    cfg = config_module.load(street.config_path)
    store = Store(cfg.agent["data_dir"] / "agent.db")
    try:
        core = Core(cfg, registry_module.load(cfg.agent["registry"], cfg.supervision), store, lambda: 1.8e9)
        for device in (street.lights[0], street.bells[0]):
            (down,) = core.time_frame(device.device_id, 1_800_000_000.5)
            frame = frames.unpack(down.frame, DeviceKeys(device.key))
            assert (down.device_id, down.kind, down.via) == (device.device_id, "time", "mqtt")
            assert frame.downlink and frame.fields == {"unix_time": 1_800_000_000}
            assert frame.counter == 1  # from the device's one downlink counter
            (again,) = core.time_frame(device.device_id, 1_800_000_001)
            assert frames.unpack(again.frame, DeviceKeys(device.key)).counter == 2
        assert core.time_frame(street.wearables[0].device_id, 1.8e9) == []  # not over MQTT
        assert core.time_frame(0x7FFFFFFF, 1.8e9) == []  # unknown
    finally:
        store.close()


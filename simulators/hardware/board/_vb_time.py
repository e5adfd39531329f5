"""``time`` as firmware sees it: an ESP32's clock, and every sleep serves the control socket.

Without the second part, a main.py sleeping in a loop would never see a button press.

The clock is the ESP32 port's: ``time()``, ``time_ns()``, ``gmtime(secs)``, ``localtime(secs)``
and ``mktime()`` count from 2000-01-01 00:00:00 (``gmtime(0)[0] == 2000``), ``localtime`` is
``gmtime`` (a board has no time zone: it holds whatever its RTC was set to), tuples have 8
fields. The RTC reads the host's clock plus an offset: the host passes the offset at every VM
start (0: the host's clock; after power loss possibly an RTC back at 2000-01-01), and
``machine.RTC().datetime(...)`` moves it and reports ``{"ev": "rtc", "offset": s, "unix": t}``
so that the host keeps it across resets, as the RTC of an ESP32 keeps running through them.

Time warp (the host's ``VirtualBoard(warp=True)``): a day of a board that mostly sleeps cannot
run in real time. Awake, the clocks run at real speed; asleep (``machine.lightsleep``), the host
answers the board's {"ev": "sleep", "n"} with {"cmd": "warp", "n", "ms"}: every clock (ticks,
``time()``, the RTC, soft timers) jumps ``ms`` ahead at once, as far as the sleep's timer or the
host's next scheduled input; a deep sleep is warped by the host alone (the VM is gone then).
In warp mode the ticks are an ESP32's: they count from ``ticks_start`` (0) at every boot,
including a deep-sleep wake, and wrap at 2**30 (``ticks_add``/``ticks_diff`` follow), so firmware
that keeps ticks across a deep sleep or forgets the wrap fails here as on a board. The unix
VM's C asyncio queue reads the VM's own ticks: warp is for firmware without asyncio.
"""

import time as _real
from time import *  # noqa: F401,F403 (ticks_ms, ticks_diff, ...)

import _vb_ctl as _ctl

EPOCH_2000 = 946684800  # Unix time of 2000-01-01 00:00:00 UTC
_offset = 0.0  # board Unix time - host Unix time, seconds


PERIOD = 1 << 30  # an ESP32's ticks period (MICROPY_PY_TIME_TICKS_PERIOD on a 32-bit port)
_HALF, _MASK = PERIOD >> 1, PERIOD - 1
_warp = False
_base = [0, 0]  # warp mode: (ms clock, us clock) at boot, less ticks_start


def _setup(offset, warp=False, ticks_start=0):
    global _offset, _warp
    _offset = float(offset or 0)
    _warp = bool(warp)
    if _warp:
        _base[0] = _ctl.ms() - int(ticks_start)
        _base[1] = _real.ticks_us() - int(ticks_start) * 1000
        g = globals()
        for name in ("ticks_ms", "ticks_us", "ticks_cpu", "ticks_add", "ticks_diff"):
            g[name] = g["_w_" + name]


def _w_ticks_ms():
    return (_ctl.ms() - _base[0]) & _MASK


def _w_ticks_us():
    return (_real.ticks_us() + _ctl.warp_ms * 1000 - _base[1]) & _MASK


_w_ticks_cpu = _w_ticks_us


def _w_ticks_add(ticks, delta):
    return (ticks + delta) & _MASK


def _w_ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


def _advance(ms):
    """Move every clock ``ms`` ahead (a warped sleep)."""
    global _offset
    _ctl.warp_ms += int(ms)
    _offset += int(ms) / 1000


def _on_warp(msg):
    if _warp and msg.get("n") is not None and msg.get("n") == _ctl.sleeping:
        _advance(max(0, int(msg["ms"])))


_ctl.handlers["warp"] = _on_warp


def _unix():
    """The board's clock in (float) Unix seconds."""
    return _real.time() + _offset


def _set_rtc(secs):
    """Set the clock to ``secs`` since 2000 (float); tell the host, which keeps it across resets."""
    global _offset
    _offset = secs + EPOCH_2000 - _real.time()
    _ctl.send({"ev": "rtc", "offset": _offset, "unix": int(secs) + EPOCH_2000})


def time():
    return int(_unix()) - EPOCH_2000


def time_ns():
    return _real.time_ns() + int(_offset * 1000000000) - EPOCH_2000 * 1000000000


def gmtime(secs=None):
    if secs is None:
        secs = time()
    return _real.gmtime(int(secs) + EPOCH_2000)[:8]


localtime = gmtime


def _days(y, m, d):
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def mktime(t):
    """Seconds since 2000 of (year, month, mday, hour, minute, second, ...), no time zone;
    fields out of range roll over as on the board."""
    y, m = t[0] + (t[1] - 1) // 12, (t[1] - 1) % 12 + 1
    return (_days(y, m, 1) + t[2] - 1) * 86400 + t[3] * 3600 + t[4] * 60 + t[5] - EPOCH_2000


def sleep_ms(ms):
    _ctl.wait(ms)


def sleep(seconds):
    _ctl.wait(int(seconds * 1000))


def sleep_us(us):
    us = int(us)
    if us >= 1000:
        _ctl.wait(us // 1000)
        us %= 1000
    else:
        _ctl.service(0)
    _real.sleep_us(us)

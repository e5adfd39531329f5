"""Wall-clock time for the devices, in Unix seconds (UTC) as the protocol counts it.

MicroPython on an ESP32 counts ``time.time()`` from 2000-01-01, the unix port from 1970;
epochs, expiries and ``time`` frames are Unix time (SPEC.md 3.2, 4). A board's RTC starts
at its epoch after power loss, so a clock before ``CLOCK_SET_AFTER`` was never set: a device
then cannot judge expiry and must say so rather than trust it.
"""

import time

import machine

UNIX_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
CLOCK_SET_AFTER = 1700000000  # Nov 2023


def unix_time():
    return time.time() + UNIX_OFFSET


def is_set():
    return unix_time() > CLOCK_SET_AFTER


def set_unix_time(unix):
    """Set the RTC (UTC) from a Unix time, e.g. from an authenticated ``time`` frame."""
    t = time.gmtime(int(unix) - UNIX_OFFSET)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))

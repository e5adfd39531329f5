"""``time`` as firmware sees it: the VM's clock, but every sleep serves the control socket.

Without this, a main.py sleeping in a loop would never see a button press.
"""

import time as _real
from time import *  # noqa: F401,F403 (ticks_ms, time, localtime, ...)

import _vb_ctl as _ctl


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

"""``esp32`` for the virtual board: the wake sources of machine.lightsleep and machine.deepsleep
(ports/esp32/modesp32.c).

``wake_on_ext0(pin, level)``: light sleep ends while ``pin`` is at ``level``
(``WAKEUP_ALL_LOW``/``WAKEUP_ANY_HIGH``); ``pin=None`` disables it. ``wake_on_ext1(pins,
level)``: all of ``pins`` low, or any high. Only RTC GPIOs can wake an ESP32 (ValueError
"invalid pin" otherwise), and ext0 excludes touch wake ("no resources"), as on the chip.
``wake_on_gpio(pins, level)`` (MicroPython 1.27 on): any of ``pins`` at ``level`` wakes it;
from deep sleep only on chips that can (an ESP32-C3: GPIO0-5, checked by machine.deepsleep
as the port does), from light sleep on any; ext0 and ext1 wake both. The board's ``chip``
("esp32" or "esp32c3", from the host) decides what exists: an ESP32-C3 has no ext0, ext1,
touch or ULP.
"""

import _vb_machine as machine

WAKEUP_ALL_LOW, WAKEUP_ANY_HIGH = False, True
HEAP_DATA, HEAP_EXEC = 4, 1
_RTC_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)
_touch = [False]


def _rtc_pin(pin):
    pin_id = machine._pin_id(pin)
    if pin_id not in _RTC_PINS:
        raise ValueError("invalid pin")
    return pin_id


def wake_on_ext0(pin, level=WAKEUP_ALL_LOW):
    if _touch[0]:
        raise ValueError("no resources")
    machine._wake[0] = None if pin is None else (_rtc_pin(pin), 1 if level else 0)


def wake_on_ext1(pins, level=WAKEUP_ALL_LOW):
    machine._wake[1] = None if not pins else (tuple(_rtc_pin(p) for p in pins), bool(level))


def wake_on_touch(wake):
    if machine._wake[0] is not None:
        raise ValueError("no resources")
    _touch[0] = bool(wake)


def wake_on_ulp(wake):
    pass


def wake_on_gpio(pins=None, level=WAKEUP_ALL_LOW):
    machine._wake[3] = None if not pins else (tuple(machine._pin_id(p) for p in pins), 1 if level else 0)


def _setup(chip):
    if chip == "esp32c3":
        g = globals()
        for name in ("wake_on_ext0", "wake_on_ext1", "wake_on_touch", "wake_on_ulp", "raw_temperature"):
            g.pop(name, None)


def gpio_deep_sleep_hold(enable):
    pass


def raw_temperature():
    return 120  # about 49 degrees C, a warm idle chip

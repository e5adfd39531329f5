"""``bluetooth`` for the virtual board: an ESP32 running NimBLE, as a broadcaster and observer.

What the host sees (JSON lines on the control socket, see _vb_ctl; addresses are 12 hex digits
most significant byte first, as ``config('mac')`` gives them):

- ``{"ev": "adv", "interval_us", "data": hex, "resp": hex|None, "connectable", "addr",
  "addr_type"}`` when advertising starts or its data changes; ``{"ev": "adv", "interval_us":
  None, "data": None}`` when it stops;
- ``{"ev": "addr", "addr", "addr_type", "mode"}`` when ``config(addr_mode=...)`` sets an address;
- ``{"ev": "scan", "on": true, "duration_ms", "interval_us", "window_us", "active"}`` when
  ``gap_scan`` starts (duration 0: until stopped) and ``{"ev": "scan", "on": false}`` when the
  scan ends (duration over, ``gap_scan(None)``, ``active(False)``).

What the host sends: ``{"cmd": "scan_result", "addr_type", "addr": hex, "adv_type", "rssi",
"data": hex}``, an advertisement on the air. It reaches the irq handler as
``_IRQ_SCAN_RESULT`` only while a scan runs (passive scans drop scan responses, adv_type 4);
otherwise it is dropped, as a radio that is not listening hears nothing.

As on the ESP32 port (extmod/nimble/modbluetooth_nimble.c):

- the chip has a public address (the MAC base + 2), the address mode after ``active(True)``;
  ``config(addr_mode=1)`` makes a fresh random static address (top bits 11) at every call,
  ``config(addr_mode=3)`` a fresh non-resolvable private address (top bits 00); both then
  report ``config('mac') == (1, addr)``: the first item is the address *type* (0 public,
  1 random), not the mode. RPAs (mode 2) are not simulated (OSError EOPNOTSUPP);
- ``config`` and ``gap_*`` need ``active(True)`` (else OSError ENODEV); ``gap_scan`` while
  scanning raises EALREADY; the scan results' ``addr`` and ``adv_data`` are memoryviews into
  a buffer that is overwritten once the handler returns: copy them (``bytes(...)``) to keep
  them, as on a board;
- advertising and scanning run at the same time;
- changing the address while advertising or scanning: a controller refuses HCI LE Set Random
  Address then (Core spec Vol 4 Part E 7.8.4, "Command Disallowed"); NimBLE has no way to
  report it through ``config``. Here it raises OSError(16) (EBUSY), so firmware stops both
  first.

IRQ handlers run at the firmware's wait points (see _vb_ctl), like soft IRQs. While the board
is in light sleep the radio is off (see _vb_machine.lightsleep). GATT is accepted and does
nothing.
"""

import binascii
import os
import time

import _vb_ctl as ctl

FLAG_BROADCAST, FLAG_READ, FLAG_WRITE_NO_RESPONSE, FLAG_WRITE = 0x01, 0x02, 0x04, 0x08
FLAG_NOTIFY, FLAG_INDICATE = 0x10, 0x20

_IRQ_SCAN_RESULT, _IRQ_SCAN_DONE = 5, 6
ADDR_PUBLIC, ADDR_RANDOM = 0, 1
MODE_PUBLIC, MODE_RANDOM, MODE_RPA, MODE_NRPA = 0, 1, 2, 3
_ENODEV, _EINVAL, _EOPNOTSUPP, _EALREADY, _EBUSY = 19, 22, 95, 114, 16
_SCAN_RSP = 4
_ADV_UNIT_US = 625
_ADV_MIN_US, _ADV_DEFAULT_US = 20000, 100000  # NimBLE: BLE_HCI_ADV_ITVL_MIN; non-connectable default

_state = {"active": False, "adv": None, "resp": None, "advertising": False, "irq": None,
          "public": b"\x24\x0a\xc4\x00\x00\x02", "addr": None, "addr_type": ADDR_PUBLIC,
          "scan": None,  # None, or [end ticks or None, active scan]
          "cfg": {"gap_name": b"MPY ESP32", "mtu": 23}}
_buf = bytearray(6 + 31)  # the "ringbuffer" the scan results' memoryviews point into


def _setup(mac):
    _state["public"] = mac


def _soft_reset():
    _state["irq"] = None  # a soft reset forgets the handler before the stack stops
    if _state["active"]:
        BLE().active(False)


def _hex(b):
    return None if b is None else binascii.hexlify(bytes(b)).decode()


def _address():
    return _state["addr"] if _state["addr_type"] == ADDR_RANDOM else _state["public"]


def _random_address(top_bits):
    addr = bytearray(os.urandom(6))
    addr[0] = (addr[0] & 0x3F) | top_bits
    return bytes(addr)


def _irq(event, data):
    handler = _state["irq"]
    if handler is not None:
        handler(event, data)


def _scan_done():
    _state["scan"] = None
    ctl.send({"ev": "scan", "on": False})
    _irq(_IRQ_SCAN_DONE, ())


def _tick():
    """Ends a scan whose duration is over; ms until it is due."""
    scan = _state["scan"]
    if scan is None or scan[0] is None:
        return None
    left = time.ticks_diff(scan[0], time.ticks_ms())
    if left > 0:
        return left
    _scan_done()
    return None


def _on_scan_result(msg):
    scan = _state["scan"]
    if scan is None or not _state["active"]:
        return  # not listening
    adv_type = int(msg.get("adv_type", 3))
    if adv_type == _SCAN_RSP and not scan[1]:
        return
    addr = binascii.unhexlify(msg["addr"])
    data = binascii.unhexlify(msg.get("data") or "")
    if len(addr) != 6 or len(data) > 31:
        return
    _buf[:6] = addr
    _buf[6:6 + len(data)] = data
    view = memoryview(_buf)
    try:
        _irq(_IRQ_SCAN_RESULT, (int(msg.get("addr_type", ADDR_RANDOM)), view[:6], adv_type,
                                int(msg.get("rssi", -60)), view[6:6 + len(data)]))
    finally:
        for i in range(len(_buf)):  # what a handler kept is gone, as on a board
            _buf[i] = 0


ctl.handlers["scan_result"] = _on_scan_result
ctl.ticks.append(_tick)


class UUID:
    def __init__(self, value):
        self._v = value._v if isinstance(value, UUID) else value

    def __eq__(self, other):
        return isinstance(other, UUID) and other._v == self._v

    def __hash__(self):
        return hash(self._v)

    def __repr__(self):
        return "UUID(%r)" % (self._v,)


class BLE:
    def active(self, v=None):
        if v is None:
            return _state["active"]
        if v and not _state["active"]:
            _state["addr_type"], _state["addr"] = ADDR_PUBLIC, None  # NimBLE's sync: public again
            _state["active"] = True
        elif not v and _state["active"]:
            if _state["advertising"]:
                self.gap_advertise(None)
            if _state["scan"] is not None:
                _scan_done()
            _state["active"] = False
        return _state["active"]

    def config(self, *names, **kw):
        if names:
            if kw or len(names) != 1:
                raise TypeError("can't specify pos and kw args")
            name = names[0]
            if name == "mac":
                if not _state["active"]:
                    raise OSError(_ENODEV)
                return (_state["addr_type"], _address())
            if name not in _state["cfg"]:
                raise ValueError("unknown config param")
            return _state["cfg"][name]
        for name, value in kw.items():
            if name == "addr_mode":
                self._addr_mode(int(value))
            elif name == "gap_name":
                _state["cfg"]["gap_name"] = bytes(value) if not isinstance(value, str) else value.encode()
            elif name == "mtu":
                _state["cfg"]["mtu"] = int(value)
            else:
                raise ValueError("unknown config param")

    def _addr_mode(self, mode):
        if not _state["active"]:
            raise OSError(_ENODEV)
        if mode == MODE_RPA:
            raise OSError(_EOPNOTSUPP)  # not simulated
        if mode not in (MODE_PUBLIC, MODE_RANDOM, MODE_NRPA):
            raise OSError(_EINVAL)
        if mode != MODE_PUBLIC and (_state["advertising"] or _state["scan"] is not None):
            raise OSError(_EBUSY)  # LE Set Random Address: Command Disallowed
        if mode == MODE_PUBLIC:
            _state["addr_type"] = ADDR_PUBLIC
        else:
            _state["addr"] = _random_address(0xC0 if mode == MODE_RANDOM else 0x00)
            _state["addr_type"] = ADDR_RANDOM
        ctl.send({"ev": "addr", "addr": _hex(_address()), "addr_type": _state["addr_type"], "mode": mode})

    def irq(self, handler):
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")
        _state["irq"] = handler

    def gap_advertise(self, interval_us=500000, adv_data=None, *, resp_data=None, connectable=True):
        if interval_us is None:
            if _state["advertising"]:
                _state["advertising"] = False
                ctl.send({"ev": "adv", "interval_us": None, "data": None})
            return
        if not _state["active"]:
            raise OSError(_ENODEV)
        units = int(interval_us) // _ADV_UNIT_US
        if units == 0:
            interval_us = _ADV_DEFAULT_US
        elif units * _ADV_UNIT_US < _ADV_MIN_US:
            raise OSError(_EINVAL)
        else:
            interval_us = units * _ADV_UNIT_US  # rounded down to 0.625 ms, as the controller does
        if adv_data is not None:
            adv_data = bytes(adv_data)
        if resp_data is not None:
            resp_data = bytes(resp_data)
        if (adv_data is not None and len(adv_data) > 31) or (resp_data is not None and len(resp_data) > 31):
            raise OSError(_EINVAL)  # a legacy advertisement holds at most 31 bytes
        if adv_data is not None:
            _state["adv"] = adv_data  # None: the previous data again
        if resp_data is not None:
            _state["resp"] = resp_data
        _state["advertising"] = True
        ctl.send({"ev": "adv", "interval_us": interval_us, "data": _hex(_state["adv"] or b""),
                  "resp": _hex(_state["resp"]), "connectable": bool(connectable),
                  "addr": _hex(_address()), "addr_type": _state["addr_type"]})

    def gap_scan(self, *args):
        """``gap_scan(duration_ms, interval_us=1280000, window_us=11250, active=False, /)``."""
        if not 1 <= len(args) <= 4:
            raise TypeError("function takes 1 to 4 positional arguments")
        if args[0] is None:
            if not _state["active"]:
                raise OSError(_ENODEV)
            if _state["scan"] is not None:
                _scan_done()
            return
        duration_ms = int(args[0])
        interval_us = int(args[1]) if len(args) > 1 else 1280000
        window_us = int(args[2]) if len(args) > 2 else 11250
        active = bool(args[3]) if len(args) > 3 else False
        if not _state["active"]:
            raise OSError(_ENODEV)
        if _state["scan"] is not None:
            raise OSError(_EALREADY)
        if window_us > interval_us:
            raise OSError(_EINVAL)
        end = None if duration_ms <= 0 else time.ticks_add(time.ticks_ms(), duration_ms)
        _state["scan"] = [end, active]
        ctl.send({"ev": "scan", "on": True, "duration_ms": max(0, duration_ms), "interval_us": interval_us,
                  "window_us": window_us, "active": active})

    def gatts_register_services(self, services):
        n = [0]

        def handle():
            n[0] += 1
            return n[0]
        return tuple(tuple(handle() for _ in s[1]) for s in services)

    def gatts_read(self, handle):
        return b""

    def gatts_write(self, handle, data, send_update=False):
        pass

    def gatts_notify(self, conn_handle, value_handle, data=None):
        pass

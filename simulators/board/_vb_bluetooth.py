"""``bluetooth`` for the virtual board: enough for a beacon.

``gap_advertise`` reports each advertisement to the host as
``{"ev": "adv", "interval_us", "data": hex, "resp": hex|None, "connectable"}`` (``data`` None
when advertising stops): the hook where a virtual radio (bumble) can pick it up. Scanning
and GATT are accepted and do nothing.
"""

import binascii

import _vb_ctl as ctl

FLAG_BROADCAST, FLAG_READ, FLAG_WRITE_NO_RESPONSE, FLAG_WRITE = 0x01, 0x02, 0x04, 0x08
FLAG_NOTIFY, FLAG_INDICATE = 0x10, 0x20

_state = {"active": False, "adv": None, "irq": None, "mac": b"\x24\x0a\xc4\x00\x00\x02",
          "cfg": {"addr_mode": 0, "gap_name": b"MPY ESP32", "mtu": 23, "rxbuf": 256}}


def _setup(mac):
    _state["mac"] = mac


def _soft_reset():
    if _state["active"]:
        BLE().active(False)
    _state["irq"] = None


def _hex(b):
    return None if b is None else binascii.hexlify(bytes(b)).decode()


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
        if not v and _state["adv"] is not None:
            self.gap_advertise(None)
        _state["active"] = bool(v)

    def config(self, *names, **kw):
        if names:
            name = names[0]
            if name == "mac":
                return (_state["cfg"]["addr_mode"], _state["mac"])
            if name not in _state["cfg"]:
                raise ValueError("unknown config param")
            return _state["cfg"][name]
        _state["cfg"].update(kw)

    def irq(self, handler):
        _state["irq"] = handler

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        if not _state["active"]:
            raise OSError(1)  # EPERM: as on a board whose radio is off
        if interval_us is None:
            _state["adv"] = None
            ctl.send({"ev": "adv", "interval_us": None, "data": None})
            return
        if adv_data is None:
            adv_data = _state["adv"] or b""
        if len(adv_data) > 31 or (resp_data is not None and len(resp_data) > 31):
            raise OSError(22)  # EINVAL: a legacy advertisement holds at most 31 bytes
        _state["adv"] = bytes(adv_data)
        ctl.send({"ev": "adv", "interval_us": int(interval_us), "data": _hex(adv_data),
                  "resp": _hex(resp_data), "connectable": bool(connectable)})

    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        pass

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

"""``network`` for the virtual board: WLAN connects at once; sockets are the host's own.

So firmware reaches a real broker on 127.0.0.1 through the unix port's socket module. The host
can take the link down with ``{"cmd": "wifi", "up": false}``: ``isconnected()`` turns False
(open sockets keep working: this models what firmware sees, not a radio).
"""

import _vb_ctl as ctl

STA_IF, AP_IF = 0, 1
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010
STAT_BEACON_TIMEOUT, STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD = 200, 201, 202
STAT_ASSOC_FAIL, STAT_HANDSHAKE_TIMEOUT = 203, 204
AUTH_OPEN, AUTH_WPA2_PSK = 0, 3

_link = {"up": True, "hostname": "ansim-vboard", "mac": b"\x24\x0a\xc4\x00\x00\x03"}
_ifs = {}
_IP = ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")


def _setup(mac):
    _link["mac"] = mac


def _on_wifi(msg):
    _link["up"] = bool(msg.get("up", True))


ctl.handlers["wifi"] = _on_wifi


def hostname(name=None):
    if name is None:
        return _link["hostname"]
    _link["hostname"] = name


def country(code=None):
    return "XX" if code is None else None


def ipconfig(*names, **kw):
    if names:
        return {"dns": _IP[3], "prefer": 4}.get(names[0])


class WLAN:
    IF_STA, IF_AP = STA_IF, AP_IF
    PM_NONE, PM_PERFORMANCE, PM_POWERSAVE = 0, 1, 2

    def __init__(self, interface_id=STA_IF):
        self._s = _ifs.setdefault(interface_id, {"active": False, "ssid": None, "conn": False})

    def active(self, v=None):
        if v is None:
            return self._s["active"]
        self._s["active"] = bool(v)
        if not v:
            self._s["conn"] = False

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._s["active"]:
            raise OSError("Wifi Not Started")
        self._s["ssid"], self._s["conn"] = ssid, True
        ctl.send({"ev": "wifi", "ssid": ssid, "connected": _link["up"]})

    def disconnect(self):
        self._s["conn"] = False

    def isconnected(self):
        ctl.service(0)
        return self._s["active"] and self._s["conn"] and _link["up"]

    def status(self, param=None):
        if param == "rssi":
            return -50
        if param is not None:
            raise ValueError("unknown status param")
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, config=None):
        return _IP

    def ipconfig(self, *names, **kw):
        if names:
            return {"addr4": _IP[:2], "gw4": _IP[2], "dhcp4": True}.get(names[0])

    def config(self, *names, **kw):
        if not names:
            return
        name = names[0]
        if name == "mac":
            return _link["mac"]
        if name in ("ssid", "essid"):
            return self._s["ssid"] or ""
        if name in ("hostname", "dhcp_hostname"):
            return _link["hostname"]
        return {"channel": 1, "txpower": 20, "pm": 0, "security": AUTH_WPA2_PSK}.get(name)

    def scan(self):
        return [(b"ansim-virtual", _link["mac"], 1, -50, AUTH_WPA2_PSK, False)]

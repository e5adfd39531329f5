"""``network`` for the virtual board: a station that joins the board's access point as the
ESP32 port's does, over the host's own sockets (see _vb_socket).

So firmware reaches a real broker on 127.0.0.1 through the unix port's socket module, but only
while it has a link:

- The access point is the host's (``{"cmd": "ap", "ssid", "password", "up", "join_ms"}`` on the
  control socket, replayed to every new VM: it outlives a board reset). None configured (no
  ``ssid``): any SSID and password join, as before access points existed here.
- ``connect()`` returns at once; a try takes ``join_ms`` (default 1000); until it ends
  ``isconnected()`` is False. A try fails with the ESP-IDF reason NO_AP_FOUND (201: the AP is
  down or has another SSID) or AUTH_FAIL (202: another password), and the driver tries again at
  once, forever (``config(reconnects=n)`` limits it), as the port's event handler does.
- ``status()`` follows ports/esp32/network_wlan.c: STAT_GOT_IP (1010) while joined; else the last
  failure's reason if it is 201 (STAT_NO_AP_FOUND) or 202 (STAT_WRONG_PASSWORD), sticky until
  the station gets an IP (also during the next ``connect()``); STAT_IDLE (1000) after
  ``disconnect()``; STAT_CONNECTING (1001) while a connect is asked for; STAT_IDLE before any.
- The AP going down (or changing its password) while joined drops the station at once (a real
  one notices after a beacon timeout of ~6 s; reason 200) and the driver retries.
- While the station is active and not joined there is no IP: new sockets fail and open ones
  fail on their next use (_vb_socket). A board whose firmware never activates the station is
  wired: its sockets are the host's, always up (boards and tests without WiFi).

Every change of ``status()`` is reported to the host as ``{"ev": "wifi", "status", "ssid"}``.
"""

import time

import _vb_ctl as ctl

STA_IF, AP_IF = 0, 1
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010
STAT_BEACON_TIMEOUT, STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD = 200, 201, 202
STAT_ASSOC_FAIL = STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
REASON_ASSOC_LEAVE = 8  # ESP-IDF's reason after esp_wifi_disconnect()
AUTH_OPEN, AUTH_WPA2_PSK = 0, 3

_link = {"hostname": "ansim-vboard", "mac": b"\x24\x0a\xc4\x00\x00\x03"}
# the host's access point; ssid None: any SSID and password join
_ap = {"ssid": None, "password": None, "up": True, "join_ms": 1000}
# the station, as network_wlan.c keeps it: active, connect requested, joined (got IP),
# last disconnect reason (0: none), when the current try ends (ticks_ms, None: no try),
# tries left (-1: forever), what connect() was given
_sta = {"active": False, "requested": False, "joined": False, "reason": 0, "try_end": None,
        "reconnects": -1, "left": -1, "ssid": None, "key": None, "reported": None, "used": False}
_net = {"gen": 0}  # +1 each time the station loses its IP: sockets of an older one are dead
_IP = ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")


def _setup(mac):
    _link["mac"] = mac


def link_up():
    """Whether sockets work: wired (station never activated) or joined."""
    return not _sta["used"] or _sta["joined"]


def generation():
    return _net["gen"]


def _drop(reason):
    if _sta["joined"]:
        _net["gen"] += 1
    _sta["joined"] = False
    _sta["reason"] = reason


def _start_try():
    _sta["try_end"] = time.ticks_add(time.ticks_ms(), max(0, int(_ap["join_ms"])))


def _verdict():
    """0 if a try now joins, else the ESP-IDF reason it fails with."""
    if not _ap["up"] or (_ap["ssid"] is not None and _ap["ssid"] != _sta["ssid"]):
        return STAT_NO_AP_FOUND
    if _ap["ssid"] is not None and (_ap["password"] or "") != (_sta["key"] or ""):
        return STAT_WRONG_PASSWORD
    return 0


def _update():
    """Ends a try that is due, retrying as the driver does; ms until the next is due."""
    end = _sta["try_end"]
    if end is not None and _sta["active"] and _sta["requested"]:
        left = time.ticks_diff(end, time.ticks_ms())
        if left > 0:
            _report()
            return left
        _sta["try_end"] = None
        reason = _verdict()
        if reason == 0:
            _sta["joined"], _sta["reason"] = True, 0
        else:
            _drop(reason)
            _retry()
    _report()
    if _sta["try_end"] is None:
        return None
    return max(0, time.ticks_diff(_sta["try_end"], time.ticks_ms()))


def _retry():
    """After a disconnect: try again, unless disconnect() was called or the tries are spent."""
    if not (_sta["active"] and _sta["requested"]):
        return
    if _sta["left"] == 0:
        _sta["requested"] = False
        return
    if _sta["left"] > 0:
        _sta["left"] -= 1
    _start_try()


def _status():
    if _sta["joined"]:
        return STAT_GOT_IP
    reason = _sta["reason"]
    if reason in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
        return reason
    if reason == REASON_ASSOC_LEAVE:
        return STAT_IDLE
    if _sta["requested"]:
        return STAT_CONNECTING
    return STAT_IDLE if reason == 0 else reason


def _report():
    if not _sta["used"]:
        return  # a wired board says nothing about WiFi
    status = _status()
    if status != _sta["reported"]:
        _sta["reported"] = status
        ctl.send({"ev": "wifi", "status": status, "ssid": _sta["ssid"]})


def _on_ap(msg):
    """The host changes its access point; a joined station whose AP went (or whose password
    changed) is dropped and retries."""
    for name in ("ssid", "password", "up", "join_ms"):
        if name in msg:
            _ap[name] = msg[name]
    _ap["up"] = bool(_ap["up"])
    if _sta["joined"] and _verdict() != 0:
        _drop(STAT_BEACON_TIMEOUT)
        _retry()
    _report()


def _on_wifi(msg):
    """The old command: ``{"cmd": "wifi", "up": bool}`` is the access point up or down."""
    _on_ap({"up": bool(msg.get("up", True))})


ctl.handlers["ap"] = _on_ap
ctl.handlers["wifi"] = _on_wifi
ctl.ticks.append(_update)


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
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id
        self._ap_active = False

    def active(self, v=None):
        if self._if == AP_IF:
            if v is not None:
                self._ap_active = bool(v)
            return self._ap_active
        if v is None:
            return _sta["active"]
        _sta["active"] = bool(v)
        if v:
            _sta["used"] = True
        else:
            _drop(_sta["reason"])
            _sta["requested"], _sta["try_end"] = False, None
            _report()
        return _sta["active"]

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._if != STA_IF:
            raise OSError("STA required")
        if not _sta["active"]:
            raise OSError("Wifi Not Started")
        if ssid is not None:
            _sta["ssid"], _sta["key"] = ssid, key
        if _sta["joined"]:
            _drop(REASON_ASSOC_LEAVE)  # esp_wifi_connect() on a joined station re-associates
        _sta["requested"] = True
        _sta["left"] = _sta["reconnects"]
        _start_try()
        _report()

    def disconnect(self):
        _sta["requested"], _sta["try_end"] = False, None
        _drop(REASON_ASSOC_LEAVE)
        _report()

    def isconnected(self):
        ctl.service(0)
        _update()
        if self._if == AP_IF:
            return False
        return _sta["joined"]

    def status(self, param=None):
        if param == "rssi":
            if not _sta["joined"]:
                raise OSError("Wifi Not Connected")
            return -50
        if param is not None:
            raise ValueError("unknown status param")
        if self._if != STA_IF:
            return None
        ctl.service(0)
        _update()
        return _status()

    def ifconfig(self, config=None):
        return _IP if _sta["joined"] or self._if == AP_IF else ("0.0.0.0",) * 4

    def ipconfig(self, *names, **kw):
        if names:
            addr = _IP[:2] if _sta["joined"] else ("0.0.0.0", "0.0.0.0")
            return {"addr4": addr, "gw4": _IP[2], "dhcp4": True}.get(names[0])

    def config(self, *names, **kw):
        if "reconnects" in kw:
            _sta["reconnects"] = int(kw["reconnects"])
        if not names:
            return
        name = names[0]
        if name == "mac":
            return _link["mac"]
        if name in ("ssid", "essid"):
            return _sta["ssid"] or ""
        if name in ("hostname", "dhcp_hostname"):
            return _link["hostname"]
        if name == "reconnects":
            return _sta["reconnects"]
        return {"channel": 1, "txpower": 20, "pm": 0, "security": AUTH_WPA2_PSK}.get(name)

    def scan(self):
        if not _sta["active"]:
            raise OSError("STA must be active")
        if not _ap["up"]:
            return []
        ssid = _ap["ssid"] if _ap["ssid"] is not None else "ansim-virtual"
        return [(ssid.encode(), _link["mac"], 1, -50, AUTH_WPA2_PSK, False)]

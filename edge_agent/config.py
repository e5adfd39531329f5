"""The agent's TOML configuration, validated at start.

A bad file is reported as one ``ConfigError`` that names the file, the key, the problem and
the fix, before anything starts: an engineer on call should not have to read a traceback.
The schema is data (``SCHEMA``), with a line of documentation per key.
"""

import difflib
import ipaddress
import os
import re
import ssl
import tomllib
import unicodedata
from pathlib import Path


class ConfigError(ValueError):
    pass


class Setting:
    def __init__(self, kind, default=None, required=False, low=None, high=None, choices=None, doc="",
                 name=None):
        self.kind, self.default, self.required = kind, default, required
        self.low, self.high, self.choices, self.doc = low, high, choices, doc
        self.name = name  # a NameRule: the string goes into MQTT client ids or topics


class NameRule:
    """What a string that ends up in an MQTT client id or topic may hold, and why.

    MQTT gives '/', '+' and '#' a meaning in topics, forbids NUL, and brokers need only accept
    client ids of letters and digits. Such a value did not fail at start: an agent id
    "edge+01" lost the center every 0.5 s, a district "jung gu/#" killed the uplink thread.
    So it is refused here, with the key and a fixed value to copy."""

    def __init__(self, why, max_len, client_id=False):
        self.why, self.max_len, self.client_id = why, max_len, client_id


CLIENT_ID_MAX = 64  # the agent keeps its MQTT client ids to [A-Za-z0-9._-], at most 64 characters
LOCAL_CLIENT_SUFFIX = "-local"  # the local broker's client id is [agent] id + this
SEGMENT_MAX = 64
_CLIENT_ID_CHARS = re.compile(r"[A-Za-z0-9._-]")
_AGENT_ID = NameRule("it is the agent's MQTT client id, '<id>%s' on the local broker, and a topic segment"
                     % LOCAL_CLIENT_SUFFIX, CLIENT_ID_MAX - len(LOCAL_CLIENT_SUFFIX), client_id=True)


_POSITION = "position"  # {lat, lon} table
_PATH = "path"

SCHEMA = {
    "agent": {
        "id": Setting(str, required=True, name=_AGENT_ID,
                      doc="this agent's name, unique in the city: MQTT client id and topic segment; letters, "
                          "digits, '.', '_', '-', at most %d characters" % _AGENT_ID.max_len),
        "site": Setting(str, default="site", doc="district or site name shown to the center",
                        name=NameRule("it names this agent to the center in every alert; kept to what a topic "
                                      "segment may hold", SEGMENT_MAX)),
        "position": Setting(_POSITION, required=True, doc="where the agent's radio is: { lat = .., lon = .. }"),
        "data_dir": Setting(_PATH, default="/var/lib/ansim", doc="SQLite store and state"),
        "registry": Setting(_PATH, required=True, doc="the device registry: devices, their key files, cameras, facilities"),
        "retention_days": Setting(int, default=30, low=1, high=3650, doc="delivered alerts are purged after this"),
        "dedup_window_s": Setting(int, default=600, low=10, high=86400, doc="same frame heard again within this is one event"),
        "cancel_window_s": Setting(int, default=5, low=1, high=60, doc="a cancel within this after an SOS cancels it"),
        "log_level": Setting(str, default="info", choices=("debug", "info", "warning", "error")),
    },
    "local_mqtt": {
        "enabled": Setting(bool, default=True),
        "host": Setting(str, default="127.0.0.1", doc="the broker that bells and streetlights use"),
        "port": Setting(int, default=1883, low=1, high=65535),
        "username": Setting(str, doc="the agent's user name on that broker (`ansim provision` makes ansim-agent)"),
        "password_file": Setting(_PATH, doc="a file holding the agent's password there (chmod 600; `ansim "
                                           "provision` writes <site>/mosquitto/agent.password)"),
    },
    "center": {
        "host": Setting(str, required=True, doc="the control center's MQTT broker"),
        "port": Setting(int, default=8883, low=1, high=65535),
        "tls": Setting(bool, default=True, doc="false only for tests on loopback (or see allow_plaintext)"),
        "allow_plaintext": Setting(bool, default=False,
                                   doc="true to send alerts unencrypted to a non-loopback host (a lab network)"),
        "cafile": Setting(_PATH, doc="CA of the center's broker"),
        "certfile": Setting(_PATH, doc="this agent's client certificate"),
        "keyfile": Setting(_PATH, doc="this agent's private key (readable only by the agent)"),
        "district": Setting(str, required=True, doc="topic segment of the district center",
                            name=NameRule("it is a segment of the alert topic ansim/center/v1/<district>/alerts/...",
                                          SEGMENT_MAX)),
        "fallback": Setting(str, default="citywide", doc="topic segment of the citywide center",
                            name=NameRule("it is a segment of the alert topic ansim/center/v1/<fallback>/alerts/...",
                                          SEGMENT_MAX)),
        "mqtt_version": Setting(int, default=5, choices=(5, 3), doc="5, or 3 (3.1.1) for a center broker without MQTT v5"),
        "escalation_s": Setting(int, default=30, low=1, high=3600, doc="unacknowledged alerts go to the fallback after this"),
    },
    "lights": {
        "radius_m": Setting(float, default=50.0, low=1, high=1000, doc="streetlights within this of an emergency blink"),
        "blink_s": Setting(int, default=300, low=5, high=3600, doc="how long they blink unless stopped"),
        "brighten_pct": Setting(int, default=100, low=1, high=100, doc="level for walk-home monitoring"),
        "monitor_corridor_m": Setting(float, default=25.0, low=1, high=200, doc="lights this close to a monitored route take part"),
        "monitor_ahead_m": Setting(float, default=100.0, low=10, high=1000, doc="how far ahead of the walker lights brighten"),
        "monitor_hold_s": Setting(int, default=900, low=60, high=7200, doc="a brighten command expires after this unless renewed"),
    },
    "supervision": {
        "mains_s": Setting(int, default=90, low=10, doc="bells and streetlights silent longer are offline"),
        "wearable_s": Setting(int, default=25 * 3600, low=60,
                              doc="wearables silent longer are offline (their heartbeats come 3 to 9 h apart: "
                                  "keep it well above 9 h)"),
    },
    "ble": {
        "enabled": Setting(bool, default=False),
        "adapter": Setting(str, default="hci0"),
        "scanning": Setting(str, default="active", choices=("active", "passive")),
        "advertise": Setting(bool, default=True, doc="relay the center's acks to wearables by BLE advertising"),
        "ack_advertise_s": Setting(int, default=30, low=5, high=600, doc="how long an ack is advertised"),
        "company_id": Setting(int, default=0xFFFF,
                              doc="the site's BLE company id, as `ansim provision` gave its wearables (0xFFFF: "
                                  "the Bluetooth SIG's test id)"),
        "virtual_air": Setting(str, doc="simulators only: the bumble transport of a virtual BLE radio"),
        "virtual_air_tx": Setting(str, doc="simulators only: the bumble transport of a virtual BLE radio's "
                                           "controller to advertise acks on (another than virtual_air's)"),
    },
    "serial": {
        "enabled": Setting(bool, default=False),
        "url": Setting(str, default="/dev/serial0", doc="any pyserial URL"),
        "baudrate": Setting(int, default=115200, low=1200, high=4_000_000),
    },
    "metrics": {
        "port": Setting(int, default=9464, low=0, high=65535, doc="Prometheus /metrics; 0 turns it off"),
    },
}


class Config:
    """Validated settings: ``config.center["port"]``; paths are absolute ``Path`` objects."""

    def __init__(self, sections, source):
        self.source = source
        for name, values in sections.items():
            setattr(self, name, values)


def load(path):
    path = Path(path)
    raw = read_toml(path, "pass --config with the agent's TOML file (edge_agent/agent.example.toml documents it)")
    return validate(raw, path)


def read_toml(path, if_missing):
    """Parse a TOML file; every way of failing is one ConfigError line naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("%s: no such file: %s" % (path, if_missing)) from None
    except IsADirectoryError:
        raise ConfigError("%s: is a directory, not a TOML file: %s" % (path, if_missing)) from None
    except PermissionError:
        raise ConfigError("%s: permission denied: run as the agent's user (or `sudo -u ansim`)" % path) from None
    except OSError as err:
        raise ConfigError("%s: cannot read it: %s" % (path, err.strerror or err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError("%s: not UTF-8 text (byte %d): save it as UTF-8 TOML" % (path, err.start)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s: not valid TOML: %s: fix the syntax there (strings in quotes, "
                          "tables as [name], one key = value per line)" % (path, err)) from None


def did_you_mean(word, choices):
    """" (did you mean x?)" for a close match, else ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return " (did you mean %s?)" % close[0] if close else ""


def validate(raw, path):
    base = Path(path).resolve().parent
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError("%s: [%s]: unknown section%s: remove it; the sections are %s"
                          % (path, unknown[0], did_you_mean(unknown[0], SCHEMA), ", ".join(SCHEMA)))
    sections = {}
    for section, settings in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError("%s: %s: must be a table: write [%s] on a line of its own, its keys below it"
                              % (path, section, section))
        extra = sorted(set(given) - set(settings))
        if extra:
            raise ConfigError("%s: [%s] %s: unknown key%s: remove it; the keys of [%s] are %s"
                              % (path, section, extra[0], did_you_mean(extra[0], settings), section,
                                 ", ".join(settings)))
        sections[section] = {key: _value(path, section, key, setting, given, base)
                             for key, setting in settings.items()}
    center = sections["center"]
    if center["district"] == center["fallback"]:
        raise ConfigError("%s: [center] fallback: %r is also the district: escalation would go back to the center "
                          "that did not answer; set fallback to the citywide center's segment (the default is "
                          "\"citywide\")" % (path, center["fallback"]))
    if not center["tls"] and not center["allow_plaintext"] and not is_loopback(center["host"]):
        raise ConfigError("%s: [center] tls: false toward %s, which is not this machine (loopback), would send "
                          "alerts unencrypted over the network: set tls = true with cafile, certfile and keyfile, "
                          "or add allow_plaintext = true under [center] if this is a lab network"
                          % (path, center["host"]))
    if center["tls"]:
        for key in ("cafile", "certfile", "keyfile"):
            if center[key] is None:
                raise ConfigError("%s: [center] %s: missing, required when tls = true (the center's broker "
                                  "authenticates agents by certificate): add %s = \"<file>\" under [center]"
                                  % (path, key, key))
    for key in ("cafile", "certfile", "keyfile"):
        if center[key] is not None and not center[key].is_file():
            raise ConfigError("%s: [center] %s: %s %s: fix the path (relative paths are relative to %s)"
                              % (path, key, center[key], "is not a file" if center[key].exists()
                                 else "does not exist", base))
    if center["keyfile"] is not None:
        require_private(center["keyfile"], "%s: [center] keyfile" % path)
    _check_local_login(path, base, sections["local_mqtt"])
    company_id = sections["ble"]["company_id"]
    if not 0 <= company_id <= 0xFFFF:
        raise ConfigError("%s: [ble] company_id: must be a 16-bit Bluetooth company id, 0x0000 to 0xFFFF, got %d "
                          "(0x%X): write the one `ansim provision` gave the site's wearables, in hex, e.g. "
                          "company_id = 0x0A1B; without it the agent uses 0xFFFF, the Bluetooth SIG's test id"
                          % (path, company_id, company_id))
    return Config(sections, path)


def _check_local_login(path, base, local):
    """[local_mqtt] password_file: a private, readable, non-empty file, given with a username."""
    where = "%s: [local_mqtt]" % path
    if local["password_file"] is None:
        return
    if local["username"] is None:
        raise ConfigError("%s password_file: given without username: add username = \"ansim-agent\" (the name "
                          "`ansim provision` gave the agent in the broker's passwd)" % where)
    password_file = local["password_file"]
    if not password_file.is_file():
        raise ConfigError("%s password_file: %s %s: fix the path (relative paths are relative to %s)"
                          % (where, password_file, "is not a file" if password_file.exists() else "does not exist",
                             base))
    require_private(password_file, "%s password_file" % where)
    if not read_password(password_file, where + " password_file"):
        raise ConfigError("%s password_file: %s is empty: copy <site>/mosquitto/agent.password made by "
                          "`ansim provision`" % (where, password_file))


def read_password(path, what):
    """The password in ``path``: its first line, the line ending removed (never in a message)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except PermissionError:
        raise ConfigError("%s: %s: permission denied: run as the agent's user (or `sudo -u ansim`)"
                          % (what, path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("%s: cannot read %s (%s)" % (what, path, getattr(err, "strerror", None)
                                                       or type(err).__name__)) from None
    return text.split("\n", 1)[0].rstrip("\r")


_EXAMPLES = {str: '"..."', _PATH: '"<file>"', _POSITION: "{ lat = <degrees>, lon = <degrees> }"}


def _value(path, section, key, setting, given, base):
    where = "%s: [%s] %s" % (path, section, key)
    if key not in given:
        if setting.required:
            raise ConfigError("%s: missing (required): add %s = %s under [%s]%s"
                              % (where, key, _EXAMPLES.get(setting.kind, "..."), section,
                                 " (%s)" % setting.doc if setting.doc else ""))
        if setting.kind is _PATH and setting.default is not None:
            return Path(setting.default)
        return setting.default
    value = given[key]
    if setting.kind is _POSITION:
        if (not isinstance(value, dict) or set(value) != {"lat", "lon"}
                or not all(isinstance(value[k], (int, float)) and not isinstance(value[k], bool) for k in value)):
            raise ConfigError("%s: must be { lat = <degrees>, lon = <degrees> }, got %r: e.g. %s = "
                              "{ lat = 37.5663, lon = 126.9779 }" % (where, value, key))
        if not (-90 <= value["lat"] <= 90 and -180 <= value["lon"] <= 180):
            raise ConfigError("%s: lat must be within +-90 and lon within +-180, got %r: "
                              "check that lat and lon are not swapped" % (where, value))
        return (float(value["lat"]), float(value["lon"]))
    if setting.kind is _PATH:
        if not isinstance(value, str) or not value:
            raise ConfigError("%s: must be a file or directory path as a string, got %r: e.g. %s = \"%s\""
                              % (where, value, key, setting.default or "<file>"))
        return (base / value).resolve()
    if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, setting.kind) or (setting.kind is int and isinstance(value, bool)):
        raise ConfigError("%s: must be %s, got %r: %s" % (where, _kind_name(setting.kind), value,
                                                           _type_fix(key, setting, value)))
    if setting.low is not None and value < setting.low or setting.high is not None and value > setting.high:
        raise ConfigError("%s: must be %s, got %r%s" % (where, _range(setting), value,
                                                         "" if setting.default is None
                                                         else " (the default is %r)" % setting.default))
    if setting.choices and value not in setting.choices:
        raise ConfigError("%s: must be one of %s, got %r%s" % (where, ", ".join(map(str, setting.choices)), value,
                                                               did_you_mean(value, setting.choices)))
    if setting.name is not None:
        _check_name(where, key, setting.name, value)
    return value


def _check_name(where, key, rule, value):
    """One ConfigError for a value that an MQTT client id or topic cannot carry."""
    if not value:
        raise ConfigError("%s: must not be empty (%s): e.g. %s = \"%s\"" % (where, rule.why, key, _example(key)))
    if rule.client_id:
        bad = [c for c in value if not _CLIENT_ID_CHARS.fullmatch(c)]
        allowed = "may hold only letters A-Z a-z, digits, '.', '_' and '-'"
    else:
        bad = [c for c in value if c in "/+#" or c.isspace() or unicodedata.category(c).startswith("C")]
        allowed = "must be one MQTT topic segment, without '/', '+', '#', spaces or control characters"
    if bad:
        fixed = re.sub(r"-{2,}", "-", "".join("-" if c in bad else c for c in value)).strip("-") or _example(key)
        raise ConfigError("%s: %s (%s), got %s (with %s): e.g. %s = \"%s\""
                          % (where, allowed, rule.why, _quoted(value), _describe(bad), key, fixed))
    if len(value) > rule.max_len:
        raise ConfigError("%s: must be at most %d characters (%s%s), got %d: shorten it"
                          % (where, rule.max_len, rule.why,
                             "; MQTT client ids are kept to %d" % CLIENT_ID_MAX if rule.client_id else "",
                             len(value)))


def _example(key):
    return {"id": "edge-jung-01", "site": "jung-gu", "district": "jung-gu", "fallback": "citywide"}.get(key, "...")


def _quoted(value):
    """The value as it is written in TOML, control characters escaped (one line, visible)."""
    return '"%s"' % "".join(c if c.isprintable() and not c.isspace() or c == " " else "\\u%04X" % ord(c)
                            for c in value)


def _describe(chars):
    names = []
    for c in dict.fromkeys(chars):
        if c == " ":
            names.append("a space")
        elif c == "\0":
            names.append("a NUL")
        elif c in "/+#" or c.isprintable() and not c.isspace():
            names.append("'%s'" % c)
        else:
            names.append("U+%04X, %s" % (ord(c), "whitespace" if c.isspace() else "a control or invisible character"))
    return ", ".join(names)


def is_loopback(host):
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _range(setting):
    if setting.high is None:
        return "at least %s" % setting.low
    if setting.low is None:
        return "at most %s" % setting.high
    return "between %s and %s" % (setting.low, setting.high)


def _type_fix(key, setting, value):
    """How to write the value: remove quotes around a number or a boolean, else an example."""
    if isinstance(value, str) and setting.kind in (int, float, bool):
        try:
            unquoted = tomllib.loads("v = %s" % value.strip())["v"]
        except tomllib.TOMLDecodeError:
            unquoted = None
        if isinstance(unquoted, setting.kind) or setting.kind is float and isinstance(unquoted, int):
            return "remove the quotes: %s = %s" % (key, value.strip())
    example = setting.default
    if example is None:
        example = {str: "...", int: 1, float: 1.0, bool: False}[setting.kind]
    return "e.g. %s = %s" % (key, _toml(example))


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"%s"' % value
    return repr(value)


def _kind_name(kind):
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]


def require_private(path, what):
    """Secrets must be readable by the agent only: refuse group/world-accessible files."""
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise ConfigError("%s: %s is readable by others (mode %03o): run `chmod 600 %s`"
                          % (what, path, mode & 0o777, path))


def check_tls_files(config):
    """Load the center's CA, the agent's certificate and its key now, so that a wrong file is
    one line at start rather than a traceback from the TLS library."""
    center = config.center
    if not center["tls"]:
        return
    context = ssl.create_default_context()
    where = "%s: [center]" % config.source
    try:
        context.load_verify_locations(cafile=str(center["cafile"]))
    except (ssl.SSLError, OSError) as err:
        raise ConfigError("%s cafile: %s is not a usable CA certificate (%s): it must be the PEM "
                          "certificate of the CA that signed the center's broker"
                          % (where, center["cafile"], _ssl_reason(err))) from None
    try:
        context.load_cert_chain(str(center["certfile"]), str(center["keyfile"]))
    except (ssl.SSLError, OSError) as err:
        raise ConfigError("%s certfile, keyfile: cannot load %s with %s (%s): both must be PEM and the "
                          "key must be the certificate's" % (where, center["certfile"], center["keyfile"],
                                                              _ssl_reason(err))) from None


def _ssl_reason(err):
    return getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err).splitlines()[0]

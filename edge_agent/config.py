"""The agent's TOML configuration, validated at start.

A bad file is reported as one ``ConfigError`` that names the file, the key, the problem and
the fix, before anything starts: an engineer on call should not have to read a traceback.
The schema is data (``SCHEMA``), with a line of documentation per key.
"""

import os
import tomllib
from pathlib import Path


class ConfigError(ValueError):
    pass


class Setting:
    def __init__(self, kind, default=None, required=False, low=None, high=None, choices=None, doc=""):
        self.kind, self.default, self.required = kind, default, required
        self.low, self.high, self.choices, self.doc = low, high, choices, doc


_POSITION = "position"  # {lat, lon} table
_PATH = "path"

SCHEMA = {
    "agent": {
        "id": Setting(str, required=True, doc="this agent's name, unique in the city (MQTT client id, alert ids)"),
        "site": Setting(str, default="site", doc="district or site name shown to the center"),
        "position": Setting(_POSITION, required=True, doc="where the agent's radio is: { lat = .., lon = .. }"),
        "data_dir": Setting(_PATH, default="/var/lib/ansim", doc="SQLite store and state"),
        "registry": Setting(_PATH, required=True, doc="device registry written by `ansim provision`"),
        "retention_days": Setting(int, default=30, low=1, high=3650, doc="delivered alerts are purged after this"),
        "dedup_window_s": Setting(int, default=600, low=10, high=86400, doc="same frame heard again within this is one event"),
        "cancel_window_s": Setting(int, default=5, low=1, high=60, doc="a cancel within this after an SOS cancels it"),
        "log_level": Setting(str, default="info", choices=("debug", "info", "warning", "error")),
    },
    "local_mqtt": {
        "enabled": Setting(bool, default=True),
        "host": Setting(str, default="127.0.0.1", doc="the broker that bells and streetlights use"),
        "port": Setting(int, default=1883, low=1, high=65535),
    },
    "center": {
        "host": Setting(str, required=True, doc="the control center's MQTT broker"),
        "port": Setting(int, default=8883, low=1, high=65535),
        "tls": Setting(bool, default=True, doc="false only for tests on loopback"),
        "cafile": Setting(_PATH, doc="CA of the center's broker"),
        "certfile": Setting(_PATH, doc="this agent's client certificate"),
        "keyfile": Setting(_PATH, doc="this agent's private key (readable only by the agent)"),
        "district": Setting(str, required=True, doc="topic segment of the district center"),
        "fallback": Setting(str, default="citywide", doc="topic segment of the citywide center"),
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
        "wearable_s": Setting(int, default=25 * 3600, low=60, doc="wearables silent longer are offline"),
    },
    "ble": {
        "enabled": Setting(bool, default=False),
        "adapter": Setting(str, default="hci0"),
        "scanning": Setting(str, default="active", choices=("active", "passive")),
        "virtual_air": Setting(str, doc="simulators only: the bumble transport of a virtual BLE radio"),
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
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("%s: no such file: pass --config with the agent's TOML file" % path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s: not valid TOML: %s" % (path, err)) from None
    return validate(raw, path)


def validate(raw, path):
    base = Path(path).resolve().parent
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError("%s: unknown section [%s]: the sections are %s" % (path, unknown[0], ", ".join(SCHEMA)))
    sections = {}
    for section, settings in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError("%s: %s must be a table [%s]" % (path, section, section))
        extra = sorted(set(given) - set(settings))
        if extra:
            raise ConfigError("%s: [%s] %s: unknown key; the keys are %s"
                              % (path, section, extra[0], ", ".join(settings)))
        sections[section] = {key: _value(path, section, key, setting, given, base)
                             for key, setting in settings.items()}
    center = sections["center"]
    if center["tls"]:
        for key in ("cafile", "certfile", "keyfile"):
            if center[key] is None:
                raise ConfigError("%s: [center] %s: required when tls = true (the center's broker "
                                  "authenticates agents by certificate)" % (path, key))
    for key in ("cafile", "certfile", "keyfile"):
        if center[key] is not None and not center[key].exists():
            raise ConfigError("%s: [center] %s: %s does not exist" % (path, key, center[key]))
    if center["keyfile"] is not None:
        require_private(center["keyfile"], "%s: [center] keyfile" % path)
    return Config(sections, path)


def _value(path, section, key, setting, given, base):
    where = "%s: [%s] %s" % (path, section, key)
    if key not in given:
        if setting.required:
            raise ConfigError("%s: missing; %s" % (where, setting.doc or "required"))
        if setting.kind is _PATH and setting.default is not None:
            return Path(setting.default)
        return setting.default
    value = given[key]
    if setting.kind is _POSITION:
        if (not isinstance(value, dict) or set(value) != {"lat", "lon"}
                or not all(isinstance(value[k], (int, float)) and not isinstance(value[k], bool) for k in value)):
            raise ConfigError("%s: must be { lat = <degrees>, lon = <degrees> }, got %r" % (where, value))
        if not (-90 <= value["lat"] <= 90 and -180 <= value["lon"] <= 180):
            raise ConfigError("%s: lat must be within +-90 and lon within +-180, got %r" % (where, value))
        return (float(value["lat"]), float(value["lon"]))
    if setting.kind is _PATH:
        if not isinstance(value, str) or not value:
            raise ConfigError("%s: must be a file or directory path as a string, got %r" % (where, value))
        return (base / value).resolve()
    if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, setting.kind) or (setting.kind is int and isinstance(value, bool)):
        raise ConfigError("%s: must be %s, got %r" % (where, _kind_name(setting.kind), value))
    if setting.low is not None and value < setting.low or setting.high is not None and value > setting.high:
        raise ConfigError("%s: must be between %s and %s, got %r" % (where, setting.low, setting.high, value))
    if setting.choices and value not in setting.choices:
        raise ConfigError("%s: must be one of %s, got %r" % (where, ", ".join(setting.choices), value))
    return value


def _kind_name(kind):
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]


def require_private(path, what):
    """Secrets must be readable by the agent only: refuse group/world-readable files."""
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise ConfigError("%s: %s is readable by others (mode %o): run `chmod 600 %s`"
                          % (what, path, mode & 0o777, path))

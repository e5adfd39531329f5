"""The device registry: who may talk to this agent, with which key, from where, and the
cameras and safety facilities near them. Written by ``ansim provision``; TOML.

Keys live in separate files (16 bytes as 32 hex digits), readable only by the agent.
"""

import tomllib
from pathlib import Path

from ansim_protocol.crypto import KEY_SIZE, DeviceKeys

from .config import ConfigError, require_private

ROLES = ("wearable", "bell", "streetlight")
FIXED_ROLES = ("bell", "streetlight")


class Device:
    def __init__(self, device_id, role, name, keys, position, supervision_s):
        self.device_id = device_id
        self.role = role
        self.name = name
        self.keys = keys
        self.position = position
        self.supervision_s = supervision_s

    @property
    def hex_id(self):
        return "%08x" % self.device_id


class Place:
    """A camera or a safety facility (police box, bell, smart light, ...)."""

    def __init__(self, ident, kind, name, position):
        self.ident = ident
        self.kind = kind
        self.name = name
        self.position = position


class Registry:
    def __init__(self, devices, cameras, facilities):
        self.devices = {d.device_id: d for d in devices}
        self.cameras = cameras
        self.facilities = facilities

    def get(self, device_id):
        return self.devices.get(device_id)

    def by_role(self, role):
        return [d for d in self.devices.values() if d.role == role]


def load(path, supervision):
    """Read the registry; ``supervision`` is the config's [supervision] table (defaults)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("%s: no registry file: run `ansim provision` or fix [agent] registry" % path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s: not valid TOML: %s" % (path, err)) from None
    base = path.resolve().parent
    devices, seen = [], set()
    for i, entry in enumerate(raw.get("device", [])):
        where = "%s: device #%d" % (path, i + 1)
        device = _device(entry, where, base, supervision)
        if device.device_id in seen:
            raise ConfigError("%s: device id %s appears twice" % (where, device.hex_id))
        seen.add(device.device_id)
        devices.append(device)
    cameras = [_place(e, "camera", "%s: camera #%d" % (path, i + 1)) for i, e in enumerate(raw.get("camera", []))]
    facilities = [_place(e, e.get("kind"), "%s: facility #%d" % (path, i + 1))
                  for i, e in enumerate(raw.get("facility", []))]
    return Registry(devices, cameras, facilities)


def _device(entry, where, base, supervision):
    try:
        device_id = int(entry["id"], 16)
        if entry["id"] != "%08x" % device_id:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ConfigError("%s: id must be 8 lowercase hex digits, got %r" % (where, entry.get("id"))) from None
    where = "%s (%s)" % (where, entry["id"])
    role = entry.get("role")
    if role not in ROLES:
        raise ConfigError("%s: role must be one of %s, got %r" % (where, ", ".join(ROLES), role))
    position = _position(entry.get("position"), where) if "position" in entry else None
    if role in FIXED_ROLES and position is None:
        raise ConfigError("%s: a %s needs its position = { lat = .., lon = .. }" % (where, role))
    if "key_file" not in entry:
        raise ConfigError("%s: key_file missing" % where)
    keys = DeviceKeys(_read_key(base / entry["key_file"], where))
    default = supervision["wearable_s"] if role == "wearable" else supervision["mains_s"]
    return Device(device_id, role, entry.get("name", role + " " + entry["id"]), keys, position,
                  entry.get("supervision_s", default))


def _read_key(path, where):
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError("%s: key file %s does not exist" % (where, path)) from None
    require_private(path, where + " key_file")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise ConfigError("%s: key file %s must hold %d hex digits" % (where, path, 2 * KEY_SIZE))
    return key


def _position(value, where):
    if not isinstance(value, dict) or not all(isinstance(value.get(k), (int, float)) for k in ("lat", "lon")):
        raise ConfigError("%s: position must be { lat = <degrees>, lon = <degrees> }, got %r" % (where, value))
    return (float(value["lat"]), float(value["lon"]))


def _place(entry, kind, where):
    if not entry.get("id") or not kind:
        raise ConfigError("%s: needs an id%s" % (where, "" if kind else " and a kind"))
    return Place(entry["id"], kind, entry.get("name", entry["id"]), _position(entry.get("position"), where))

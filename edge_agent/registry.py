"""The device registry: who may talk to this agent, with which key, from where, and the
cameras and safety facilities near them. Written when devices are provisioned; TOML:
``[[device]]`` (id, role, key_file, position, name, supervision_s), ``[[camera]]`` (id,
position, name) and ``[[facility]]`` (id, kind, position, name).

Keys live in separate files (16 bytes as 32 hex digits), readable only by the agent.
A bad registry is one ``ConfigError`` line naming the file, the entry, the key and the fix.
"""

from pathlib import Path

from ansim_protocol.crypto import KEY_SIZE, DeviceKeys

from .config import ConfigError, did_you_mean, read_toml, require_private

ROLES = ("wearable", "bell", "streetlight")
FIXED_ROLES = ("bell", "streetlight")
TABLES = {
    "device": ("id", "role", "key_file", "position", "name", "supervision_s"),
    "camera": ("id", "position", "name"),
    "facility": ("id", "kind", "position", "name"),
}
MIN_SUPERVISION_S = 10


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


def load(path, supervision, config_source=None):
    """Read the registry; ``supervision`` is the config's [supervision] table (defaults).
    ``config_source``, the config file naming this registry, makes a missing file's fix precise."""
    path = Path(path)
    raw = read_toml(path, "fix [agent] registry in %s, or provision the devices (the registry lists them)"
                    % (config_source or "the agent's config"))
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise ConfigError("%s: %s: unknown table%s: the registry holds %s"
                          % (path, unknown[0], did_you_mean(unknown[0], TABLES),
                             ", ".join("[[%s]]" % t for t in TABLES)))
    for table in TABLES:
        entries = raw.get(table, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError("%s: %s: must be an array of tables: write [[%s]] above each entry's keys"
                              % (path, table, table))
        for i, entry in enumerate(entries):
            extra = sorted(set(entry) - set(TABLES[table]))
            if extra:
                raise ConfigError("%s: [[%s]] #%d %s: unknown key%s: the keys are %s"
                                  % (path, table, i + 1, extra[0], did_you_mean(extra[0], TABLES[table]),
                                     ", ".join(TABLES[table])))
    base = path.resolve().parent
    devices, first = [], {}
    for i, entry in enumerate(raw.get("device", [])):
        where = "%s: [[device]] #%d" % (path, i + 1)
        device = _device(entry, where, base, supervision)
        if device.device_id in first:
            raise ConfigError("%s (%s) id: already used by [[device]] #%d: each device needs its own id "
                              "(remove the duplicate entry)" % (where, device.hex_id, first[device.device_id]))
        first[device.device_id] = i + 1
        devices.append(device)
    cameras = [_place(e, "camera", "%s: [[camera]] #%d" % (path, i + 1)) for i, e in enumerate(raw.get("camera", []))]
    facilities = [_place(e, e.get("kind"), "%s: [[facility]] #%d" % (path, i + 1))
                  for i, e in enumerate(raw.get("facility", []))]
    return Registry(devices, cameras, facilities)


def _device(entry, where, base, supervision):
    ident = entry.get("id")
    try:
        device_id = int(ident, 16)
        if ident != "%08x" % device_id:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("%s id: must be 8 lowercase hex digits, got %r: e.g. id = \"0002000a\""
                          % (where, ident)) from None
    where = "%s (%s)" % (where, ident)
    role = entry.get("role")
    if role not in ROLES:
        raise ConfigError("%s role: must be one of %s, got %r%s"
                          % (where, ", ".join(ROLES), role, did_you_mean(role, ROLES) if role else ""))
    position = _position(entry["position"], where) if "position" in entry else None
    if role in FIXED_ROLES and position is None:
        raise ConfigError("%s position: missing: a %s is fixed, add position = { lat = <degrees>, "
                          "lon = <degrees> } (where it is mounted)" % (where, role))
    key_file = entry.get("key_file")
    if not isinstance(key_file, str) or not key_file:
        raise ConfigError("%s key_file: %s: add key_file = \"keys/%s.key\" (the device's key, "
                          "readable only by the agent)" % (where, "missing" if key_file is None
                                                           else "must be a path string, got %r" % key_file, ident))
    keys = DeviceKeys(_read_key((base / key_file).resolve(), where + " key_file"))
    default = supervision["wearable_s"] if role == "wearable" else supervision["mains_s"]
    supervision_s = entry.get("supervision_s", default)
    if (not isinstance(supervision_s, int) or isinstance(supervision_s, bool)
            or supervision_s < MIN_SUPERVISION_S):
        raise ConfigError("%s supervision_s: must be an integer number of seconds, at least %d, got %r: "
                          "e.g. supervision_s = %d, or remove it to use [supervision] (%d s for a %s)"
                          % (where, MIN_SUPERVISION_S, supervision_s, default, default, role))
    name = entry.get("name", role + " " + ident)
    if not isinstance(name, str):
        raise ConfigError("%s name: must be a string, got %r" % (where, name))
    return Device(device_id, role, name, keys, position, supervision_s)


def _read_key(path, where):
    if not path.exists():
        raise ConfigError("%s: %s does not exist: copy the device's key there (made when it was "
                          "provisioned) or fix the path" % (where, path))
    require_private(path, where)
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise ConfigError("%s: %s: permission denied: the agent's user must own it (`chown ansim %s`)"
                          % (where, path, path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("%s: cannot read %s: %s" % (where, path, getattr(err, "strerror", None) or err)) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = None
    if key is None or len(key) != KEY_SIZE:
        raise ConfigError("%s: %s must hold the device's %d-byte key as %d hex digits, it holds %s: "
                          "copy the key made when the device was provisioned"
                          % (where, path, KEY_SIZE, 2 * KEY_SIZE,
                             "%d characters" % len(text) if key is None else "%d bytes" % len(key)))
    return key


def _position(value, where):
    if (not isinstance(value, dict) or set(value) != {"lat", "lon"}
            or not all(isinstance(value[k], (int, float)) and not isinstance(value[k], bool) for k in value)):
        raise ConfigError("%s position: must be { lat = <degrees>, lon = <degrees> }, got %r" % (where, value))
    if not (-90 <= value["lat"] <= 90 and -180 <= value["lon"] <= 180):
        raise ConfigError("%s position: lat must be within +-90 and lon within +-180, got %r: "
                          "check that lat and lon are not swapped" % (where, value))
    return (float(value["lat"]), float(value["lon"]))


def _place(entry, kind, where):
    if not isinstance(entry.get("id"), str) or not entry["id"]:
        raise ConfigError("%s id: missing: add id = \"...\" (its name at the center, e.g. CCTV-001)" % where)
    where = "%s (%s)" % (where, entry["id"])
    if not isinstance(kind, str) or not kind:
        raise ConfigError("%s kind: missing: add kind = \"...\" (e.g. police_box)" % where)
    if "position" not in entry:
        raise ConfigError("%s position: missing: add position = { lat = <degrees>, lon = <degrees> }" % where)
    return Place(entry["id"], kind, entry.get("name", entry["id"]), _position(entry["position"], where))

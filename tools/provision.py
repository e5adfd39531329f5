"""``ansim provision``: device ids, per-device keys, the agent's registry and one config file
per device, kept in a site directory:

    registry.toml            what the agent loads ([agent] registry)
    keys/<id>.key            16-byte keys as hex, mode 600, read by the agent
    devices/<id>.json        what ``ansim flash`` copies to the device, mode 600 (holds its key)

Secrets are never printed or logged. Running ``add`` again adds devices and never changes a
key; only ``rotate`` makes a new key for a device, and says that it must be flashed again.
"""

import json
import os
import sys
import tomllib
from pathlib import Path

ROLE_PREFIX = {"wearable": 0x0001, "bell": 0x0002, "streetlight": 0x0003}
FIXED = ("bell", "streetlight")


class ProvisionError(Exception):
    pass


CONFIG_KEYS = ("device_id", "role", "key", "position", "broker")  # written by provisioning itself


def add_parser(subparsers):
    p = subparsers.add_parser("provision", help="make device ids, keys, the registry and device configs",
                              description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add devices (existing keys are never changed)")
    add.add_argument("--site", required=True, help="the site directory")
    add.add_argument("--role", required=True, choices=sorted(ROLE_PREFIX))
    add.add_argument("--count", type=int, default=1)
    add.add_argument("--position", help="lat,lon: required for bells and streetlights")
    add.add_argument("--name", help="a name for people (defaults to role and id)")
    add.add_argument("--broker", help="host:port of the agent's MQTT broker, for bells and streetlights")
    add.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                     help="a role setting for the device's config.json (VALUE is JSON, else text), e.g. "
                          "utc_offset_min=540 for a light's schedule in Korea; see the role's firmware docstring")
    listing = actions.add_parser("list", help="list the site's devices (no secrets)")
    listing.add_argument("--site", required=True)
    rotate = actions.add_parser("rotate", help="give one device a new key (it must be flashed again)")
    rotate.add_argument("--site", required=True)
    rotate.add_argument("--device", required=True, help="8 hex digits")
    p.set_defaults(run=run)


def run(args):
    site = Site(Path(args.site))
    try:
        if args.action == "add":
            for device in site.add(args.role, args.count, _position(args.position), args.name, args.broker,
                                   _settings(args.settings)):
                print("added %s %s%s" % (device["id"], device["role"],
                                         " at %.6f, %.6f" % tuple(device["position"]) if device.get("position") else ""))
            print("registry: %s (%d devices)" % (site.registry_path, len(site.devices)))
        elif args.action == "list":
            for device in site.devices:
                print("%s  %-11s  %s" % (device["id"], device["role"], device.get("name", "")))
        else:
            site.rotate(args.device)
            print("new key for %s: flash it again (`ansim flash --device %s ...`); the old key no longer "
                  "verifies" % (args.device, args.device))
    except ProvisionError as err:
        print("ansim provision: %s" % err, file=sys.stderr)
        return 2
    return 0


def _settings(items):
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ProvisionError("--set %r: write NAME=VALUE, e.g. --set utc_offset_min=540" % item)
        if name.strip() in CONFIG_KEYS:
            raise ProvisionError("--set %s: that is set by provisioning itself" % name.strip())
        try:
            settings[name.strip()] = json.loads(value)
        except ValueError:
            settings[name.strip()] = value
    return settings


def _position(text):
    if text is None:
        return None
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise ProvisionError("--position must be lat,lon in degrees, e.g. 37.5663,126.9779") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ProvisionError("--position %s is not on Earth (lat within +-90, lon within +-180)" % text)
    return [lat, lon]


def _broker(text):
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ProvisionError("--broker must be host:port, e.g. 192.168.0.10:1883")
    return {"host": host, "port": int(port)}


def _write_secret(path, text):
    """Create or replace a file readable by its owner only (never briefly wider)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Site:
    def __init__(self, directory):
        self.directory = directory
        self.registry_path = directory / "registry.toml"
        self.raw = {}
        if self.registry_path.exists():
            try:
                self.raw = tomllib.loads(self.registry_path.read_text())
            except tomllib.TOMLDecodeError as err:
                raise ProvisionError("%s is not valid TOML (%s): fix it by hand; nothing was changed"
                                     % (self.registry_path, err)) from None
        self.devices = self.raw.setdefault("device", [])

    def add(self, role, count, position, name, broker, settings=None):
        if role in FIXED and position is None:
            raise ProvisionError("a %s needs --position lat,lon (where it is mounted)" % role)
        if count < 1:
            raise ProvisionError("--count must be at least 1")
        broker = _broker(broker)  # checked before anything is written
        (self.directory / "keys").mkdir(parents=True, exist_ok=True)
        (self.directory / "devices").mkdir(exist_ok=True)
        taken = {int(d["id"], 16) for d in self.devices}
        made = []
        next_id = ROLE_PREFIX[role] << 16
        for _ in range(count):
            next_id += 1
            while next_id in taken:
                next_id += 1
            taken.add(next_id)
            device = {"id": "%08x" % next_id, "role": role, "key_file": "keys/%08x.key" % next_id}
            if name:
                device["name"] = name if count == 1 else "%s %d" % (name, len(made) + 1)
            if position is not None:
                device["position"] = position
            key = os.urandom(16)
            _write_secret(self.directory / device["key_file"], key.hex() + "\n")
            self._write_device_config(device, key, broker, settings)
            self.devices.append(device)
            made.append(device)
        self._write_registry()
        return made

    def rotate(self, device_hex):
        device = next((d for d in self.devices if d["id"] == device_hex), None)
        if device is None:
            raise ProvisionError("no device %s in %s" % (device_hex, self.registry_path))
        key = os.urandom(16)
        _write_secret(self.directory / device["key_file"], key.hex() + "\n")
        old = self._device_config_path(device)
        kept = json.loads(old.read_text()) if old.exists() else {}
        settings = {k: v for k, v in kept.items() if k not in CONFIG_KEYS}
        self._write_device_config(device, key, kept.get("broker"), settings)

    def _device_config_path(self, device):
        return self.directory / "devices" / (device["id"] + ".json")

    def _write_device_config(self, device, key, broker, settings=None):
        config = {"device_id": device["id"], "role": device["role"], "key": key.hex()}
        config.update(settings or {})
        if "position" in device:
            pos = device["position"]
            config["position"] = [pos["lat"], pos["lon"]] if isinstance(pos, dict) else list(pos)
        if broker:
            config["broker"] = broker
        _write_secret(self._device_config_path(device), json.dumps(config, indent=1) + "\n")

    def _write_registry(self):
        """Rewrite the registry: devices, and the cameras and facilities added by hand."""
        lines = ["# Rewritten by `ansim provision` (comments are not kept); keys are in keys/.", ""]
        for table in ("device", "camera", "facility"):
            for entry in self.raw.get(table, []):
                lines.append("[[%s]]" % table)
                lines += ["%s = %s" % (key, _toml_value(value)) for key, value in entry.items()]
                lines.append("")
        tmp = self.registry_path.with_name("registry.toml.tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.registry_path)


def _toml_value(value):
    if isinstance(value, dict):
        return "{ %s }" % ", ".join("%s = %s" % (k, _toml_value(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return "{ lat = %r, lon = %r }" % tuple(value)  # a position given as [lat, lon]
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(_toml_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)

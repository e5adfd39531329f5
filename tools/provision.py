"""``ansim provision``: device ids, per-device keys, the agent's registry and one config file
per device, kept in a site directory:

    registry.toml            what the agent loads ([agent] registry)
    keys/<id>.key            16-byte keys as hex, mode 600, read by the agent
    devices/<id>.json        what ``ansim flash`` copies to the device, mode 600 (holds its key,
                             its MQTT password, its WiFi password)
    mosquitto/ansim.conf     the Pi's mosquitto on the LAN: goes to /etc/mosquitto/conf.d/
    mosquitto/passwd         mosquitto password file (PBKDF2-SHA512 hashes), mode 600
    mosquitto/acl            who may publish and read what (SPEC.md 6.2)
    mosquitto/agent.password the agent's MQTT password ([local_mqtt] password_file), mode 600

Wearables advertise under the site's BLE company id (``--company-id``; default 0xFFFF, the
Bluetooth SIG's test id), written into each wearable's config as ``company_id``; the site's
agents must listen for the same one (``[ble] company_id``): ``add --agent-config FILE`` writes it
there, else provisioning prints the line to add. A site has one company id.

Each bell and streetlight logs in to the Pi's mosquitto as its device id with a random
password of its own; the agent logs in as ``ansim-agent``. The ACL lets a device publish only
on its own ``up`` and ``state`` topics and read only its own ``down`` topic; only the agent
may publish on ``down`` (light commands, acks, time); anonymous clients are refused.

Secrets are never printed or logged. Running ``add`` again adds devices and never changes a
key or a password; only ``rotate`` makes a new key (and a new MQTT password) for a device, and
says that it must be flashed again.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from ansim_protocol.ble import COMPANY_ID, check_company_id

ROLE_PREFIX = {"wearable": 0x0001, "bell": 0x0002, "streetlight": 0x0003}
FIXED = ("bell", "streetlight")


class ProvisionError(Exception):
    pass


CONFIG_KEYS = ("device_id", "role", "key", "position", "broker", "wifi", "company_id")  # written by provisioning
AGENT_USER = "ansim-agent"  # the agent's MQTT user name on the Pi's broker (device ids are 8 hex digits)
MOSQUITTO_DIR = "/etc/mosquitto/ansim"  # where passwd and acl are installed on the Pi (--mosquitto-dir)
LISTEN_PORT = 1883
# Messages mosquitto keeps for a client that is away (the agent's persistent session, while it
# restarts): its default of 1000 drops new ones beyond that, a bell press among them, after
# ~3 minutes at a site of 200 devices; 0 (unlimited) lets a days-long outage eat the Pi's memory.
MAX_QUEUED = 100000


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
    add.add_argument("--wifi-ssid", metavar="SSID", help="the WiFi network bells and streetlights join")
    add.add_argument("--wifi-password-file", metavar="FILE",
                     help="a file holding the WiFi password (WPA2: 8-63 characters, or 64 hex digits); "
                          "it goes into the device's config, never on the command line or the screen")
    add.add_argument("--company-id", type=_company_id, metavar="ID",
                     help="the site's BLE company id for wearables, hex like 0x0A1B (default: the one the site's "
                          "wearables have, else 0xFFFF, the Bluetooth SIG's test id; use the id your company was "
                          "assigned by the SIG in production); the agents must use the same")
    add.add_argument("--agent-config", metavar="FILE",
                     help="an agent's TOML config to set [ble] company_id in (comments are kept)")
    _mosquitto_dir_option(add)
    listing = actions.add_parser("list", help="list the site's devices (no secrets)")
    listing.add_argument("--site", required=True)
    rotate = actions.add_parser("rotate", help="give one device a new key (it must be flashed again)")
    rotate.add_argument("--site", required=True)
    rotate.add_argument("--device", required=True, help="8 hex digits")
    _mosquitto_dir_option(rotate)
    p.set_defaults(run=run)


def _mosquitto_dir_option(parser):
    parser.add_argument("--mosquitto-dir", metavar="DIR",
                        help="where mosquitto/passwd and mosquitto/acl will be installed on the Pi, named in "
                             "ansim.conf (default: as last time, else %s)" % MOSQUITTO_DIR)


def run(args):
    site = Site(Path(args.site))
    try:
        if args.action == "add":
            wifi = _wifi(args.role, args.wifi_ssid, args.wifi_password_file)
            if args.company_id is not None and args.role != "wearable":
                raise ProvisionError("--company-id is for wearables (a %s has no BLE)" % args.role)
            company_id = site.company_id(args.company_id)
            if args.agent_config is not None:
                set_agent_company_id(Path(args.agent_config), company_id)  # checked before devices are made
            for device in site.add(args.role, args.count, _position(args.position), args.name, args.broker,
                                   _settings(args.settings), wifi=wifi, mosquitto_dir=args.mosquitto_dir,
                                   company_id=company_id):
                print("added %s %s%s" % (device["id"], device["role"],
                                         " at %.6f, %.6f" % tuple(device["position"]) if device.get("position") else ""))
            print("registry: %s (%d devices)" % (site.registry_path, len(site.devices)))
            if args.role == "wearable":
                print("BLE company id 0x%04X: %s" % (company_id, (
                    "written to %s ([ble] company_id)" % args.agent_config if args.agent_config is not None
                    else "every agent of the site needs [ble] company_id = 0x%04X%s" % (
                        company_id, " (the default)" if company_id == COMPANY_ID else ""))))
            _report_mosquitto(site)
        elif args.action == "list":
            for device in site.devices:
                print("%s  %-11s  %s" % (device["id"], device["role"], device.get("name", "")))
        else:
            fixed = site.rotate(args.device, mosquitto_dir=args.mosquitto_dir)
            print("new key%s for %s: flash it again (`ansim flash --device %s ...`); the old key no longer "
                  "verifies" % (" and MQTT password" if fixed else "", args.device, args.device))
            if fixed:
                print("install the new %s on the Pi and reload mosquitto: until it is flashed again, the "
                      "device cannot log in" % (site.mosquitto / "passwd"))
            _report_mosquitto(site)
    except ProvisionError as err:
        print("ansim provision: %s" % err, file=sys.stderr)
        return 2
    return 0


def _company_id(text):
    try:
        return check_company_id(int(text, 0))
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a 16-bit Bluetooth company id: give 0x0000 to 0xFFFF, "
                                         "e.g. 0x0A1B" % text) from None


_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")
_COMPANY_LINE = re.compile(r"^(\s*)company_id\s*=[^#\n]*?(\s*#.*)?$")


def set_agent_company_id(path, company_id):
    """Set ``[ble] company_id`` in the agent's TOML config ``path``, keeping its comments and
    every other line; the file keeps its owner and mode (it is written in place)."""
    try:
        text = path.read_text(encoding="utf-8")
        tomllib.loads(text)
    except OSError as err:
        raise ProvisionError("--agent-config %s: cannot read it (%s)" % (path, err.strerror or err)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ProvisionError("--agent-config %s: not a valid TOML file (%s): fix it first" % (path, err)) from None
    value = "company_id = 0x%04X" % company_id
    lines = text.splitlines(keepends=True)
    table, ble_at = None, None
    for i, line in enumerate(lines):
        found = _TABLE.match(line)
        if found:
            table = found.group(1)
            ble_at = i if table == "ble" else ble_at
            continue
        key = _COMPANY_LINE.match(line) if table == "ble" else None
        if key:
            end = "\n" if line.endswith("\n") else ""
            lines[i] = "%s%s%s%s" % (key.group(1), value, key.group(2) or "", end)
            break
    else:
        if ble_at is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", "[ble]\n", value + "\n"]
        else:
            lines.insert(ble_at + 1, value + "\n")
    new = "".join(lines)
    try:
        written = tomllib.loads(new).get("ble", {}).get("company_id")
    except tomllib.TOMLDecodeError:
        written = None
    if written != company_id:
        raise ProvisionError("--agent-config %s: could not set [ble] company_id there (an unusual layout): add "
                             "%s under [ble] by hand" % (path, value))
    try:
        with open(path, "r+", encoding="utf-8") as f:
            f.write(new)
            f.truncate()
    except OSError as err:
        raise ProvisionError("--agent-config %s: cannot write it (%s): run as its owner, or add %s under [ble] "
                             "by hand" % (path, err.strerror or err, value)) from None


def _settings(items):
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ProvisionError("--set %r: write NAME=VALUE, e.g. --set utc_offset_min=540" % item)
        if name.strip() == "company_id":
            raise ProvisionError("--set company_id: give --company-id (one for the whole site)")
        if name.strip() in CONFIG_KEYS:
            raise ProvisionError("--set %s: that is set by provisioning itself" % name.strip())
        try:
            settings[name.strip()] = json.loads(value)
        except ValueError:
            settings[name.strip()] = value
    return settings


def _report_mosquitto(site):
    for hex_id in site.new_credentials:
        print("made MQTT credentials for %s (provisioned before they existed): flash it again" % hex_id)
    print("mosquitto: %s, %s, %s (install: see README, \"The Pi's mosquitto on the LAN\")"
          % (site.mosquitto / "ansim.conf", site.mosquitto / "passwd", site.mosquitto / "acl"))
    print("agent: [local_mqtt] username = \"%s\", password_file = the installed copy of %s "
          "(`tools/install-pi.sh --site` puts it in /etc/ansim/local-mqtt.password)"
          % (AGENT_USER, site.agent_password_path.resolve()))


def _wifi(role, ssid, password_file):
    """{"ssid", "password"} for the device's config, or None; the password is read from a file
    and never appears in a message."""
    if ssid is None and password_file is None:
        return None
    if role not in FIXED:
        raise ProvisionError("--wifi-ssid and --wifi-password-file are for bells and streetlights "
                             "(a %s has no WiFi)" % role)
    if ssid is None or password_file is None:
        raise ProvisionError("give both --wifi-ssid and --wifi-password-file")
    if not ssid or len(ssid.encode()) > 32:
        raise ProvisionError("--wifi-ssid must be 1 to 32 bytes long")
    try:
        with open(password_file, "rb") as f:
            raw = f.read(1024)
    except OSError as err:
        raise ProvisionError("--wifi-password-file %s: cannot read it (%s)"
                             % (password_file, err.strerror or type(err).__name__)) from None
    try:
        password = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProvisionError("--wifi-password-file %s: a WPA2 password is ASCII text" % password_file) from None
    if password.endswith("\n"):  # one line ending, as an editor or echo leaves it; spaces are kept
        password = password[:-2] if password.endswith("\r\n") else password[:-1]
    ok = (8 <= len(password) <= 63 and all(" " <= c <= "~" for c in password)
          or len(password) == 64 and all(c in "0123456789abcdefABCDEF" for c in password))
    if not ok:
        raise ProvisionError("--wifi-password-file %s: must hold one WPA2 password, 8 to 63 printable "
                             "characters (or 64 hex digits), on one line (got %d characters)"
                             % (password_file, len(password)))
    return {"ssid": ssid, "password": password}


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


def _new_password():
    return secrets.token_urlsafe(24)  # 192 bits, [A-Za-z0-9_-]: no ':' for the password file


def _mosquitto_hash(password):
    """mosquitto 2's default password hash ($7$: PBKDF2-SHA512, 101 iterations, 12-byte salt),
    for when mosquitto_passwd is not installed on the machine that provisions."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return "$7$101$%s$%s" % (base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


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
        self.mosquitto = directory / "mosquitto"
        self.agent_password_path = self.mosquitto / "agent.password"
        self.new_credentials = []  # devices provisioned before MQTT credentials, given some now
        self.raw = {}
        if self.registry_path.exists():
            try:
                self.raw = tomllib.loads(self.registry_path.read_text())
            except tomllib.TOMLDecodeError as err:
                raise ProvisionError("%s is not valid TOML (%s): fix it by hand; nothing was changed"
                                     % (self.registry_path, err)) from None
        self.devices = self.raw.setdefault("device", [])

    def company_id(self, given=None):
        """The site's BLE company id: ``given`` if it agrees with the wearables provisioned so far,
        else theirs (0xFFFF if there are none); one site, one company id."""
        used = set()
        for device in self.devices:
            if device["role"] != "wearable":
                continue
            try:
                used.add(json.loads(self._device_config_path(device).read_text()).get("company_id", COMPANY_ID))
            except (OSError, ValueError):
                continue
        if given is not None and used and used != {given}:
            raise ProvisionError("--company-id 0x%04X: the site's wearables are provisioned with %s, and the site's "
                                 "agents hear one company id only: leave --company-id out, or use another site "
                                 "directory" % (given, ", ".join("0x%04X" % c for c in sorted(used))))
        if given is not None:
            return given
        return min(used) if used else COMPANY_ID

    def add(self, role, count, position, name, broker, settings=None, wifi=None, mosquitto_dir=None,
            company_id=None):
        if role in FIXED and position is None:
            raise ProvisionError("a %s needs --position lat,lon (where it is mounted)" % role)
        if count < 1:
            raise ProvisionError("--count must be at least 1")
        if wifi is not None and role not in FIXED:
            raise ProvisionError("WiFi settings are for bells and streetlights (a %s has no WiFi)" % role)
        broker = _broker(broker)  # checked before anything is written
        company_id = self.company_id(company_id) if role == "wearable" else None
        mosquitto_dir = self._mosquitto_dir(mosquitto_dir)
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
            device_broker = dict(broker or {})
            if role in FIXED:
                device_broker.update(username=device["id"], password=_new_password())
            self._write_device_config(device, key, device_broker, settings, wifi, company_id)
            self.devices.append(device)
            made.append(device)
        self._write_registry()
        self._write_mosquitto(mosquitto_dir)
        return made

    def rotate(self, device_hex, mosquitto_dir=None):
        """A new key, and for a bell or streetlight a new MQTT password; True for those."""
        device = next((d for d in self.devices if d["id"] == device_hex), None)
        if device is None:
            raise ProvisionError("no device %s in %s" % (device_hex, self.registry_path))
        mosquitto_dir = self._mosquitto_dir(mosquitto_dir)
        key = os.urandom(16)
        _write_secret(self.directory / device["key_file"], key.hex() + "\n")
        old = self._device_config_path(device)
        kept = json.loads(old.read_text()) if old.exists() else {}
        settings = {k: v for k, v in kept.items() if k not in CONFIG_KEYS}
        broker = dict(kept.get("broker") or {})
        fixed = device["role"] in FIXED
        if fixed:
            broker.update(username=device["id"], password=_new_password())
        self._write_device_config(device, key, broker, settings, kept.get("wifi"), kept.get("company_id"))
        self._write_mosquitto(mosquitto_dir)
        return fixed

    def _device_config_path(self, device):
        return self.directory / "devices" / (device["id"] + ".json")

    def _write_device_config(self, device, key, broker, settings=None, wifi=None, company_id=None):
        config = {"device_id": device["id"], "role": device["role"], "key": key.hex()}
        config.update(settings or {})
        if company_id is not None:
            config["company_id"] = company_id
        if "position" in device:
            pos = device["position"]
            config["position"] = [pos["lat"], pos["lon"]] if isinstance(pos, dict) else list(pos)
        if broker:
            config["broker"] = broker
        if wifi:
            config["wifi"] = {"ssid": wifi["ssid"], "password": wifi["password"]}
        _write_secret(self._device_config_path(device), json.dumps(config, indent=1) + "\n")

    # -- the Pi's mosquitto ---------------------------------------------------------------
    def _mosquitto_dir(self, given):
        """Where passwd and acl go on the Pi: as given, else as in the last ansim.conf, else
        MOSQUITTO_DIR. Checked before anything is written."""
        if given is None:
            try:
                found = re.search(r"^acl_file (/.*)/acl$", (self.mosquitto / "ansim.conf").read_text(), re.M)
            except OSError:
                found = None
            return found.group(1) if found else MOSQUITTO_DIR
        if not given.startswith("/") or any(c.isspace() for c in given):
            raise ProvisionError("--mosquitto-dir must be an absolute path without spaces, e.g. %s "
                                 "(mosquitto reads it from its own working directory)" % MOSQUITTO_DIR)
        return given.rstrip("/") or "/"

    def _credentials(self):
        """(user name, password) for the agent and every bell and streetlight. Existing
        passwords are kept; a device provisioned before credentials existed gets one now (and
        is listed in ``new_credentials``: it must be flashed again)."""
        self.mosquitto.mkdir(parents=True, exist_ok=True)
        if self.agent_password_path.exists():
            agent_password = self.agent_password_path.read_text().strip()
        else:
            agent_password = _new_password()
            _write_secret(self.agent_password_path, agent_password + "\n")
        users = [(AGENT_USER, agent_password)]
        for device in self.devices:
            if device["role"] not in FIXED:
                continue
            path = self._device_config_path(device)
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                print("ansim provision: %s is missing or broken: %s cannot log in to the broker until it is "
                      "rotated (`ansim provision rotate --device %s`)" % (path, device["id"], device["id"]),
                      file=sys.stderr)
                continue
            broker = config.get("broker") or {}
            if broker.get("username") != device["id"] or not broker.get("password"):
                broker.update(username=device["id"], password=_new_password())
                config["broker"] = broker
                _write_secret(path, json.dumps(config, indent=1) + "\n")
                self.new_credentials.append(device["id"])
            users.append((device["id"], broker["password"]))
        return users

    def _write_mosquitto(self, install_dir):
        users = self._credentials()
        self._write_passwd(users)
        acl = self.mosquitto / "acl.tmp"
        acl.write_text(ACL)
        os.replace(acl, self.mosquitto / "acl")
        conf = self.mosquitto / "ansim.conf.tmp"
        conf.write_text(CONF.format(dir=install_dir, port=LISTEN_PORT, max_queued=MAX_QUEUED))
        os.replace(conf, self.mosquitto / "ansim.conf")

    def _write_passwd(self, users):
        """mosquitto's password file, hashed by mosquitto_passwd -U (the passwords go through a
        mode 600 file, never a command line), or by _mosquitto_hash without it."""
        path = self.mosquitto / "passwd"
        tmp = self.mosquitto / "passwd.tmp"
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            _write_secret(tmp, "".join("%s:%s\n" % (user, _mosquitto_hash(pw)) for user, pw in users))
        else:
            _write_secret(tmp, "".join("%s:%s\n" % user_pw for user_pw in users))
            try:
                done = subprocess.run([tool, "-U", str(tmp)], capture_output=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as err:
                tmp.unlink(missing_ok=True)
                raise ProvisionError("mosquitto_passwd failed: %s" % err) from None
            if done.returncode != 0 or "$7$" not in tmp.read_text():
                tmp.unlink(missing_ok=True)
                raise ProvisionError("mosquitto_passwd -U failed (status %d): %s" % (
                    done.returncode, (done.stderr or done.stdout).decode(errors="replace").strip()[:200]))
        os.replace(tmp, path)

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


# The ACL (SPEC.md 6.2). Lines before the first "user" would apply to anonymous clients: there
# are none, and ansim.conf refuses anonymous clients anyway. "pattern" lines apply to every
# user, %u being the user name: a device's name is its id, so it reaches its own topics only.
ACL = """\
# Written by `ansim provision`: who may publish (write) and subscribe (read) what on the Pi's
# broker (SPEC.md 6.2). Anonymous clients: nothing (no lines before the first "user").

# The edge agent: reads every device's frames and state and the BLE relays' frames; the only
# one that may publish on a device's down topic (light commands, acks, time).
user %(agent)s
topic read ansim/v1/dev/+/up
topic read ansim/v1/dev/+/state
topic read ansim/v1/relay/+/up
topic write ansim/v1/dev/+/down

# Each bell and streetlight (user name = its device id): publishes its own frames and its
# online/offline state (retained, and its last will), reads only its own down topic.
pattern write ansim/v1/dev/%%u/up
pattern write ansim/v1/dev/%%u/state
pattern read ansim/v1/dev/%%u/down
""" % {"agent": AGENT_USER}

CONF = """\
# ansim: the Pi's mosquitto for bells and streetlights on the LAN. Written by `ansim provision`;
# install as /etc/mosquitto/conf.d/ansim.conf, with passwd and acl in {dir}/ (README: "The
# Pi's mosquitto on the LAN"). Debian's /etc/mosquitto/mosquitto.conf includes conf.d/.

# mosquitto 2 listens on localhost only unless a listener is configured: this one takes every
# interface (the bells and streetlights are on the WiFi); the agent connects to it on 127.0.0.1.
listener {port}

# No login, no connection: every device has its own user name (its id) and password.
allow_anonymous false

# The user names and PBKDF2-SHA512 password hashes (mosquitto_passwd's format).
password_file {dir}/passwd

# A device publishes only on its own up and state topics and reads only its own down topic;
# only the agent publishes on down topics (light commands).
acl_file {dir}/acl

# Frames are at most 64 bytes and topics under 40: a client sending a longer packet (a 1 MB
# message once made a streetlight fail with MemoryError) is disconnected before it is passed on.
max_packet_size 1024

# Send small packets (PUBACKs) at once instead of waiting for Nagle's algorithm (~10 ms each).
set_tcp_nodelay true

# Keep the agent's session (frames queued for it while it restarts) and the retained
# online/offline states across a restart of mosquitto (Debian's mosquitto.conf sets it too).
persistence true

# Messages kept for a client that is away (the agent): mosquitto's default of 1000 would drop a
# bell press after a few minutes without the agent at a site of 200 devices; a bound (not 0,
# unlimited) so that a days-long outage cannot take all of the Pi's memory.
max_queued_messages {max_queued}
"""


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

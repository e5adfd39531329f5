"""A virtual street: devices with keys, a registry and an agent config on disk, as
``ansim provision`` would leave them, for tests, benchmarks and the demo.

Geometry: the agent stands at Seoul City Hall; streetlights every 20 m along a street running
east; bells and cameras along it; wearables carried by people nearby.

``center_tls`` (a ``ansim_simulators.fixtures.pki.TlsFiles`` with the agent's client certificate, its CN
the agent id) writes ``[center] tls = true`` with its cafile, certfile and keyfile; without it
the center link is plain, for loopback tests.
"""

import copy
import json
import os
import shutil
from pathlib import Path

ORIGIN = (37.5663, 126.9779)
METRES_PER_DEG_LAT = 111_320.0


def offset(origin, east_m, north_m=0.0):
    """(lat, lon) ``east_m`` east and ``north_m`` north of ``origin`` (flat-earth, fine for a street)."""
    import math
    lat = origin[0] + north_m / METRES_PER_DEG_LAT
    lon = origin[1] + east_m / (METRES_PER_DEG_LAT * math.cos(math.radians(origin[0])))
    return (round(lat, 7), round(lon, 7))


class SimDevice:
    def __init__(self, device_id, role, key, position=None):
        self.device_id, self.role, self.key, self.position = device_id, role, key, position

    @property
    def hex_id(self):
        return "%08x" % self.device_id


class Street:
    def __init__(self, directory, center_port, local_port=None, lights=10, bells=2, wearables=3,
                 cameras=4, spacing_m=20.0, agent_id="edge-test-01", overrides=None, center_tls=None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "keys").mkdir(exist_ok=True)
        self.wearables = [self._device(0x00010001 + i, "wearable") for i in range(wearables)]
        self.bells = [self._device(0x00020001 + i, "bell", offset(ORIGIN, 30 + 100 * i, 5)) for i in range(bells)]
        self.lights = [self._device(0x00030001 + i, "streetlight", offset(ORIGIN, spacing_m * i)) for i in range(lights)]
        self.cameras = [("CCTV-%03d" % (i + 1), offset(ORIGIN, 50 * i, -8)) for i in range(cameras)]
        self.registry_path = self.directory / "registry.toml"
        self.config_path = self.directory / "agent.toml"
        self.agent_id = agent_id
        self.center_port, self.overrides, self.center_tls = center_port, overrides or {}, center_tls
        self._write_registry()
        self._write_config(center_port, local_port, self.overrides, center_tls)

    def neighbour(self, directory, agent_id, local_port=None):
        """Another agent of the same district hearing the same devices (the same keys), with
        its own id, data and local broker, and the same center."""
        twin = copy.copy(self)
        twin.directory = Path(directory)
        shutil.copytree(self.directory / "keys", twin.directory / "keys")
        twin.registry_path = twin.directory / "registry.toml"
        twin.config_path = twin.directory / "agent.toml"
        shutil.copyfile(self.registry_path, twin.registry_path)
        twin.agent_id = agent_id
        twin._write_config(self.center_port, local_port, self.overrides, self.center_tls)
        return twin

    @property
    def devices(self):
        return self.wearables + self.bells + self.lights

    def _device(self, device_id, role, position=None):
        device = SimDevice(device_id, role, os.urandom(16), position)
        key_path = self.directory / "keys" / (device.hex_id + ".key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(device.key.hex() + "\n")
        return device

    def _write_registry(self):
        lines = []
        for d in self.devices:
            lines += ["[[device]]", 'id = "%s"' % d.hex_id, 'role = "%s"' % d.role,
                      'key_file = "keys/%s.key"' % d.hex_id]
            if d.position:
                lines.append("position = { lat = %r, lon = %r }" % d.position)
            lines.append("")
        for ident, position in self.cameras:
            lines += ["[[camera]]", 'id = "%s"' % ident, "position = { lat = %r, lon = %r }" % position, ""]
        lines += ["[[facility]]", 'id = "PB-01"', 'kind = "police_box"', 'name = "Taepyeong-ro police box"',
                  "position = { lat = %r, lon = %r }" % offset(ORIGIN, 120, 40), ""]
        self.registry_path.write_text("\n".join(lines))

    def _write_config(self, center_port, local_port, overrides, center_tls=None):
        sections = {
            "agent": {"id": '"%s"' % self.agent_id, "site": '"jung-gu"',
                      "position": "{ lat = %r, lon = %r }" % ORIGIN,
                      "data_dir": '"data"', "registry": '"registry.toml"'},
            "local_mqtt": {"enabled": "true" if local_port else "false", "port": str(local_port or 1883)},
            "center": {"host": '"127.0.0.1"', "port": str(center_port), "tls": "false",
                       "district": '"jung-gu"'},
            "metrics": {"port": "0"},
        }
        if center_tls is not None:
            if center_tls.certfile is None or center_tls.keyfile is None:
                raise ValueError("center_tls needs the agent's certfile and keyfile")
            sections["center"].update({"tls": "true", "cafile": _toml_path(center_tls.cafile),
                                       "certfile": _toml_path(center_tls.certfile),
                                       "keyfile": _toml_path(center_tls.keyfile)})
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        text = "".join("[%s]\n%s\n" % (name, "".join("%s = %s\n" % kv for kv in values.items()))
                       for name, values in sections.items())
        self.config_path.write_text(text)


def _toml_path(path):
    """An absolute path as a TOML basic string (JSON's escaping is valid TOML)."""
    return json.dumps(str(Path(path).resolve()))

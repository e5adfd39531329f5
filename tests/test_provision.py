"""`ansim provision`: ids, keys and a registry the agent loads; secrets never printed; a rerun
never rotates a key; rotation only on request."""

import json
import stat
import subprocess
import sys

from ansim_agent import registry as registry_module
from ansim_protocol import frames
from ansim_protocol.crypto import DeviceKeys

SUPERVISION = {"mains_s": 90, "wearable_s": 90000}


def provision(*args):
    return subprocess.run([sys.executable, "-m", "ansim_tools.cli", "provision", *args],
                          capture_output=True, text=True, timeout=60)


def keys_of(site):
    return {p.name: p.read_text() for p in (site / "keys").iterdir()}


def test_devices_made_by_provision_verify_at_the_agent_and_no_secret_is_printed(tmp_path):
    site = tmp_path / "site"
    out = provision("add", "--site", str(site), "--role", "bell", "--position", "37.5663,126.9779",
                    "--broker", "10.0.0.2:1883", "--name", "Bell at City Hall")
    out2 = provision("add", "--site", str(site), "--role", "wearable", "--count", "3")
    assert out.returncode == 0 and out2.returncode == 0, out.stderr + out2.stderr
    registry = registry_module.load(site / "registry.toml", SUPERVISION)
    assert sorted("%08x" % i for i in registry.devices) == ["00010001", "00010002", "00010003", "00020001"]
    config = json.loads((site / "devices" / "00020001.json").read_text())
    assert config["broker"] == {"host": "10.0.0.2", "port": 1883} and config["position"] == [37.5663, 126.9779]
    frame = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bytes.fromhex(config["key"])), 0x20001, 1)
    assert frames.unpack(frame, registry.get(0x20001).keys).kind == "bell_press"
    for secret in keys_of(site).values():
        assert secret.strip() not in out.stdout + out2.stdout + out.stderr + out2.stderr
    for path in list((site / "keys").iterdir()) + list((site / "devices").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_rerun_adds_devices_and_never_changes_a_key(tmp_path):
    site = tmp_path / "site"
    provision("add", "--site", str(site), "--role", "streetlight", "--count", "2", "--position", "37.5,127.0")
    before = keys_of(site)
    provision("add", "--site", str(site), "--role", "streetlight", "--count", "1", "--position", "37.5,127.001")
    after = keys_of(site)
    assert {k: after[k] for k in before} == before and len(after) == 3


def test_rotate_changes_one_key_and_says_to_flash_again(tmp_path):
    site = tmp_path / "site"
    provision("add", "--site", str(site), "--role", "wearable", "--count", "2")
    before = keys_of(site)
    result = provision("rotate", "--site", str(site), "--device", "00010002")
    after = keys_of(site)
    assert result.returncode == 0 and "flash it again" in result.stdout
    assert after["00010001.key"] == before["00010001.key"] and after["00010002.key"] != before["00010002.key"]
    assert json.loads((site / "devices" / "00010002.json").read_text())["key"] == after["00010002.key"].strip()


def test_cameras_added_by_hand_survive_provisioning(tmp_path):
    site = tmp_path / "site"
    provision("add", "--site", str(site), "--role", "wearable")
    with open(site / "registry.toml", "a") as f:
        f.write('\n[[camera]]\nid = "CCTV-9"\nposition = { lat = 37.5, lon = 127.0 }\n')
    provision("add", "--site", str(site), "--role", "wearable")
    registry = registry_module.load(site / "registry.toml", SUPERVISION)
    assert [c.ident for c in registry.cameras] == ["CCTV-9"] and len(registry.devices) == 2


def test_mistakes_are_refused_with_a_fix(tmp_path):
    site = str(tmp_path / "site")
    cases = [
        (["add", "--site", site, "--role", "bell"], "needs --position"),
        (["add", "--site", site, "--role", "bell", "--position", "north"], "lat,lon"),
        (["add", "--site", site, "--role", "bell", "--position", "137,10"], "not on Earth"),
        (["add", "--site", site, "--role", "bell", "--position", "37,127", "--broker", "nohost"], "host:port"),
        (["rotate", "--site", site, "--device", "00099999"], "no device 00099999"),
        (["add", "--site", site, "--role", "wearable", "--set", "battery_pin"], "NAME=VALUE"),
        (["add", "--site", site, "--role", "wearable", "--set", "key=00"], "set by provisioning itself"),
    ]
    for args, message in cases:
        result = provision(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_role_settings_go_into_the_device_config_and_survive_a_key_rotation(tmp_path):
    site = tmp_path / "site"
    result = provision("add", "--site", str(site), "--role", "streetlight", "--position", "37.5,127.0",
                       "--set", "utc_offset_min=540", "--set", 'schedule={"on": "19:00", "off": "05:30"}',
                       "--set", "name_on_pole=A-17")
    assert result.returncode == 0, result.stderr
    path = site / "devices" / "00030001.json"
    config = json.loads(path.read_text())
    assert config["utc_offset_min"] == 540 and config["schedule"] == {"on": "19:00", "off": "05:30"}
    assert config["name_on_pole"] == "A-17"
    provision("rotate", "--site", str(site), "--device", "00030001")
    rotated = json.loads(path.read_text())
    assert rotated["key"] != config["key"]
    assert {k: v for k, v in rotated.items() if k != "key"} == {k: v for k, v in config.items() if k != "key"}

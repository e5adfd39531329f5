"""`ansim provision`: ids, keys and a registry the agent loads; secrets never printed; a rerun
never rotates a key; rotation only on request."""

import base64
import hashlib
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
    assert config["position"] == [37.5663, 126.9779]
    password = config["broker"].pop("password")
    assert config["broker"] == {"host": "10.0.0.2", "port": 1883, "username": "00020001"} and len(password) >= 32
    assert password not in out.stdout + out2.stdout + out.stderr + out2.stderr
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
    assert rotated["broker"].pop("password") != config["broker"].pop("password")  # the MQTT password too
    assert {k: v for k, v in rotated.items() if k != "key"} == {k: v for k, v in config.items() if k != "key"}



WIFI_PASSWORD = "correct horse battery staple"


def wifi_file(tmp_path, text=WIFI_PASSWORD + "\n", name="wifi.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_wifi_goes_into_bells_and_lights_configs_never_on_screen_and_survives_rotate_and_rerun(tmp_path):
    site = tmp_path / "site"
    wifi = ["--wifi-ssid", "Ansim Street", "--wifi-password-file", wifi_file(tmp_path)]
    results = [provision("add", "--site", str(site), "--role", "bell", "--position", "37.5,127.0", *wifi),
               provision("add", "--site", str(site), "--role", "streetlight", "--count", "2",
                         "--position", "37.5,127.001", "--broker", "192.168.0.10:1883", *wifi)]
    configs = {hex_id: json.loads((site / "devices" / (hex_id + ".json")).read_text())
               for hex_id in ("00020001", "00030001", "00030002")}
    for config in configs.values():
        assert config["wifi"] == {"ssid": "Ansim Street", "password": WIFI_PASSWORD}
    results.append(provision("rotate", "--site", str(site), "--device", "00030001"))
    results.append(provision("add", "--site", str(site), "--role", "streetlight", "--position", "37.5,127.002"))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert json.loads((site / "devices" / "00030001.json").read_text())["wifi"] == configs["00030001"]["wifi"]
    assert json.loads((site / "devices" / "00020001.json").read_text()) == configs["00020001"]  # untouched
    assert "wifi" not in json.loads((site / "devices" / "00030003.json").read_text())
    for r in results:
        assert WIFI_PASSWORD not in r.stdout + r.stderr and "horse" not in r.stdout + r.stderr


def test_wifi_mistakes_are_refused_without_showing_the_password(tmp_path):
    site = str(tmp_path / "site")
    bell = ["add", "--site", site, "--role", "bell", "--position", "37,127"]
    short = wifi_file(tmp_path, "hunter2\n", "short.txt")
    cases = [
        (["add", "--site", site, "--role", "wearable", "--wifi-ssid", "S", "--wifi-password-file",
          wifi_file(tmp_path)], "for bells and streetlights"),
        (bell + ["--wifi-ssid", "S"], "both --wifi-ssid and --wifi-password-file"),
        (bell + ["--wifi-password-file", wifi_file(tmp_path)], "both --wifi-ssid and --wifi-password-file"),
        (bell + ["--wifi-ssid", "S", "--wifi-password-file", str(tmp_path / "nope")], "cannot read it"),
        (bell + ["--wifi-ssid", "S" * 33, "--wifi-password-file", wifi_file(tmp_path)], "1 to 32 bytes"),
        (bell + ["--wifi-ssid", "S", "--wifi-password-file", short], "8 to 63"),
        (["add", "--site", site, "--role", "bell", "--position", "37,127", "--set", "wifi={}"],
         "set by provisioning itself"),
    ]
    for args, message in cases:
        result = provision(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "hunter2" not in result.stderr + result.stdout and WIFI_PASSWORD not in result.stderr
    assert not (tmp_path / "site" / "devices").exists() or not list((tmp_path / "site" / "devices").iterdir())


def passwd_entries(site):
    return dict(line.split(":", 1) for line in (site / "mosquitto" / "passwd").read_text().splitlines())


def verifies(entry, password):
    """Whether a mosquitto 2 password-file hash ($7$: PBKDF2-SHA512) is that of ``password``."""
    _, kind, iterations, salt, digest = entry.split("$")
    return kind == "7" and hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                               int(iterations)) == base64.b64decode(digest)


def test_each_bell_and_light_gets_its_own_broker_login_kept_on_rerun_and_changed_by_rotate(tmp_path):
    site = tmp_path / "site"
    results = [provision("add", "--site", str(site), "--role", "bell", "--position", "37.5,127.0"),
               provision("add", "--site", str(site), "--role", "streetlight", "--count", "2",
                         "--position", "37.5,127.001", "--mosquitto-dir", "/etc/mosquitto/ansim-test"),
               provision("add", "--site", str(site), "--role", "wearable")]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]

    def logins():
        return {p.stem: json.loads(p.read_text()).get("broker") for p in (site / "devices").iterdir()}

    before = logins()
    assert before["00010001"] is None  # a wearable has no broker
    agent_password = (site / "mosquitto" / "agent.password").read_text().strip()
    entries = passwd_entries(site)
    assert sorted(entries) == ["00020001", "00030001", "00030002", "ansim-agent"]
    assert verifies(entries["ansim-agent"], agent_password)
    for hex_id in ("00020001", "00030001", "00030002"):
        assert before[hex_id]["username"] == hex_id and verifies(entries[hex_id], before[hex_id]["password"])
    assert len({before[h]["password"] for h in entries if h != "ansim-agent"} | {agent_password}) == 4
    conf = (site / "mosquitto" / "ansim.conf").read_text()
    assert "\npassword_file /etc/mosquitto/ansim-test/passwd\n" in conf and "\nallow_anonymous false\n" in conf
    assert "\nacl_file /etc/mosquitto/ansim-test/acl\n" in conf and "\nlistener 1883\n" in conf

    # A rerun keeps every password (and the --mosquitto-dir of last time); rotate changes one.
    rerun = provision("add", "--site", str(site), "--role", "bell", "--position", "37.5,127.01")
    rotated = provision("rotate", "--site", str(site), "--device", "00030002")
    assert rerun.returncode == 0 and rotated.returncode == 0, rerun.stderr + rotated.stderr
    assert "new key and MQTT password for 00030002" in rotated.stdout and "reload mosquitto" in rotated.stdout
    after = logins()
    assert {h: after[h] for h in ("00020001", "00030001")} == {h: before[h] for h in ("00020001", "00030001")}
    assert after["00030002"]["password"] != before["00030002"]["password"]
    assert (site / "mosquitto" / "agent.password").read_text().strip() == agent_password
    entries = passwd_entries(site)
    assert verifies(entries["00030002"], after["00030002"]["password"])
    assert not verifies(entries["00030002"], before["00030002"]["password"])
    assert verifies(entries["00020002"], after["00020002"]["password"])
    assert "/etc/mosquitto/ansim-test/passwd" in (site / "mosquitto" / "ansim.conf").read_text()

    # Secrets: never on screen; every file holding one readable by its owner only.
    printed = "".join(r.stdout + r.stderr for r in results + [rerun, rotated])
    for login in list(before.values()) + list(after.values()):
        if login:
            assert login["password"] not in printed
    assert agent_password not in printed
    for path in [site / "mosquitto" / "passwd", site / "mosquitto" / "agent.password",
                 *(site / "devices").iterdir(), *(site / "keys").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list((site / "mosquitto").glob("*.tmp"))


def test_without_mosquitto_passwd_the_hashes_are_written_in_its_format(tmp_path, monkeypatch):
    from ansim_tools import provision as provision_module
    monkeypatch.setattr(provision_module.shutil, "which", lambda name, **kw: None)
    site = provision_module.Site(tmp_path / "site")
    site.add("bell", 1, [37.5, 127.0], None, None)
    password = json.loads((tmp_path / "site" / "devices" / "00020001.json").read_text())["broker"]["password"]
    assert verifies(passwd_entries(tmp_path / "site")["00020001"], password)


def test_a_relative_mosquitto_dir_is_refused(tmp_path):
    result = provision("add", "--site", str(tmp_path / "site"), "--role", "wearable", "--mosquitto-dir", "etc/m")
    assert result.returncode == 2 and "absolute path" in result.stderr

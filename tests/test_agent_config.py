"""A broken configuration or registry stops `ansim agent` at once with exit status 2 and ONE
line on stderr that names the file, the section and key, the problem and the fix: what an
engineer on call at 3 a.m. needs, instead of a traceback. Run through the real command."""

import socket
import subprocess
import sys

import pytest

from ansim_agent import config as config_module
from ansim_agent import registry as registry_module

RUN_TIMEOUT_S = 30  # a case that wrongly starts the agent fails instead of hanging


class Site:
    """An agent.toml, a registry.toml and key files in one directory; tests break them."""

    def __init__(self, directory):
        self.dir = directory
        self.config_path = directory / "agent.toml"
        self.registry_path = directory / "registry.toml"
        self.sections = {
            "agent": {"id": '"edge-test-01"', "position": "{ lat = 37.5663, lon = 126.9779 }",
                      "data_dir": '"data"', "registry": '"registry.toml"'},
            "local_mqtt": {"enabled": "false"},
            "center": {"host": '"127.0.0.1"', "port": "1", "tls": "false", "district": '"jung-gu"'},
            "metrics": {"port": "0"},
        }
        self.devices = [
            {"id": '"00010001"', "role": '"wearable"', "key_file": '"keys/00010001.key"'},
            {"id": '"00020001"', "role": '"bell"', "key_file": '"keys/00020001.key"',
             "position": "{ lat = 37.5663, lon = 126.978 }"},
        ]
        self.keys = {"00010001": ("00112233445566778899aabbccddeeff", 0o600),
                     "00020001": ("ffeeddccbbaa99887766554433221100", 0o600)}
        self.config_text = None  # replaces the generated config when set

    def write(self):
        (self.dir / "keys").mkdir(exist_ok=True)
        for hex_id, (text, mode) in self.keys.items():
            path = self.dir / "keys" / (hex_id + ".key")
            path.write_text(text + "\n")
            path.chmod(mode)
        self.config_path.write_text(self.config_text if self.config_text is not None else _toml(
            (name, values) for name, values in self.sections.items()))
        self.registry_path.write_text(_toml(("[device]", d) for d in self.devices))


def _toml(tables):
    return "".join("[%s]\n%s\n" % (name, "".join("%s = %s\n" % kv for kv in values.items()))
                   for name, values in tables)


def ansim_agent(config_path, action=None):
    argv = [sys.executable, "-m", "ansim_tools.cli", "agent"] + ([action] if action else [])
    return subprocess.run(argv + ["--config", str(config_path)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def assert_one_line_error(result, *fragments):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, "expected one line on stderr, got:\n" + result.stderr
    assert lines[0].startswith("ansim agent: bad configuration: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], "%r not in: %s" % (fragment, lines[0])
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_the_unbroken_site_is_valid(site):
    site.write()
    config = config_module.load(site.config_path)
    registry = registry_module.load(config.agent["registry"], config.supervision)
    assert sorted(d.hex_id for d in registry.devices.values()) == ["00010001", "00020001"]


# -- the agent's config: both `agent run` and `agent status` refuse it -------------------------

def _set(section, key, value):
    return lambda site: site.sections.setdefault(section, {}).__setitem__(key, value)


def _drop(section, key):
    return lambda site: site.sections[section].pop(key)


def _text(text):
    def mutate(site):
        site.config_text = text
    return mutate


def _tls_without_certfile(site):
    for name in ("ca.crt", "agent.key"):
        (site.dir / name).write_text("PEM\n")
        (site.dir / name).chmod(0o600)
    site.sections["center"].update({"tls": "true", "cafile": '"ca.crt"', "keyfile": '"agent.key"'})


def _keyfile_mode(mode):
    def mutate(site):
        for name in ("ca.crt", "agent.crt", "agent.key"):
            (site.dir / name).write_text("PEM\n")
        (site.dir / "agent.key").chmod(mode)
        site.sections["center"].update({"tls": "true", "cafile": '"ca.crt"', "certfile": '"agent.crt"',
                                        "keyfile": '"agent.key"'})
    return mutate


def _local_password(mode, text="s3cret-agent-password\n", username=True):
    def mutate(site):
        (site.dir / "agent.password").write_text(text)
        (site.dir / "agent.password").chmod(mode)
        site.sections["local_mqtt"]["password_file"] = '"agent.password"'
        if username:
            site.sections["local_mqtt"]["username"] = '"ansim-agent"'
    return mutate


CONFIG_CASES = {
    "invalid TOML, line shown": (
        _text('[agent]\nid = "edge-test-01"\nsite = jung-gu\n'),
        ["agent.toml", "not valid TOML", "line 3", "fix the syntax"]),
    "unknown section": (
        _set("centre", "host", '"x"'),
        ["agent.toml", "[centre]", "unknown section", "did you mean center?", "remove it",
         "agent, local_mqtt, center"]),
    "unknown key lists the keys": (
        _set("center", "hots", '"x"'),
        ["agent.toml", "[center] hots", "unknown key", "did you mean host?",
         "the keys of [center] are host, port, tls"]),
    "missing [agent] id": (
        _drop("agent", "id"),
        ["agent.toml", "[agent] id", "missing (required)", 'add id = "..." under [agent]']),
    "missing [center] host": (
        _drop("center", "host"),
        ["agent.toml", "[center] host", "missing (required)", 'add host = "..." under [center]']),
    "wrong type": (
        _set("center", "port", '"abc"'),
        ["agent.toml", "[center] port", "must be an integer", "got 'abc'", "e.g. port = 8883"]),
    "a quoted number": (
        _set("local_mqtt", "port", '"1883"'),
        ["agent.toml", "[local_mqtt] port", "must be an integer", "remove the quotes: port = 1883"]),
    "port out of range": (
        _set("center", "port", "70000"),
        ["agent.toml", "[center] port", "must be between 1 and 65535", "got 70000"]),
    "retention_days out of range": (
        _set("agent", "retention_days", "0"),
        ["agent.toml", "[agent] retention_days", "must be between 1 and 3650", "got 0", "the default is 30"]),
    "below a minimum without a maximum": (
        _set("supervision", "mains_s", "5"),
        ["agent.toml", "[supervision] mains_s", "must be at least 10", "got 5"]),
    "bad choice": (
        _set("agent", "log_level", '"verbose"'),
        ["agent.toml", "[agent] log_level", "must be one of debug, info, warning, error", "got 'verbose'"]),
    "position without lon": (
        _set("agent", "position", "{ lat = 37.5663 }"),
        ["agent.toml", "[agent] position", "must be { lat = <degrees>, lon = <degrees> }",
         "e.g. position = { lat ="]),
    "position with lat and lon swapped": (
        _set("agent", "position", "{ lat = 126.9779, lon = 37.5663 }"),
        ["agent.toml", "[agent] position", "lat must be within +-90", "swapped"]),
    "tls without certfile": (
        _tls_without_certfile,
        ["agent.toml", "[center] certfile", "required when tls = true", 'add certfile = "<file>" under [center]']),
    "a TLS file that does not exist": (
        _set("center", "cafile", '"nowhere/ca.crt"'),
        ["agent.toml", "[center] cafile", "nowhere/ca.crt does not exist", "fix the path"]),
    "keyfile readable by others": (
        _keyfile_mode(0o644),
        ["agent.toml", "[center] keyfile", "agent.key is readable by others (mode 644)", "run `chmod 600 "]),
    "local broker password readable by others": (
        _local_password(0o644),
        ["agent.toml", "[local_mqtt] password_file", "agent.password is readable by others (mode 644)",
         "chmod 600"]),
    "local broker password without a username": (
        _local_password(0o600, username=False),
        ["agent.toml", "[local_mqtt] password_file", "without username", 'username = "ansim-agent"']),
    "local broker password file missing": (
        lambda site: site.sections["local_mqtt"].update(username='"ansim-agent"', password_file='"nope.password"'),
        ["agent.toml", "[local_mqtt] password_file", "nope.password does not exist", "fix the path"]),
    "local broker password file empty": (
        _local_password(0o600, text=""),
        ["agent.toml", "[local_mqtt] password_file", "is empty", "agent.password"]),
    "keyfile readable by the group": (
        _keyfile_mode(0o640),
        ["agent.toml", "[center] keyfile", "(mode 640)", "chmod 600"]),
    # Values that go into MQTT client ids and topics: a bad one would not fail at start but loop
    # reconnecting ('+' in the client id and the ack topic) or kill the uplink thread (a '/').
    "a '+' in the agent id": (
        _set("agent", "id", '"edge+01"'),
        ["agent.toml", "[agent] id", "may hold only letters A-Z a-z, digits, '.', '_' and '-'", "MQTT client id",
         'got "edge+01" (with \'+\')', 'e.g. id = "edge-01"']),
    "a space in the agent id": (
        _set("agent", "id", '"edge 01"'),
        ["[agent] id", 'got "edge 01" (with a space)', 'e.g. id = "edge-01"']),
    "an empty agent id": (
        _set("agent", "id", '""'),
        ["[agent] id", "must not be empty", 'e.g. id = "edge-jung-01"']),
    "an agent id too long for a client id": (
        _set("agent", "id", '"%s"' % ("e" * 59)),
        ["[agent] id", "must be at most 58 characters", "'<id>-local' on the local broker",
         "MQTT client ids are kept to 64", "got 59", "shorten it"]),
    "a '#' in the site": (
        _set("agent", "site", '"jung#1"'),
        ["[agent] site", "must be one MQTT topic segment, without '/', '+', '#', spaces or control characters",
         'got "jung#1" (with \'#\')', 'e.g. site = "jung-1"']),
    "a space, '/' and '#' in the district": (
        _set("center", "district", '"jung gu/#"'),
        ["[center] district", "must be one MQTT topic segment", "ansim/center/v1/<district>/alerts/",
         'got "jung gu/#" (with a space, \'/\', \'#\')', 'e.g. district = "jung-gu"']),
    "a control character in the district": (
        _set("center", "district", '"jung\\u0007gu"'),
        ["[center] district", 'got "jung\\u0007gu" (with U+0007, a control or invisible character)',
         'e.g. district = "jung-gu"']),
    "a NUL in the fallback": (
        _set("center", "fallback", '"city\\u0000wide"'),
        ["[center] fallback", "ansim/center/v1/<fallback>/alerts/", "(with a NUL)", 'e.g. fallback = "city-wide"']),
    "an empty fallback": (
        _set("center", "fallback", '""'),
        ["[center] fallback", "must not be empty", 'e.g. fallback = "citywide"']),
    "a district too long": (
        _set("center", "district", '"%s"' % ("d" * 65)),
        ["[center] district", "must be at most 64 characters", "got 65"]),
    "plaintext to a host that is not loopback": (
        _set("center", "host", '"center.example"'),
        ["agent.toml", "[center] tls", "false toward center.example", "not this machine (loopback)",
         "unencrypted", "set tls = true with cafile, certfile and keyfile",
         "or add allow_plaintext = true under [center] if this is a lab network"]),
    "plaintext to a LAN address": (
        _set("center", "host", '"192.168.0.10"'),
        ["[center] tls", "false toward 192.168.0.10", "allow_plaintext = true"]),
    "allow_plaintext not a boolean": (
        _set("center", "allow_plaintext", '"yes"'),
        ["[center] allow_plaintext", "must be true or false", "got 'yes'"]),
}


@pytest.mark.parametrize("action", ["run", "status"])
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_bad_config_is_one_line_naming_key_problem_and_fix(site, case, action):
    mutate, fragments = CONFIG_CASES[case]
    mutate(site)
    site.write()
    assert_one_line_error(ansim_agent(site.config_path, action), *fragments)


@pytest.mark.parametrize("section, key, value", [
    ("agent", "id", "e" * 58),  # its local client id, e...e-local, is 64 characters
    ("agent", "id", "Edge_jung.01-b"),
    ("agent", "site", "중구"),  # a topic may hold any UTF-8 but '/', '+', '#' and control characters
    ("center", "district", "jung-gu_2"),
    ("center", "fallback", "seoul.citywide"),
])
def test_names_that_mqtt_carries_are_accepted(site, section, key, value):
    _set(section, key, '"%s"' % value)(site)
    site.write()
    assert getattr(config_module.load(site.config_path), section)[key] == value


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "LOCALHOST", "::1"])
def test_plaintext_to_this_machine_needs_no_opt_in(site, host):
    _set("center", "host", '"%s"' % host)(site)
    site.write()
    config = config_module.load(site.config_path)
    assert (config.center["tls"], config.center["allow_plaintext"]) == (False, False)


def test_plaintext_to_a_lab_network_with_the_explicit_opt_in(site):
    _set("center", "host", '"192.168.0.10"')(site)
    _set("center", "allow_plaintext", "true")(site)
    site.write()
    config = config_module.load(site.config_path)
    assert (config.center["host"], config.center["tls"], config.center["allow_plaintext"]) == \
        ("192.168.0.10", False, True)


def test_a_fallback_that_is_the_district_itself_is_refused(site):
    _set("center", "fallback", '"jung-gu"')(site)
    site.write()
    assert_one_line_error(ansim_agent(site.config_path), "[center] fallback", "also the district", "citywide")


def test_a_missing_config_file(tmp_path):
    missing = tmp_path / "etc" / "agent.toml"
    assert_one_line_error(ansim_agent(missing), str(missing), "no such file", "pass --config")


def test_the_keyfile_message_names_the_exact_file_to_chmod(site):
    _keyfile_mode(0o644)(site)
    site.write()
    with pytest.raises(config_module.ConfigError) as err:
        config_module.load(site.config_path)
    assert str(err.value).endswith("run `chmod 600 %s`" % (site.dir / "agent.key"))
    (site.dir / "agent.key").chmod(0o600)
    assert config_module.load(site.config_path).center["keyfile"] == site.dir / "agent.key"


# -- the registry: `agent run` refuses it before starting anything ------------------------------

def _device(index, key, value):
    def mutate(site):
        if value is None:
            site.devices[index].pop(key)
        else:
            site.devices[index][key] = value
    return mutate


def _key(hex_id, text=None, mode=0o600):
    def mutate(site):
        if text is None:
            del site.keys[hex_id]
        else:
            site.keys[hex_id] = (text, mode)
    return mutate


def _duplicate(site):
    site.devices.append(dict(site.devices[1], name='"the same bell again"'))


REGISTRY_CASES = {
    "registry file missing": (
        _set("agent", "registry", '"devices/registry.toml"'),
        ["devices/registry.toml", "no such file", "fix [agent] registry in", "agent.toml"]),
    "duplicate device id": (
        _duplicate,
        ["registry.toml", "[[device]] #3 (00020001) id", "already used by [[device]] #2",
         "remove the duplicate"]),
    "id not hex": (
        _device(0, "id", '"0001000g"'),
        ["registry.toml", "[[device]] #1 id", "must be 8 lowercase hex digits", "got '0001000g'"]),
    "id in capitals": (
        _device(0, "id", '"0001ABCD"'),
        ["registry.toml", "[[device]] #1 id", "must be 8 lowercase hex digits", "got '0001ABCD'"]),
    "id too short": (
        _device(0, "id", '"10001"'),
        ["registry.toml", "[[device]] #1 id", "must be 8 lowercase hex digits", "got '10001'"]),
    "unknown role": (
        _device(1, "role", '"siren"'),
        ["registry.toml", "[[device]] #2 (00020001) role", "must be one of wearable, bell, streetlight",
         "got 'siren'"]),
    "fixed device without position": (
        _device(1, "position", None),
        ["registry.toml", "[[device]] #2 (00020001) position", "missing", "a bell is fixed",
         "add position = { lat"]),
    "misspelt key": (
        _device(0, "postion", "{ lat = 37.5, lon = 126.9 }"),
        ["registry.toml", "[[device]] #1 postion", "unknown key", "did you mean position?"]),
    "key file missing": (
        _key("00020001"),
        ["registry.toml", "[[device]] #2 (00020001) key_file", "keys/00020001.key does not exist",
         "copy the device's key there"]),
    "key file of the wrong length": (
        _key("00020001", "00112233445566778899aabbccddee"),
        ["registry.toml", "[[device]] #2 (00020001) key_file", "must hold the device's 16-byte key as 32 hex digits",
         "it holds 15 bytes"]),
    "key file not hex": (
        _key("00020001", "not a key"),
        ["registry.toml", "[[device]] #2 (00020001) key_file", "32 hex digits", "it holds 9 characters"]),
    "key file readable by others": (
        _key("00010001", "00112233445566778899aabbccddeeff", 0o644),
        ["registry.toml", "[[device]] #1 (00010001) key_file", "keys/00010001.key is readable by others (mode 644)",
         "run `chmod 600 %s"]),
    "key_file key missing": (
        _device(0, "key_file", None),
        ["registry.toml", "[[device]] #1 (00010001) key_file", "missing", 'add key_file = "keys/00010001.key"']),
    "supervision_s not a number": (
        _device(1, "supervision_s", '"90"'),
        ["registry.toml", "[[device]] #2 (00020001) supervision_s", "must be an integer", "got '90'"]),
}


@pytest.mark.parametrize("case", REGISTRY_CASES)
def test_a_bad_registry_stops_agent_run_with_one_line(site, case):
    mutate, fragments = REGISTRY_CASES[case]
    mutate(site)
    site.write()
    fragments = [f.replace("%s", str(site.dir / "keys" / "00010001.key")) for f in fragments]
    assert_one_line_error(ansim_agent(site.config_path, "run"), *fragments)


def test_a_misspelt_registry_table_is_not_an_empty_registry(site):
    site.write()
    site.registry_path.write_text(site.registry_path.read_text().replace("[[device]]", "[[devices]]"))
    assert_one_line_error(ansim_agent(site.config_path, "run"), "registry.toml", "devices", "unknown table",
                          "did you mean device?", "[[device]], [[camera]], [[facility]]")


def test_invalid_registry_toml_shows_the_line(site):
    site.write()
    site.registry_path.write_text('[[device]]\nid = "00010001"\nrole = wearable\n')
    assert_one_line_error(ansim_agent(site.config_path, "run"), "registry.toml", "not valid TOML", "line 3")


def test_tls_files_that_do_not_load_stop_agent_run_with_one_line(site):
    _keyfile_mode(0o600)(site)  # "PEM\n" in each: not a certificate
    site.write()
    assert_one_line_error(ansim_agent(site.config_path, "run"), "agent.toml", "[center] cafile",
                          "is not a usable CA certificate", "PEM")


def test_the_registry_error_is_the_same_line_when_the_agent_is_started_in_process(site):
    """service.Agent loads the registry itself: the error there is the same ConfigError."""
    _device(1, "role", '"siren"')(site)
    site.write()
    config = config_module.load(site.config_path)
    from ansim_agent.service import Agent
    with pytest.raises(config_module.ConfigError, match=r"\[\[device\]\] #2 \(00020001\) role: must be one of"):
        Agent(config)


def test_a_metrics_port_in_use_stops_agent_run_with_one_line(site):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        _set("metrics", "port", str(port))(site)
        site.write()
        assert_one_line_error(ansim_agent(site.config_path, "run"), "agent.toml", "[metrics] port",
                              "127.0.0.1:%d is in use" % port, "set another port (0 turns metrics off)")


def test_a_data_dir_that_cannot_be_created_stops_agent_run_with_one_line(site):
    _set("agent", "data_dir", '"registry.toml/data"')(site)  # under a file: not even root can
    site.write()
    assert_one_line_error(ansim_agent(site.config_path, "run"), "agent.toml", "[agent] data_dir",
                          "cannot create %s" % (site.dir / "registry.toml" / "data"), "choose another directory")

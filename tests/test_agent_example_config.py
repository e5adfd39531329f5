"""The documented example configuration is valid and lists every setting there is."""

import pathlib
import shutil
import tomllib

from ansim_agent import config as config_module

EXAMPLE = pathlib.Path(config_module.__file__).parent / "agent.example.toml"


def test_example_config_validates_and_documents_every_key(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "agent.toml")
    for name in ("center-ca.crt", "edge-jung-01.crt", "edge-jung-01.key"):
        (tmp_path / name).write_text("PEM\n")
    (tmp_path / "edge-jung-01.key").chmod(0o600)
    (tmp_path / "mosquitto").mkdir()
    (tmp_path / "mosquitto" / "agent.password").write_text("not-a-real-password\n")
    (tmp_path / "mosquitto" / "agent.password").chmod(0o600)
    config = config_module.load(tmp_path / "agent.toml")
    assert config.center["keyfile"] == tmp_path / "edge-jung-01.key"
    raw = tomllib.loads(EXAMPLE.read_text())
    documented = {(section, key) for section, values in raw.items() for key in values}
    known = {(section, key) for section, settings in config_module.SCHEMA.items() for key in settings}
    assert known - documented == {("ble", "virtual_air"), ("ble", "virtual_air_tx")}  # simulators only

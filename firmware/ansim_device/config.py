"""The device's configuration: /config.json, written by ``ansim provision`` and copied by
``ansim flash`` ({"device_id": "00030001", "role": "streetlight", "key": hex, "position":
[lat, lon], "broker": {"host": ..., "port": ...}} plus optional role settings)."""

import json

PATH = "/config.json"


class ConfigError(Exception):
    pass


def load(path=PATH):
    """The configuration as a dict, checked for what every role needs; ConfigError (with a
    message for the person at the serial console) if the file is missing or broken."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("%s is missing: provision the device and flash its config "
                          "(ansim provision add ..., then ansim flash)" % path)
    try:
        config = json.loads(text)
    except ValueError:
        raise ConfigError("%s is not valid JSON: flash the device's config again" % path)
    if not isinstance(config, dict):
        raise ConfigError("%s must hold a JSON object" % path)
    for name in ("device_id", "role", "key"):
        if name not in config:
            raise ConfigError("%s has no %r" % (path, name))
    try:
        config["device_id_int"] = int(config["device_id"], 16)
        key = bytes.fromhex(config["key"])
    except (ValueError, TypeError):
        raise ConfigError("%s: device_id and key must be hex" % path)
    if len(key) != 16:
        raise ConfigError("%s: key must be 16 bytes (32 hex digits)" % path)
    config["key_bytes"] = key
    return config


def print_error(err):
    print("ansim: configuration error:", err)

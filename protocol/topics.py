"""The MQTT topic scheme between devices and the edge agent's local broker (SPEC.md, 6.2).

``ansim/v1/dev/{device_id}/{up,down,state}`` for fixed devices and
``ansim/v1/relay/{relay_id}/up`` for frames that a BLE relay radio heard over the air.
Payloads on ``up`` and ``down`` are raw frames; ``state`` carries the retained
``online``/``offline`` availability that a device's last will also sets.
"""

from .errors import TOPIC, FrameError

ROOT = "ansim/v1/"
DEV = "dev"
RELAY = "relay"
UP = "up"
DOWN = "down"
STATE = "state"
CHANNELS = {DEV: (UP, DOWN, STATE), RELAY: (UP,)}
UPLINK_FILTER = ROOT + DEV + "/+/" + UP
STATE_FILTER = ROOT + DEV + "/+/" + STATE
RELAY_FILTER = ROOT + RELAY + "/+/" + UP


def topic(device_id, channel, scope=DEV):
    return "%s%s/%08x/%s" % (ROOT, scope, device_id, channel)


def parse(name):
    """``(scope, id, channel)`` of an ansim topic, or FrameError."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] + "/" != ROOT or parts[2] not in CHANNELS:
        raise FrameError(TOPIC, "%r is not %s{dev,relay}/<id>/<channel>" % (name, ROOT))
    scope, ident, channel = parts[2], parts[3], parts[4]
    if channel not in CHANNELS[scope]:
        raise FrameError(TOPIC, "%r: a %s topic ends in one of %s" % (name, scope, "/".join(CHANNELS[scope])))
    try:
        number = int(ident, 16)
    except ValueError:
        raise FrameError(TOPIC, "%r: the id is not hexadecimal" % name)
    if ident != "%08x" % number:
        raise FrameError(TOPIC, "%r: the id must be 8 lowercase hex digits" % name)
    return scope, number, channel

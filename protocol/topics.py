"""The MQTT topic scheme between devices and the edge agent's local broker (SPEC.md, "MQTT").

Payloads on ``up`` and ``down`` are raw frames; ``state`` carries the retained
``online``/``offline`` availability that a device's last will also sets.
"""

from .errors import TOPIC, FrameError

PREFIX = "ansim/v1/dev/"
UP = "up"
DOWN = "down"
STATE = "state"
CHANNELS = (UP, DOWN, STATE)
UPLINK_FILTER = PREFIX + "+/" + UP
STATE_FILTER = PREFIX + "+/" + STATE


def topic(device_id, channel):
    return "%s%08x/%s" % (PREFIX, device_id, channel)


def parse(name):
    """``(device_id, channel)`` of an ansim device topic, or FrameError."""
    if not name.startswith(PREFIX):
        raise FrameError(TOPIC, "%r is not under %s" % (name, PREFIX))
    parts = name[len(PREFIX):].split("/")
    if len(parts) != 2 or len(parts[0]) != 8 or parts[1] not in CHANNELS:
        raise FrameError(TOPIC, "%r is not %s<8 hex digits>/{up,down,state}" % (name, PREFIX))
    try:
        device_id = int(parts[0], 16)
    except ValueError:
        raise FrameError(TOPIC, "%r: device id is not hexadecimal" % name)
    if parts[0] != "%08x" % device_id:
        raise FrameError(TOPIC, "%r: device id must be 8 lowercase hex digits" % name)
    return device_id, parts[1]

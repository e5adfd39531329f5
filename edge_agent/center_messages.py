"""What the control center may send an agent (edge_agent/CENTER_API.md), checked before any
of it reaches the core: acknowledgements, walk-home monitoring requests, and the frames other
agents of the district accepted.

Anything else, whatever its JSON shape or size, is ``Refused`` with a reason for the log and
the metrics; nothing the center sends can raise anywhere else in the agent.
"""

import json
import math
import re

from ansim_protocol import frames

ACK_STATUSES = tuple(frames.ACK_STATUSES.values())
MONITOR_ACTIONS = ("start", "update", "stop", "arrived")
MAX_MESSAGE = 64 * 1024
MAX_ROUTE_POINTS = 1000
MAX_SESSION = 64
# alerts.alert_id of a frame, or of a device_online / device_offline event
ALERT_ID = re.compile(r"\A[0-9a-f]{8}-(?:[0-9]{1,10}|online-[0-9]{1,15}|offline-[0-9]{1,15})\Z")
DEVICE_HEX = re.compile(r"\A[0-9a-f]{8}\Z")
HEX_BYTES = re.compile(r"\A(?:[0-9a-fA-F]{2})+\Z")
FRAME_MAX = 64  # SPEC.md 6.3: no frame is longer
MAX_AGENT_ID = 64


class Refused(ValueError):
    """A message from the center that the agent does not act on; ``str()`` says why."""


def _json_object(payload):
    if len(payload) > MAX_MESSAGE:
        raise Refused("%d bytes, more than %d" % (len(payload), MAX_MESSAGE))
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        raise Refused("not JSON") from None
    if not isinstance(message, dict):
        raise Refused("not a JSON object")
    return message


def parse_ack(payload):
    """(alert_id, status) of an acknowledgement, or Refused."""
    message = _json_object(payload)
    alert_id, status = message.get("alert_id"), message.get("status")
    if not isinstance(alert_id, str) or not ALERT_ID.match(alert_id):
        raise Refused("alert_id %s is not an ansim alert id" % _short(alert_id))
    if status not in ACK_STATUSES:
        raise Refused("status %s is not one of %s" % (_short(status), ", ".join(ACK_STATUSES)))
    return alert_id, status


def parse_monitor(payload):
    """A walk-home request as ``{"session": str, "action": str, "route": [(lat, lon)] or None,
    "position": (lat, lon) or None}``, or Refused."""
    message = _json_object(payload)
    session, action = message.get("session"), message.get("action")
    if isinstance(session, bool) or not isinstance(session, (str, int)) or not 0 < len(str(session)) <= MAX_SESSION:
        raise Refused("session %s must be a string or integer of 1 to %d characters" % (_short(session), MAX_SESSION))
    if action not in MONITOR_ACTIONS:
        raise Refused("action %s is not one of %s" % (_short(action), ", ".join(MONITOR_ACTIONS)))
    route = None
    if action == "start":
        route = message.get("route")
        if not isinstance(route, list) or not 2 <= len(route) <= MAX_ROUTE_POINTS:
            raise Refused("route must be a list of 2 to %d [lat, lon] points" % MAX_ROUTE_POINTS)
        route = [_point(p, "route point") for p in route]
    position = message.get("position")
    if position is not None:
        position = _point(position, "position")
    return {"session": str(session), "action": action, "route": route, "position": position}


def parse_shared(device_hex, payload):
    """A frame another agent accepted, from ``accepted/{device_hex}``, as ``{"device_id": int,
    "frame": bytes, "epoch": int or None, "agent": str}``, or Refused. The frame itself is
    verified by the core with the device's key."""
    if not DEVICE_HEX.match(device_hex):
        raise Refused("topic's device id %s is not 8 lowercase hex digits" % _short(device_hex))
    message = _json_object(payload)
    agent, frame, epoch = message.get("agent"), message.get("frame"), message.get("epoch")
    if not isinstance(agent, str) or not 0 < len(agent) <= MAX_AGENT_ID:
        raise Refused("agent %s must be a string of 1 to %d characters" % (_short(agent), MAX_AGENT_ID))
    if not isinstance(frame, str) or len(frame) > 2 * FRAME_MAX or not HEX_BYTES.match(frame):
        raise Refused("frame %s must be 1 to %d bytes in hex" % (_short(frame), FRAME_MAX))
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= 0xFFFFFFFF):
        raise Refused("epoch %s must be null or an integer 0 to 4294967295" % _short(epoch))
    return {"device_id": int(device_hex, 16), "frame": bytes.fromhex(frame), "epoch": epoch, "agent": agent}


def _point(value, what):
    if not isinstance(value, list) or len(value) != 2:
        raise Refused("%s %s is not [lat, lon]" % (what, _short(value)))
    lat, lon = (_degrees(v, what) for v in value)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise Refused("%s %s is off the globe (lat within +-90, lon within +-180)" % (what, _short(value)))
    return lat, lon


def _degrees(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused("%s has a coordinate that is not a number: %s" % (what, _short(value)))
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer
        raise Refused("%s has a coordinate out of range" % what) from None
    if not math.isfinite(number):
        raise Refused("%s has a coordinate that is not finite" % what)
    return number


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

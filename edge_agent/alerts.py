"""The JSON alerts the agent sends to the control center (schema: edge_agent/alert.schema.json,
documented in edge_agent/CENTER_API.md).

Alert ids are derived from the device and its frame counter, so the same event heard by two
radios, two agents, or again after a crash has the same id: the center deduplicates by id.
"""

import datetime

SCHEMA_ID = "ansim.alert/1"


def alert_id(device_id, counter):
    return "%08x-%d" % (device_id, counter)


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


def build(kind, device, frame, reception, now, location, nearby, config, extra=None):
    """The alert body for one verified frame."""
    body = {
        "schema": SCHEMA_ID,
        "alert_id": alert_id(device.device_id, frame.counter),
        "type": kind,
        "test": kind == "test_sos",
        "device": {"id": device.hex_id, "role": device.role, "name": device.name},
        "agent": {"id": config.agent["id"], "site": config.agent["site"]},
        "received_at": iso(reception.received_at),
        "stored_at": iso(now),
        "location": location,
        "cameras": nearby["cameras"],
        "facilities": nearby["facilities"],
        "path": {"transport": reception.path, "receiver": reception.receiver, "rssi": reception.rssi},
        "fields": {k: v for k, v in frame.fields.items() if k not in ("lat", "lon", "accuracy_m")},
    }
    if extra:
        body.update(extra)
    return body


def availability(device, online, last_heard, now, config, reason):
    """A device-offline event (the device was silent longer than its supervision period:
    ``silent``, or the broker published its last will: ``last_will``), or the device-online
    event when it is heard again (``heard``)."""
    state = "online" if online else "offline"
    return {
        "schema": SCHEMA_ID,
        "alert_id": "%s-%s-%d" % (device.hex_id, state, round(last_heard * 1000)),  # ms: a device can come and go within a second
        "type": "device_" + state,
        "test": False,
        "device": {"id": device.hex_id, "role": device.role, "name": device.name},
        "agent": {"id": config.agent["id"], "site": config.agent["site"]},
        "received_at": iso(now),
        "stored_at": iso(now),
        "last_heard": iso(last_heard),
        "reason": reason,
        "supervision_s": device.supervision_s,
        "location": ({"lat": device.position[0], "lon": device.position[1], "accuracy_m": 5, "source": "registered"}
                     if device.position else None),
        "cameras": [],
        "facilities": [],
        "path": None,
        "fields": {},
    }

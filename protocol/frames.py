"""Frame codec of ansim protocol v1 (SPEC.md is the normative text; keep both in step).

Two envelopes carry the same frame types:
- *plain*: device id and counter in clear, body in clear, 8-byte tag. Fixed devices (bells,
  streetlights) and the agent's commands to them.
- *sealed*: always 24 bytes, a rotating 5-byte id, type/counter/body encrypted, 7-byte tag.
  Wearables, so that a passive scanner learns neither where nor what, nor who.

Field layouts are data (``TYPES``), the code that walks them is generic.
"""

import struct

from .crypto import RID_SIZE, equal, hmac_sha256, keystream, rotating_id, xor
from .errors import (DIRECTION, ENVELOPE, LENGTH, REPLAY, SHORT, TAG, TYPE, VALUE,
                     VERSION, FrameError)

VERSION_1 = 1

PLAIN_UP = 0
PLAIN_DOWN = 1
SEALED_UP = 2
SEALED_DOWN = 3
ENVELOPE_NAMES = ("plain-up", "plain-down", "sealed-up", "sealed-down")

PLAIN_TAG_SIZE = 8
SEALED_TAG_SIZE = 7
SEALED_SIZE = 24
SEALED_BODY_MAX = SEALED_SIZE - 1 - RID_SIZE - 4 - SEALED_TAG_SIZE  # 7
PLAIN_OVERHEAD = 1 + 4 + 4 + PLAIN_TAG_SIZE  # 17
COUNTER_MAX = (1 << 28) - 1

UP = 1
DOWN = 2
BOTH = UP | DOWN

# Field kinds: (size in bytes, lowest, highest, *other allowed values) for integers; enums map
# codes to names. COUNTER fields are 4 bytes holding a 28-bit counter: top 4 bits must be 0.
U8 = (1, 0, 0xFF)
U16 = (2, 0, 0xFFFF)
U24 = (3, 0, 0xFFFFFF)
U32 = (4, 0, 0xFFFFFFFF)
COUNTER = (4, 0, COUNTER_MAX)
PERCENT = (1, 0, 100)
BATTERY = (1, 0, 100, 255)  # 0-100 %, or 255 = mains powered / unknown; 101-254 are `value`
LAT = "lat"
LON = "lon"
_SCALE = 0xFFFFFF

LIGHT_ACTIONS = {1: "blink", 2: "brighten", 3: "restore"}
LIGHT_MODES = {0: "schedule", 1: "blink", 2: "brighten", 3: "fallback", 4: "off"}
ACK_STATUSES = {1: "received", 2: "dispatched", 3: "resolved", 4: "test-ok"}
MONITOR_ACTIONS = {1: "start", 2: "stop", 3: "arrived"}
TAMPER_STATES = {0: "closed", 1: "opened"}

LOCATION = (("lat", LAT), ("lon", LON), ("accuracy_m", U8))

# code: (name, fields, directions). Body sizes follow from the fields (SPEC.md table).
TYPES = {
    1: ("sos", LOCATION, UP),
    2: ("cancel", (("sos_counter", COUNTER),), UP),
    3: ("test_sos", LOCATION, UP),
    4: ("heartbeat", (("battery_pct", BATTERY), ("uptime_min", U24), ("faults", U8)), UP),
    5: ("low_battery", (("battery_pct", BATTERY), ("battery_mv", U16)), UP),
    6: ("tamper", (("state", TAMPER_STATES),), UP),
    7: ("bell_press", (("button", U8),), UP),
    8: ("light_command", (("action", LIGHT_ACTIONS), ("level_pct", PERCENT),
                          ("duration_s", U16), ("expires", U32)), DOWN),
    9: ("light_state", (("commanded_pct", PERCENT), ("actual_pct", PERCENT),
                        ("mode", LIGHT_MODES), ("faults", U8), ("last_command", COUNTER)), UP),
    10: ("center_ack", (("acked_counter", COUNTER), ("status", ACK_STATUSES)), DOWN),
    11: ("monitor", (("action", MONITOR_ACTIONS), ("session", U32)), BOTH),
    12: ("time", (("unix_time", U32),), DOWN),
}
TYPE_CODES = {}
for _code in TYPES:
    TYPE_CODES[TYPES[_code][0]] = _code


def _field_size(kind):
    if kind is LAT or kind is LON:
        return 3
    if isinstance(kind, dict):
        return 1
    return kind[0]


def body_size(code):
    n = 0
    for _, kind in TYPES[code][1]:
        n += _field_size(kind)
    return n


class Header:
    """What can be read from a frame without any key: enough to find the key."""

    def __init__(self, version, envelope, device_id, rid):
        self.version = version
        self.envelope = envelope
        self.device_id = device_id  # plain frames
        self.rid = rid              # sealed frames

    @property
    def sealed(self):
        return self.envelope >= SEALED_UP

    @property
    def downlink(self):
        return self.envelope & 1 == 1


class Frame(Header):
    """A verified, decoded frame: the header plus type, counter and fields."""

    def __init__(self, kind, counter, fields, envelope, device_id=None, rid=None):
        super().__init__(VERSION_1, envelope, device_id, rid)
        self.kind = kind
        self.counter = counter
        self.fields = fields

    def to_dict(self):
        """JSON-ready form; ``device_id`` and ``rid`` as lowercase hex (SPEC.md, "Identifiers")."""
        d = {
            "version": self.version,
            "envelope": ENVELOPE_NAMES[self.envelope],
            "type": self.kind,
            "counter": self.counter,
            "fields": self.fields,
        }
        if self.device_id is not None:
            d["device_id"] = device_id_hex(self.device_id)
        if self.rid is not None:
            d["rid"] = _hex(self.rid)
        return d


def device_id_hex(device_id):
    return "%08x" % device_id


def _hex(data):
    return "".join("%02x" % b for b in data)


def peek(data):
    """Read the header of ``data`` without a key. Raises FrameError."""
    if len(data) < 1:
        raise FrameError(SHORT, "empty frame")
    version = data[0] >> 4
    envelope = data[0] & 0x0F
    if version != VERSION_1:
        raise FrameError(VERSION, "protocol version %d, this side speaks 1" % version)
    if envelope > SEALED_DOWN:
        raise FrameError(ENVELOPE, "unknown envelope code %d" % envelope)
    if envelope >= SEALED_UP:
        if len(data) != SEALED_SIZE:
            raise FrameError(LENGTH, "sealed frame must be %d bytes, got %d" % (SEALED_SIZE, len(data)))
        return Header(version, envelope, None, bytes(data[1:1 + RID_SIZE]))
    if len(data) < PLAIN_OVERHEAD + 1:
        raise FrameError(SHORT, "plain frame of %d bytes is shorter than any type" % len(data))
    return Header(version, envelope, struct.unpack(">I", data[1:5])[0], None)


def unpack(data, keys):
    """Verify and decode one frame with the sender's ``DeviceKeys``. Raises FrameError only.

    Checks version, envelope, length and tag before reading any field, so nothing from an
    unauthenticated frame reaches the caller. The order of all checks, which decides the
    reason when several apply, is SPEC.md section 7.
    """
    data = bytes(data)
    header = peek(data)
    downlink = header.downlink
    if header.sealed:
        tag = data[SEALED_SIZE - SEALED_TAG_SIZE:]
        clear = xor(data[1 + RID_SIZE:SEALED_SIZE - SEALED_TAG_SIZE],
                    keystream(keys.enc(downlink), tag, SEALED_SIZE - SEALED_TAG_SIZE - 1 - RID_SIZE))
        expected = hmac_sha256(keys.auth(downlink), data[:1 + RID_SIZE] + clear)[:SEALED_TAG_SIZE]
        if not equal(expected, tag):
            raise FrameError(TAG, "authentication failed: wrong key, or the frame was altered")
        code, counter, body = _split_inner(clear)
        size = _check_type(code, header)
        if body[size:] != bytes(len(body) - size):
            raise FrameError(VALUE, "sealed padding is not zero")
        _check_counter(counter)
        fields = _decode_body(code, body[:size])
        return Frame(TYPES[code][0], counter, fields, header.envelope, rid=header.rid)
    tag = data[-PLAIN_TAG_SIZE:]
    expected = hmac_sha256(keys.auth(downlink), data[:-PLAIN_TAG_SIZE])[:PLAIN_TAG_SIZE]
    if not equal(expected, tag):
        raise FrameError(TAG, "authentication failed: wrong key, or the frame was altered")
    code, counter, body = _split_inner(data[5:-PLAIN_TAG_SIZE])
    size = _check_type(code, header)
    if len(body) != size:
        raise FrameError(LENGTH, "%s body must be %d bytes, got %d" % (TYPES[code][0], size, len(body)))
    _check_counter(counter)
    return Frame(TYPES[code][0], counter, _decode_body(code, body), header.envelope,
                 device_id=header.device_id)


def _split_inner(inner):
    tc = struct.unpack(">I", inner[:4])[0]
    return tc >> 28, tc & COUNTER_MAX, inner[4:]


def _check_type(code, header):
    if code not in TYPES:
        raise FrameError(TYPE, "unknown frame type %d" % code)
    name, _, directions = TYPES[code]
    if not directions & (DOWN if header.downlink else UP):
        raise FrameError(DIRECTION, "%s is not sent %s" % (name, "downlink" if header.downlink else "uplink"))
    size = body_size(code)
    if header.sealed and size > SEALED_BODY_MAX:
        raise FrameError(DIRECTION, "%s does not travel sealed" % name)
    return size


def _in_range(value, kind):
    return kind[1] <= value <= kind[2] or value in kind[3:]


def _range_text(kind):
    return "%d..%d" % (kind[1], kind[2]) + "".join(" or %d" % v for v in kind[3:])


def _check_counter(counter):
    if counter < 1:
        raise FrameError(VALUE, "counter 0 is never sent (counters start at 1)")


def _decode_body(code, body):
    fields = {}
    pos = 0
    for name, kind in TYPES[code][1]:
        size = _field_size(kind)
        raw = 0
        for b in body[pos:pos + size]:
            raw = (raw << 8) | b
        pos += size
        if kind is LAT:
            fields[name] = round(raw * 180.0 / _SCALE - 90.0, 6)
        elif kind is LON:
            fields[name] = round(raw * 360.0 / _SCALE - 180.0, 6)
        elif isinstance(kind, dict):
            if raw not in kind:
                raise FrameError(VALUE, "%s code %d is not defined" % (name, raw))
            fields[name] = kind[raw]
        else:
            if not _in_range(raw, kind):
                raise FrameError(VALUE, "%s=%d outside %s" % (name, raw, _range_text(kind)))
            fields[name] = raw
    if "accuracy_m" in fields and fields["accuracy_m"] == 0:
        if body[:6] != bytes(6):
            raise FrameError(VALUE, "position given with accuracy_m=0, which means no fix")
        fields["lat"] = fields["lon"] = None
    return fields


def _encode_body(code, fields):
    out = bytearray()
    no_fix = fields.get("accuracy_m") == 0
    for name, kind in TYPES[code][1]:
        if name not in fields:
            raise FrameError(VALUE, "%s needs field %s" % (TYPES[code][0], name))
        value = fields[name]
        if (kind is LAT or kind is LON) and (no_fix or value is None):
            if not no_fix or value is not None:
                raise FrameError(VALUE, "no position needs accuracy_m=0 and %s=None" % name)
            raw = 0
            size = 3
        elif kind is LAT or kind is LON:
            span = 180.0 if kind is LAT else 360.0
            if not isinstance(value, (int, float)) or not -span / 2 <= value <= span / 2:
                raise FrameError(VALUE, "%s=%r outside +-%d degrees" % (name, value, span / 2))
            raw = int((value + span / 2) * _SCALE / span + 0.5)
            size = 3
        elif isinstance(kind, dict):
            raw = None
            for code_value in kind:
                if kind[code_value] == value:
                    raw = code_value
            if raw is None:
                raise FrameError(VALUE, "%s=%r is not one of %s" % (name, value, sorted(kind.values())))
            size = 1
        else:
            size = kind[0]
            if not isinstance(value, int) or not _in_range(value, kind):
                raise FrameError(VALUE, "%s=%r outside %s" % (name, value, _range_text(kind)))
            raw = value
        out += struct.pack(">I", raw)[4 - size:]
    return bytes(out)


def _inner(kind, counter, fields, downlink):
    if kind not in TYPE_CODES:
        raise FrameError(TYPE, "unknown frame type %r" % (kind,))
    code = TYPE_CODES[kind]
    if not TYPES[code][2] & (DOWN if downlink else UP):
        raise FrameError(DIRECTION, "%s is not sent %s" % (kind, "downlink" if downlink else "uplink"))
    if not isinstance(counter, int) or counter < 1 or counter > COUNTER_MAX:
        raise FrameError(VALUE, "counter %r outside 1..%d" % (counter, COUNTER_MAX))
    return struct.pack(">I", (code << 28) | counter) + _encode_body(code, fields)


def build_plain(kind, fields, keys, device_id, counter, downlink=False):
    """Encode an authenticated plain frame from (or, if ``downlink``, to) ``device_id``."""
    if not 0 <= device_id <= 0xFFFFFFFF:
        raise FrameError(VALUE, "device id %r outside 32 bits" % (device_id,))
    envelope = PLAIN_DOWN if downlink else PLAIN_UP
    head = bytes([(VERSION_1 << 4) | envelope]) + struct.pack(">I", device_id)
    return sign_plain(head + _inner(kind, counter, fields, downlink), keys, downlink)


def build_sealed(kind, fields, keys, counter, epoch, downlink=False):
    """Encode a 24-byte sealed frame under the rotating id of ``epoch`` (SPEC.md, "Sealed")."""
    clear = _inner(kind, counter, fields, downlink)
    if len(clear) - 4 > SEALED_BODY_MAX:
        raise FrameError(DIRECTION, "%s does not travel sealed" % kind)
    clear += bytes(SEALED_SIZE - SEALED_TAG_SIZE - 1 - RID_SIZE - len(clear))
    head = bytes([(VERSION_1 << 4) | (SEALED_DOWN if downlink else SEALED_UP)]) + rotating_id(keys, epoch)
    return seal(head, clear, keys, downlink)


def sign_plain(signed, keys, downlink):
    """Append the 8-byte tag to the header and inner bytes of a plain frame."""
    return signed + hmac_sha256(keys.auth(downlink), signed)[:PLAIN_TAG_SIZE]


def seal(head, clear, keys, downlink):
    """Encrypt and tag the padded clear part of a sealed frame (SIV: the tag is the IV)."""
    tag = hmac_sha256(keys.auth(downlink), head + clear)[:SEALED_TAG_SIZE]
    return head + xor(clear, keystream(keys.enc(downlink), tag, len(clear))) + tag


def check_fresh(counter, last_counter):
    """Strict replay rule (devices, SPEC.md 5): new only if above the last accepted counter."""
    if last_counter is not None and counter <= last_counter:
        raise FrameError(REPLAY, "counter %d is not above the last accepted %d" % (counter, last_counter))


REPLAY_WINDOW = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


def accept_counter(counter, highest, seen):
    """Replay rule with a window (the agent, SPEC.md 5), as IPsec and DTLS do: a frame is new
    if its counter is above the highest accepted, or one of the REPLAY_WINDOW - 1 below it
    not accepted yet (a genuine frame that a broker or a second path delivered late).
    ``seen``: bit i set means counter ``highest - i`` was accepted. Returns the new
    ``(highest, seen)``; raises FrameError(REPLAY) for a replay."""
    if highest is None:
        return counter, 1
    if counter > highest:
        shift = counter - highest
        return counter, ((seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
    age = highest - counter
    if age >= REPLAY_WINDOW:
        raise FrameError(REPLAY, "counter %d is %d below the last accepted %d (window %d)"
                         % (counter, age, highest, REPLAY_WINDOW))
    if (seen >> age) & 1:
        raise FrameError(REPLAY, "counter %d was already accepted (last accepted %d)" % (counter, highest))
    return highest, seen | (1 << age)

"""Writes protocol/vectors.json, the golden and negative test vectors of protocol v1.

Run ``python -m ansim_tools.make_vectors`` after a deliberate change to the wire format and
review the diff; the test suite fails if the committed file and the encoder disagree.
Negative vectors that need a valid tag over invalid content are signed with the codec's own
``sign_plain``/``seal``, because the encoder refuses to build them.
"""

import json
import pathlib
import struct
import sys

from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_protocol.errors import FrameError

VECTORS = pathlib.Path(__file__).resolve().parent.parent / "protocol" / "vectors.json"

WEARABLE_KEY = bytes(range(0x00, 0x10))
BELL_KEY = bytes(range(0x10, 0x20))
LIGHT_KEY = bytes(range(0x20, 0x30))
BELL_ID = 0x00020001
LIGHT_ID = 0x00030001
EPOCH = epoch_of(1_800_000_000)
SEOUL_CITY_HALL = {"lat": 37.5663, "lon": 126.9779, "accuracy_m": 6}
C28 = frames.COUNTER_MAX  # 0x0FFFFFFF, the largest counter and counter-field value


def _inner(code, counter, body):
    return struct.pack(">I", (code << 28) | counter) + body


def _signed_plain(key, device_id, code, counter, body, downlink):
    """A plain frame with a valid tag over any content (the encoder refuses invalid ones)."""
    head = bytes([0x11 if downlink else 0x10]) + struct.pack(">I", device_id)
    return frames.sign_plain(head + _inner(code, counter, body), DeviceKeys(key), downlink)


def _signed_sealed(code, counter, body, downlink=False):
    """A sealed frame with a valid tag over any clear part (body padded with zeros to 7)."""
    keys = DeviceKeys(WEARABLE_KEY)
    head = bytes([0x13 if downlink else 0x12]) + frames.rotating_id(keys, EPOCH)
    return frames.seal(head, _inner(code, counter, body + bytes(7 - len(body))), keys, downlink)


LOCATED = ("sos", "test_sos")  # the types whose body is a location (SPEC.md 4)


def _sealed(name, kind, fields, counter, downlink=False):
    keys = DeviceKeys(WEARABLE_KEY)
    frame = frames.build_sealed(kind, fields, keys, counter, EPOCH, downlink)
    return _positive(name, frame, WEARABLE_KEY, epoch=EPOCH, ble_too=True,
                     input_fields=fields if kind in LOCATED else None)


def _plain(name, kind, fields, key, device_id, counter, downlink=False, ble_too=False):
    frame = frames.build_plain(kind, fields, DeviceKeys(key), device_id, counter, downlink)
    return _positive(name, frame, key, ble_too=ble_too, input_fields=fields if kind in LOCATED else None)


def _positive(name, frame, key, epoch=None, ble_too=False, input_fields=None):
    """``input_fields``: the fields exactly as given to the encoder (a location's lat and lon
    are doubles that decode rounded to 6 decimals, SPEC.md 4), kept beside ``expect``."""
    vector = {"name": name, "hex": frame.hex(), "key": key.hex(),
              "expect": frames.unpack(frame, DeviceKeys(key)).to_dict()}
    if epoch is not None:
        vector["epoch"] = epoch
    if ble_too:
        vector["adv"] = ble.advertisement(frame).hex()
    if input_fields is not None:
        vector["input_fields"] = dict(input_fields)
    return vector


def _negative(name, data, key, reason, **extra):
    """A rejected frame. Every sealed frame of the file is made at EPOCH, so a sealed one gets
    ``epoch`` (its rid is rotating_id(key, EPOCH)) unless ``extra`` gives it."""
    vector = {"name": name, "hex": bytes(data).hex(), "key": key.hex(), "error": reason}
    if data and data[0] in (0x12, 0x13):
        vector["epoch"] = EPOCH
    vector.update(extra)
    return vector


def positives():
    return [
        _sealed("wearable SOS with GNSS position", "sos", SEOUL_CITY_HALL, 1001),
        _sealed("wearable SOS without a fix", "sos", {"lat": None, "lon": None, "accuracy_m": 0}, 1002),
        _sealed("wearable cancel of SOS 1001", "cancel", {"sos_counter": 1001}, 1003),
        _sealed("wearable test SOS", "test_sos", {"lat": -33.8688, "lon": 151.2093, "accuracy_m": 255}, 1004),
        _sealed("wearable heartbeat", "heartbeat", {"battery_pct": 87, "uptime_min": 1440, "faults": 0}, 1005),
        _sealed("wearable low battery", "low_battery", {"battery_pct": 9, "battery_mv": 3412}, 1006),
        _sealed("wearable tamper (case opened)", "tamper", {"state": "opened"}, 1007),
        _sealed("wearable asks for walk-home monitoring", "monitor", {"action": "start", "session": 0}, 1008),
        _sealed("center ack relayed to the wearable", "center_ack",
                {"acked_counter": 1001, "status": "dispatched"}, 7, downlink=True),
        _sealed("time for the wearable's clock", "time", {"unix_time": 1_800_000_123}, 8, downlink=True),
        _sealed("monitoring started for the wearable", "monitor", {"action": "start", "session": 77}, 9,
                downlink=True),
        _plain("bell press", "bell_press", {"button": 1}, BELL_KEY, BELL_ID, 501, ble_too=True),
        _plain("bell heartbeat on mains", "heartbeat", {"battery_pct": 255, "uptime_min": 90, "faults": 0},
               BELL_KEY, BELL_ID, 502),
        _plain("bell tamper closed", "tamper", {"state": "closed"}, BELL_KEY, BELL_ID, 503),
        _plain("center ack to the bell", "center_ack", {"acked_counter": 501, "status": "received"},
               BELL_KEY, BELL_ID, 31, downlink=True),
        _plain("blink command to a streetlight", "light_command",
               {"action": "blink", "level_pct": 100, "duration_s": 300, "expires": 1_800_000_300},
               LIGHT_KEY, LIGHT_ID, 12, downlink=True),
        _plain("brighten command to a streetlight", "light_command",
               {"action": "brighten", "level_pct": 80, "duration_s": 120, "expires": 1_800_000_120},
               LIGHT_KEY, LIGHT_ID, 13, downlink=True),
        _plain("restore command to a streetlight", "light_command",
               {"action": "restore", "level_pct": 0, "duration_s": 0, "expires": 1_800_000_010},
               LIGHT_KEY, LIGHT_ID, 14, downlink=True),
        _plain("streetlight state while blinking", "light_state",
               {"commanded_pct": 100, "actual_pct": 97, "mode": "blink", "faults": 0, "last_command": 12},
               LIGHT_KEY, LIGHT_ID, 4001),
        _plain("streetlight lamp fault", "light_state",
               {"commanded_pct": 60, "actual_pct": 0, "mode": "schedule", "faults": 1, "last_command": 14},
               LIGHT_KEY, LIGHT_ID, 4002),
    ]


def negatives():
    wearable = DeviceKeys(WEARABLE_KEY)
    light = DeviceKeys(LIGHT_KEY)
    sos = frames.build_sealed("sos", SEOUL_CITY_HALL, wearable, 1001, EPOCH)
    blink = frames.build_plain("light_command", {"action": "blink", "level_pct": 100, "duration_s": 300,
                                                 "expires": 1_800_000_300}, light, LIGHT_ID, 12, True)
    plain_head = bytes([0x11]) + struct.pack(">I", LIGHT_ID)
    sealed_head = bytes([0x12]) + sos[1:6]

    def inner(code, counter, body):
        return struct.pack(">I", (code << 28) | counter) + body

    return [
        _negative("bad tag (last byte flipped)", sos[:-1] + bytes([sos[-1] ^ 1]), WEARABLE_KEY, "tag"),
        _negative("ciphertext bit flipped", sos[:8] + bytes([sos[8] ^ 0x80]) + sos[9:], WEARABLE_KEY, "tag"),
        _negative("light command verified under the wrong key", blink, BELL_KEY, "tag"),
        _negative("light command forged with the uplink key", frames.sign_plain(blink[:-8], light, False),
                  LIGHT_KEY, "tag"),
        _negative("truncated sealed frame", sos[:20], WEARABLE_KEY, "length"),
        _negative("truncated plain frame", blink[:12], LIGHT_KEY, "short"),
        _negative("empty input", b"", LIGHT_KEY, "short"),
        _negative("wrong version (2)", bytes([0x21]) + blink[1:], LIGHT_KEY, "version"),
        _negative("unknown envelope code 4", bytes([0x14]) + blink[1:], LIGHT_KEY, "envelope"),
        _negative("unknown frame type 13, validly tagged",
                  frames.sign_plain(plain_head + inner(13, 15, bytes(8)), light, True), LIGHT_KEY, "type"),
        _negative("light command sent uplink, validly tagged",
                  frames.sign_plain(bytes([0x10]) + blink[1:-8], light, False), LIGHT_KEY, "direction"),
        _negative("blink level 101 %, validly tagged",
                  frames.sign_plain(plain_head + inner(8, 16, bytes([1, 101, 0, 60]) + struct.pack(">I", 1_800_000_000)),
                                    light, True), LIGHT_KEY, "value"),
        _negative("undefined light action 9, validly tagged",
                  frames.sign_plain(plain_head + inner(8, 17, bytes([9, 50, 0, 60]) + struct.pack(">I", 1_800_000_000)),
                                    light, True), LIGHT_KEY, "value"),
        _negative("plain body one byte long, validly tagged",
                  frames.sign_plain(plain_head + inner(8, 18, bytes(9)), light, True), LIGHT_KEY, "length"),
        _negative("sealed padding not zero, validly tagged",
                  frames.seal(sealed_head, inner(2, 1011, struct.pack(">I", 1001)) + b"\x00\x00\x01", wearable, False),
                  WEARABLE_KEY, "value"),
        _negative("replayed SOS (counter 1001 already accepted)", sos, WEARABLE_KEY, "replay", last_counter=1001,
                  adv=ble.advertisement(sos).hex()),
        _negative("advertisement with an AD structure past the end", sos, WEARABLE_KEY, "advertisement",
                  adv=(ble.FLAGS + b"\x1f" + ble.advertisement(sos)[4:]).hex()),
        _negative("replayed SOS (counter 1001, 64 below the last accepted 1065: too old for the window)", sos,
                  WEARABLE_KEY, "replay", last_counter=1065),
    ]


def value_ranges():
    """Each field's lowest and highest value, and one past where the width allows (SPEC.md 4)."""
    bell = (BELL_KEY, BELL_ID)
    light = (LIGHT_KEY, LIGHT_ID)

    def bad(name, code, body, who, downlink=False, counter=900):
        return _negative("range: " + name + ", validly tagged",
                         _signed_plain(who[0], who[1], code, counter, body, downlink), who[0], "value")

    u32 = 0xFFFFFFFF
    return [
        _plain("range: heartbeat lowest values", "heartbeat", {"battery_pct": 0, "uptime_min": 0, "faults": 0},
               *bell, 601),
        _plain("range: heartbeat highest values", "heartbeat",
               {"battery_pct": 100, "uptime_min": 0xFFFFFF, "faults": 255}, *bell, 602),
        _plain("range: low battery lowest values", "low_battery", {"battery_pct": 0, "battery_mv": 0}, *bell, 603),
        _plain("range: low battery highest values", "low_battery", {"battery_pct": 255, "battery_mv": 0xFFFF},
               *bell, 604),
        _plain("range: bell button 0", "bell_press", {"button": 0}, *bell, 605),
        _plain("range: bell button 255", "bell_press", {"button": 255}, *bell, 606),
        _plain("range: cancel of counter 0", "cancel", {"sos_counter": 0}, *bell, 607),
        _plain("range: cancel of the highest counter", "cancel", {"sos_counter": C28}, *bell, 608),
        _plain("range: light command lowest values", "light_command",
               {"action": "blink", "level_pct": 0, "duration_s": 0, "expires": 0}, *light, 20, downlink=True),
        _plain("range: light command highest values", "light_command",
               {"action": "restore", "level_pct": 100, "duration_s": 0xFFFF, "expires": u32}, *light, 21,
               downlink=True),
        _plain("range: light state lowest values", "light_state",
               {"commanded_pct": 0, "actual_pct": 0, "mode": "schedule", "faults": 0, "last_command": 0},
               *light, 4010),
        _plain("range: light state highest values", "light_state",
               {"commanded_pct": 100, "actual_pct": 100, "mode": "off", "faults": 255, "last_command": C28},
               *light, 4011),
        _plain("range: center ack lowest values", "center_ack", {"acked_counter": 0, "status": "received"},
               *bell, 40, downlink=True),
        _plain("range: center ack highest values", "center_ack", {"acked_counter": C28, "status": "test-ok"},
               *bell, 41, downlink=True),
        _plain("range: monitor lowest values", "monitor", {"action": "start", "session": 0}, *bell, 42,
               downlink=True),
        _plain("range: monitor highest values", "monitor", {"action": "arrived", "session": u32}, *bell, 43,
               downlink=True),
        _plain("range: time 0", "time", {"unix_time": 0}, *bell, 44, downlink=True),
        _plain("range: time 0xFFFFFFFF", "time", {"unix_time": u32}, *bell, 45, downlink=True),
        _sealed("range: position at the lowest corner (-90, -180), accuracy 1", "sos",
                {"lat": -90.0, "lon": -180.0, "accuracy_m": 1}, 1020),
        _sealed("range: position at the highest corner (90, 180), accuracy 255", "test_sos",
                {"lat": 90.0, "lon": 180.0, "accuracy_m": 255}, 1021),
        _plain("range: counter 1", "bell_press", {"button": 1}, *bell, 1),
        _sealed("range: counter 0x0FFFFFFF", "heartbeat", {"battery_pct": 50, "uptime_min": 1, "faults": 0}, C28),
        bad("battery 101", 4, bytes([101, 0, 0, 1, 0]), bell),
        bad("battery 254", 4, bytes([254, 0, 0, 1, 0]), bell),
        bad("low battery at 101 %", 5, bytes([101, 0x0D, 0x54]), bell),
        bad("tamper state 2", 6, bytes([2]), bell),
        bad("cancel of counter 0x10000000 (29 bits)", 2, struct.pack(">I", C28 + 1), bell),
        bad("light action 0", 8, bytes([0, 50, 0, 60]) + struct.pack(">I", 1_800_000_000), light, True),
        bad("light action 4", 8, bytes([4, 50, 0, 60]) + struct.pack(">I", 1_800_000_000), light, True),
        bad("light state commanded 101 %", 9, bytes([101, 0, 0, 0]) + struct.pack(">I", 1), light),
        bad("light state actual 101 %", 9, bytes([0, 101, 0, 0]) + struct.pack(">I", 1), light),
        bad("light state mode 5", 9, bytes([0, 0, 5, 0]) + struct.pack(">I", 1), light),
        bad("light state last command 0x10000000", 9, bytes([0, 0, 0, 0]) + struct.pack(">I", C28 + 1), light),
        bad("ack status 0", 10, struct.pack(">I", 1) + bytes([0]), bell, True),
        bad("ack status 5", 10, struct.pack(">I", 1) + bytes([5]), bell, True),
        bad("ack of counter 0x10000000", 10, struct.pack(">I", C28 + 1) + bytes([1]), bell, True),
        bad("monitor action 0", 11, bytes([0]) + struct.pack(">I", 1), bell, True),
        bad("monitor action 4", 11, bytes([4]) + struct.pack(">I", 1), bell, True),
        bad("position with accuracy 0 (no fix)", 1, bytes([0, 0, 1, 0, 0, 0, 0]), bell),
        bad("position with accuracy 0, lat 0 and lon not 0 (no fix)", 1, bytes([0, 0, 0, 0, 0, 1, 0]), bell),
        bad("plain counter 0", 7, bytes([1]), bell, counter=0),
        _negative("range: sealed counter 0, validly tagged", _signed_sealed(7, 0, bytes([1])), WEARABLE_KEY,
                  "value"),
        _negative("range: sealed body with undefined tamper state 2, validly tagged",
                  _signed_sealed(6, 1030, bytes([2])), WEARABLE_KEY, "value"),
    ]


def sizes():
    """Shortest and longest frame of each envelope and one byte either side (SPEC.md 3, 7)."""
    bell = DeviceKeys(BELL_KEY)
    press = frames.build_plain("bell_press", {"button": 1}, bell, BELL_ID, 700)
    sos = frames.build_sealed("sos", SEOUL_CITY_HALL, DeviceKeys(WEARABLE_KEY), 1040, EPOCH)
    return [
        _plain("size: shortest plain downlink (time, 21 bytes)", "time", {"unix_time": 1_800_000_000},
               BELL_KEY, BELL_ID, 50, downlink=True),
        _negative("size: plain frame of 17 bytes (no body), validly tagged",
                  _signed_plain(BELL_KEY, BELL_ID, 7, 701, b"", False), BELL_KEY, "short"),
        _negative("size: plain frame of 17 bytes with a bad tag (short before tag)",
                  press[:9] + press[10:], BELL_KEY, "short"),
        _negative("size: bell press with a 2-byte body (19 bytes), validly tagged",
                  _signed_plain(BELL_KEY, BELL_ID, 7, 702, b"\x01\x01", False), BELL_KEY, "length"),
        _negative("size: light state of 26 bytes, validly tagged",
                  _signed_plain(LIGHT_KEY, LIGHT_ID, 9, 4020, bytes(8) + b"\x00", False), LIGHT_KEY, "length"),
        _negative("size: bell press of 19 bytes with a bad tag (tag before length)",
                  press[:-8] + b"\x00" + press[-8:], BELL_KEY, "tag"),
        _negative("size: sealed frame of 23 bytes", sos[:23], WEARABLE_KEY, "length"),
        _negative("size: sealed frame of 25 bytes", sos + b"\x00", WEARABLE_KEY, "length"),
        _negative("size: 1 byte, a valid plain header", b"\x10", BELL_KEY, "short"),
        _negative("order: time sent uplink with a 2-byte body, validly tagged (direction before length)",
                  _signed_plain(BELL_KEY, BELL_ID, 12, 703, b"\x00\x01", False), BELL_KEY, "direction"),
        _negative("order: type 13 with a 2-byte body, validly tagged (type before length)",
                  _signed_plain(BELL_KEY, BELL_ID, 13, 704, b"\x00\x01", False), BELL_KEY, "type"),
        _negative("order: version 2 in a 3-byte input (version before size)", b"\x20\x00\x00", BELL_KEY,
                  "version"),
    ]


def sealed_errors():
    """Validly sealed frames whose type is reserved or not allowed sealed in that direction."""
    return [
        _negative("sealed: type 0, validly tagged", _signed_sealed(0, 1050, bytes(7)), WEARABLE_KEY, "type"),
        _negative("sealed: type 13, validly tagged", _signed_sealed(13, 1051, bytes(7)), WEARABLE_KEY, "type"),
        _negative("sealed: type 15 downlink, validly tagged", _signed_sealed(15, 60, bytes(7), True),
                  WEARABLE_KEY, "type"),
        _negative("sealed: center ack sent uplink, validly tagged",
                  _signed_sealed(10, 1052, struct.pack(">I", 1) + b"\x01"), WEARABLE_KEY, "direction"),
        _negative("sealed: SOS sent downlink, validly tagged",
                  _signed_sealed(1, 61, bytes([0x80, 0, 0, 0x80, 0, 0, 9]), True), WEARABLE_KEY, "direction"),
        _negative("sealed: light state (8-byte body) sealed uplink, validly tagged",
                  _signed_sealed(9, 1053, bytes(7)), WEARABLE_KEY, "direction"),
        _negative("sealed: light command (8-byte body) sealed downlink, validly tagged",
                  _signed_sealed(8, 62, bytes([1, 50, 0, 60, 0, 0, 0]), True), WEARABLE_KEY, "direction"),
    ]


def rid_errors():
    """Sealed frames whose rid is not rotating_id(key, epoch) for the vector's key and epoch: the
    receiver, told that one key and epoch, finds no candidate (SPEC.md 7, after step 4)."""
    wearable = DeviceKeys(WEARABLE_KEY)
    other = DeviceKeys(BELL_KEY)  # another wearable's key
    later = frames.build_sealed("sos", SEOUL_CITY_HALL, wearable, 1070, EPOCH + 1)
    foreign = frames.build_sealed("sos", SEOUL_CITY_HALL, other, 1071, EPOCH)
    return [
        _negative("unknown: SOS under the rid of the next epoch, validly tagged", later, WEARABLE_KEY, "unknown",
                  epoch=EPOCH),
        _negative("unknown: another wearable's SOS (its rid, its tag), rid checked before the tag", foreign,
                  WEARABLE_KEY, "unknown", epoch=EPOCH),
        _negative("order: another wearable's SOS cut to 23 bytes (size before rid)", foreign[:23], WEARABLE_KEY,
                  "length", epoch=EPOCH),
    ]


def adverts():
    """Advertising data without the flags, with a zero-length terminator, and malformed (SPEC.md 6.1)."""
    sos = frames.build_sealed("sos", SEOUL_CITY_HALL, DeviceKeys(WEARABLE_KEY), 1060, EPOCH)
    press = frames.build_plain("bell_press", {"button": 2}, DeviceKeys(BELL_KEY), BELL_ID, 710)
    manufacturer = ble.advertisement(sos)[3:]
    press_md = ble.advertisement(press)[3:]
    no_flags = _positive("advert: sealed SOS without the flags structure", sos, WEARABLE_KEY, epoch=EPOCH,
                         input_fields=SEOUL_CITY_HALL)
    no_flags["adv"] = manufacturer.hex()
    padded = _positive("advert: bell press, then a zero-length terminator and zero padding to 31 bytes",
                       press, BELL_KEY)
    padded["adv"] = (ble.advertisement(press) + bytes(31 - len(ble.advertisement(press)))).hex()
    return [
        no_flags,
        padded,
        _negative("advert: zero-length AD structure before the manufacturer data", press, BELL_KEY,
                  "advertisement", adv=(ble.FLAGS + b"\x00" + press_md).hex()),
        _negative("advert: manufacturer data under company id 0xFFFE (FE FF on air)", press, BELL_KEY,
                  "advertisement", adv=(ble.FLAGS + press_md[:2] + b"\xfe\xff" + press_md[4:]).hex()),
        _negative("advert: 32 bytes (flags, SOS, one padding byte)", sos, WEARABLE_KEY, "advertisement",
                  adv=(ble.advertisement(sos) + b"\x00").hex()),
        _negative("advert: malformed structure after the frame", press, BELL_KEY, "advertisement",
                  adv=(press_md + b"\x05\x09ab").hex()),
        _negative("advert: flags only", b"", BELL_KEY, "advertisement", adv=ble.FLAGS.hex()),
        _negative("advert: manufacturer data FF FF without a frame (03 FF FF FF)", b"", BELL_KEY, "advertisement",
                  adv=(ble.FLAGS + b"\x03\xff\xff\xff").hex()),
    ]


def _serial(name, stream, key, expect_frames, rejected):
    """A byte stream on a serial line, the frames a reader takes from it and the blocks it drops."""
    return {"name": name, "serial": bytes(stream).hex(), "key": key.hex(),
            "frames": [f.hex() for f in expect_frames], "rejected": rejected}


def serial_vectors():
    """COBS/CRC framing (SPEC.md 6.3)."""
    press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(BELL_KEY), BELL_ID, 720)
    beat = frames.build_plain("heartbeat", {"battery_pct": 255, "uptime_min": 5, "faults": 0},
                              DeviceKeys(BELL_KEY), BELL_ID, 721)
    good = serial_link.encode(press)
    crc = serial_link.crc16(press)
    bad_crc = serial_link.cobs_encode(press + bytes([crc >> 8, (crc & 0xFF) ^ 0x01])) + b"\x00"
    longest = bytes(range(1, 65))  # 64 bytes: block of 67
    too_long = bytes(range(1, 66))  # 65 bytes: block of 68
    over = serial_link.cobs_encode(too_long + struct.pack(">H", serial_link.crc16(too_long))) + b"\x00"
    with_zeros = bytes(range(0, 64))
    return [
        _serial("serial: CRC-16/CCITT-FALSE check value (123456789 -> 0x29B1)",
                serial_link.cobs_encode(b"123456789\x29\xb1") + b"\x00", BELL_KEY, [b"123456789"], {}),
        _serial("serial: one good block", good, BELL_KEY, [press], {}),
        _serial("serial: two frames back to back", good + serial_link.encode(beat), BELL_KEY, [press, beat], {}),
        _serial("serial: bad CRC", bad_crc + good, BELL_KEY, [press], {"checksum": 1}),
        _serial("serial: longest block (64-byte frame, 67-byte block)", serial_link.encode(longest), BELL_KEY,
                [longest], {}),
        _serial("serial: 64-byte frame with zero bytes", serial_link.encode(with_zeros), BELL_KEY,
                [with_zeros], {}),
        _serial("serial: block over the limit (65-byte frame, 68-byte block)", over + good, BELL_KEY, [press],
                {"framing": 1}),
        _serial("serial: resync after garbage (no delimiter before it)", b"ABC" + b"\x00" + good, BELL_KEY,
                [press], {"framing": 1}),
        _serial("serial: resync when the line starts mid-block (the tail fails its CRC)", good[7:] + good,
                BELL_KEY, [press], {"checksum": 1}),
        _serial("serial: 200 bytes of noise without a delimiter", bytes([0x55]) * 200 + b"\x00" + good, BELL_KEY,
                [press], {"framing": 1}),
        _serial("serial: empty blocks are skipped, not counted", b"\x00\x00" + good + b"\x00", BELL_KEY,
                [press], {}),
        _serial("serial: block of 2 bytes holds no frame", serial_link.cobs_encode(b"\x12\x34") + b"\x00" + good,
                BELL_KEY, [press], {"framing": 1}),
        _serial("serial: malformed COBS (code past the end)", b"\x09\x01\x02\x00" + good, BELL_KEY, [press],
                {"framing": 1}),
        _serial("serial: bytes after the last delimiter wait for the next one", good + good[:-1], BELL_KEY,
                [press], {}),
    ]


def _window(highest, seen):
    """The counters whose bit is set, ascending (``seen`` bit i: counter highest - i)."""
    return sorted(highest - i for i in range(frames.REPLAY_WINDOW) if seen >> i & 1)


def _sequence(name, key, steps, epoch=None):
    """Frames given in order to a receiver with the replay window of SPEC.md 5, starting with
    nothing accepted; each step says whether the frame is new and the window after it."""
    highest, seen = None, 0
    out = []
    for frame in steps:
        counter = frames.unpack(frame, DeviceKeys(key)).counter
        try:
            highest, seen = frames.accept_counter(counter, highest, seen)
            result = "new"
        except FrameError as err:
            result = err.reason
        out.append({"hex": frame.hex(), "counter": counter, "result": result, "highest": highest,
                    "window": _window(highest, seen)})
    vector = {"name": name, "key": key.hex(), "sequence": out}
    if epoch is not None:
        vector["epoch"] = epoch
    return vector


def replay_sequences():
    """The replay window (SPEC.md 5): its sequence, and a counter below the highest accepted
    with its bit clear (new once), as a wearable hears the agent's ack before its time frame."""
    bell, wearable = DeviceKeys(BELL_KEY), DeviceKeys(WEARABLE_KEY)

    def press(counter):
        return frames.build_plain("bell_press", {"button": 1}, bell, BELL_ID, counter)

    def down(counter):
        if counter == 21:
            return frames.build_sealed("center_ack", {"acked_counter": 1001, "status": "dispatched"}, wearable,
                                       counter, EPOCH, True)
        return frames.build_sealed("time", {"unix_time": 1_800_000_000 + counter}, wearable, counter, EPOCH, True)

    return [
        _sequence("replay window: the sequence of SPEC.md 5 (bell presses)", BELL_KEY,
                  [press(c) for c in (10, 12, 11, 9, 11, 9, 80, 17, 16)]),
        _sequence("replay window: below the highest with its bit clear is new once (ack 21 heard before time 20)",
                  WEARABLE_KEY, [down(c) for c in (21, 20, 20, 21, 25, 23, 20, 22, 23)], epoch=EPOCH),
    ]


def build():
    return {
        "about": "Golden and negative vectors of ansim protocol v1 (protocol/SPEC.md). "
                 "Written by python -m ansim_tools.make_vectors; edit that, not this.",
        "vectors": positives() + negatives() + value_ranges() + sizes() + sealed_errors() + rid_errors()
        + adverts() + serial_vectors() + replay_sequences(),
    }


def main():
    VECTORS.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print("wrote %s" % VECTORS)


if __name__ == "__main__":
    sys.exit(main())

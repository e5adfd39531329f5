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

from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of

VECTORS = pathlib.Path(__file__).resolve().parent.parent / "protocol" / "vectors.json"

WEARABLE_KEY = bytes(range(0x00, 0x10))
BELL_KEY = bytes(range(0x10, 0x20))
LIGHT_KEY = bytes(range(0x20, 0x30))
BELL_ID = 0x00020001
LIGHT_ID = 0x00030001
EPOCH = epoch_of(1_800_000_000)
SEOUL_CITY_HALL = {"lat": 37.5663, "lon": 126.9779, "accuracy_m": 6}


def _sealed(name, kind, fields, counter, downlink=False):
    keys = DeviceKeys(WEARABLE_KEY)
    frame = frames.build_sealed(kind, fields, keys, counter, EPOCH, downlink)
    return _positive(name, frame, WEARABLE_KEY, epoch=EPOCH, ble_too=True)


def _plain(name, kind, fields, key, device_id, counter, downlink=False, ble_too=False):
    frame = frames.build_plain(kind, fields, DeviceKeys(key), device_id, counter, downlink)
    return _positive(name, frame, key, ble_too=ble_too)


def _positive(name, frame, key, epoch=None, ble_too=False):
    vector = {"name": name, "hex": frame.hex(), "key": key.hex(),
              "expect": frames.unpack(frame, DeviceKeys(key)).to_dict()}
    if epoch is not None:
        vector["epoch"] = epoch
    if ble_too:
        vector["adv"] = ble.advertisement(frame).hex()
    return vector


def _negative(name, data, key, reason, **extra):
    vector = {"name": name, "hex": bytes(data).hex(), "key": key.hex(), "error": reason}
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
    ]


def build():
    return {
        "about": "Golden and negative vectors of ansim protocol v1 (protocol/SPEC.md). "
                 "Written by python -m ansim_tools.make_vectors; edit that, not this.",
        "vectors": positives() + negatives(),
    }


def main():
    VECTORS.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print("wrote %s" % VECTORS)


if __name__ == "__main__":
    sys.exit(main())

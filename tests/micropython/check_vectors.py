# Runs on the MicroPython VM: checks every vector of protocol/vectors.json with the device's
# own copy of the codec, decoding and re-encoding (SPEC.md 9: a sealed frame's rid against its
# epoch, a location's encoder input, replay-window sequences). Prints "N passed, M failed" and
# the count of each kind; exit 1 on failure.
import json
import sys

from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, rotating_id
from ansim_protocol.errors import UNKNOWN, FrameError

# binary32 floats (a 32-bit VM, like the ESP32): a location may be 2 steps off (SPEC.md 4)
SINGLE = 1.0 + 2.0 ** -30 == 1.0


def unhex(text):
    import binascii
    return binascii.unhexlify(text)


def tohex(data):
    import binascii
    return binascii.hexlify(data).decode()


def check_serial(v):
    stream = unhex(v["serial"])
    for size in (len(stream) or 1, 1):  # all at once, then byte by byte
        deframer = serial_link.Deframer()
        got = []
        for i in range(0, len(stream), size):
            got += deframer.feed(stream[i:i + size])
        if [tohex(f) for f in got] != v["frames"] or deframer.rejected_by_reason != v["rejected"]:
            return False
    return True


def unpack(v, data, keys):
    """Steps 1-4 of SPEC.md 7, the rid against the vector's epoch (``unknown``), steps 5-10."""
    header = frames.peek(data)
    if header.sealed and header.rid != rotating_id(keys, v["epoch"]):
        raise FrameError(UNKNOWN, "rid not that of the epoch")
    return frames.unpack(data, keys)


def window(highest, seen):
    return [highest - i for i in range(frames.REPLAY_WINDOW - 1, -1, -1) if seen >> i & 1]


def check_sequence(v):
    keys = DeviceKeys(unhex(v["key"]))
    highest, seen = None, 0
    for step in v["sequence"]:
        frame = unpack(v, unhex(step["hex"]), keys)
        if frame.counter != step["counter"]:
            return False
        try:
            highest, seen = frames.accept_counter(frame.counter, highest, seen)
            result = "new"
        except FrameError as err:
            result = err.reason
        if result != step["result"] or highest != step["highest"] or window(highest, seen) != step["window"]:
            return False
    return True


def close_location(built, expect):
    """A single-precision encoding of the input: within 2 steps of the vector's position."""
    for name, span in (("lat", 180), ("lon", 360)):
        if abs(built[name] - expect[name]) > 2 * span / 0xFFFFFF + 2e-6:
            return False
    return built["accuracy_m"] == expect["accuracy_m"]


def build(v, fields, keys, downlink):
    expect = v["expect"]
    if "epoch" in v:
        return frames.build_sealed(expect["type"], fields, keys, expect["counter"], v["epoch"], downlink)
    return frames.build_plain(expect["type"], fields, keys, int(expect["device_id"], 16), expect["counter"],
                              downlink)


def check(v):
    if "serial" in v:
        return check_serial(v)
    if "sequence" in v:
        return check_sequence(v)
    keys = DeviceKeys(unhex(v["key"]))
    data = unhex(v["hex"])
    if "adv" in v:
        try:
            carried = ble.frame_from_advertisement(unhex(v["adv"]))
        except FrameError as err:
            return v.get("error") == err.reason
        if carried != data:
            return False
    try:
        frame = unpack(v, data, keys)
        frames.check_fresh(frame.counter, v.get("last_counter"))
    except FrameError as err:
        return v.get("error") == err.reason
    if "error" in v or frame.to_dict() != v["expect"]:
        return False
    expect = v["expect"]
    downlink = expect["envelope"].endswith("down")
    if build(v, expect["fields"], keys, downlink) != data:
        return False
    if "input_fields" in v:
        again = build(v, v["input_fields"], keys, downlink)
        if again != data and not (SINGLE and close_location(frames.unpack(again, keys).fields, expect["fields"])):
            return False
    return True


def kind(v):
    for key in ("serial", "sequence", "expect", "error"):
        if key in v:
            return key
    return "?"


def main(path):
    with open(path) as f:
        vectors = json.load(f)["vectors"]
    failed = 0
    kinds = {}
    for v in vectors:
        kinds[kind(v)] = kinds.get(kind(v), 0) + 1
        try:
            ok = check(v)
        except Exception as err:  # a crash is a failure to report, not to stop on
            print("crash:", v["name"], repr(err))
            ok = False
        if not ok:
            failed += 1
            print("FAILED:", v["name"])
    print("micropython vectors: %d passed, %d failed" % (len(vectors) - failed, failed))
    print("kinds: " + ", ".join("%s %d" % (k, kinds[k]) for k in sorted(kinds)))
    sys.exit(1 if failed else 0)


main(sys.argv[1])

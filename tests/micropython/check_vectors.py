# Runs on the MicroPython VM: checks every vector of protocol/vectors.json with the device's
# own copy of the codec, decoding and re-encoding. Prints "N passed, M failed"; exit 1 on failure.
import json
import sys

from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, rotating_id
from ansim_protocol.errors import FrameError


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


def check(v):
    if "serial" in v:
        return check_serial(v)
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
        frame = frames.unpack(data, keys)
        frames.check_fresh(frame.counter, v.get("last_counter"))
    except FrameError as err:
        return v.get("error") == err.reason
    if "error" in v or frame.to_dict() != v["expect"]:
        return False
    expect = v["expect"]
    downlink = expect["envelope"].endswith("down")
    if "epoch" in v:
        if frame.rid != rotating_id(keys, v["epoch"]):
            return False
        again = frames.build_sealed(expect["type"], expect["fields"], keys, expect["counter"], v["epoch"], downlink)
    else:
        again = frames.build_plain(expect["type"], expect["fields"], keys, int(expect["device_id"], 16),
                                   expect["counter"], downlink)
    return again == data


def main(path):
    with open(path) as f:
        vectors = json.load(f)["vectors"]
    failed = 0
    for v in vectors:
        try:
            ok = check(v)
        except Exception as err:  # a crash is a failure to report, not to stop on
            print("crash:", v["name"], repr(err))
            ok = False
        if not ok:
            failed += 1
            print("FAILED:", v["name"])
    print("micropython vectors: %d passed, %d failed" % (len(vectors) - failed, failed))
    sys.exit(1 if failed else 0)


main(sys.argv[1])

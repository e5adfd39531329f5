"""``ansim decode``: show what a frame (or a whole BLE advertisement) says, and whether it is
authentic under a given device key."""

import argparse
import json
import sys

from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import KEY_SIZE, DeviceKeys
from ansim_protocol.errors import FrameError

EXIT_INVALID_FRAME = 1
EXIT_BAD_USAGE = 2


def add_parser(subparsers):
    p = subparsers.add_parser("decode", help="decode and verify one frame or BLE advertisement",
                              description="Decode one ansim frame, or the advertising data that "
                              "carries one, given as hex. With --key the tag is checked and the "
                              "fields are shown; without it only the header can be read.")
    p.add_argument("hex", help="frame or advertising data as hex (spaces and colons allowed)")
    p.add_argument("--key", help="the device's 16-byte master key as 32 hex digits")
    p.add_argument("--last-counter", type=int, help="reject the frame as a replay unless its "
                   "counter is above this")
    p.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    p.add_argument("--company-id", type=_company_id, default=ble.COMPANY_ID, metavar="ID",
                   help="the BLE company id the advertisement's frame is under, as the site was provisioned "
                        "(hex like 0x0A1B, or decimal; default 0xFFFF, the Bluetooth SIG's test id)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--adv", action="store_true", help="the input is BLE advertising data "
                      "(found without this when it starts with the flags structure 02 01)")
    form.add_argument("--serial", action="store_true", help="the input is bytes from a serial "
                      "line: show every frame the COBS/CRC reader finds and the blocks it drops")
    p.set_defaults(run=run)


def _company_id(text):
    try:
        return ble.check_company_id(int(text, 0))
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a 16-bit company id: give 0x0000 to 0xFFFF, e.g. 0x0A1B"
                                         % text) from None


def _parse_hex(text, what):
    cleaned = text.replace(" ", "").replace(":", "")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise SystemExit(_usage_error("%s is not hexadecimal: %r" % (what, text)))


def _usage_error(message):
    print("ansim decode: " + message, file=sys.stderr)
    return EXIT_BAD_USAGE


def run(args):
    data = _parse_hex(args.hex, "input")
    keys = None
    if args.key is not None:
        key = _parse_hex(args.key, "--key")
        if len(key) != KEY_SIZE:
            return _usage_error("--key must be %d bytes (%d hex digits), got %d bytes"
                                % (KEY_SIZE, 2 * KEY_SIZE, len(key)))
        keys = DeviceKeys(key)
    if args.serial:
        result = decode_serial(data, keys)
        print(json.dumps(result, sort_keys=True) if args.json else describe_serial(result))
        return 0
    try:
        result = decode(data, keys, args.last_counter, advertisement=args.adv, company_id=args.company_id)
    except FrameError as err:
        print("invalid frame: %s" % err, file=sys.stderr)
        return EXIT_INVALID_FRAME
    print(json.dumps(result, sort_keys=True) if args.json else describe(result))
    return 0


def decode(data, keys, last_counter=None, advertisement=False, company_id=ble.COMPANY_ID):
    """The JSON-ready view of ``data``; raises FrameError for anything invalid. An advertisement's
    frame is looked for under ``company_id``."""
    source = "frame"
    if advertisement or data[:2] == ble.FLAGS[:2]:
        data = ble.frame_from_advertisement(data, company_id)
        source = "advertisement"
    if keys is None:
        header = frames.peek(data)
        view = {"version": header.version, "envelope": frames.ENVELOPE_NAMES[header.envelope],
                "verified": False}
        if header.sealed:
            view["rid"] = header.rid.hex()
        else:
            view["device_id"] = frames.device_id_hex(header.device_id)
    else:
        frame = frames.unpack(data, keys)
        frames.check_fresh(frame.counter, last_counter)
        view = frame.to_dict()
        view["verified"] = True
    view["source"] = source
    view["length"] = len(data)
    return view


def decode_serial(data, keys):
    """What a serial reader makes of ``data`` (SPEC.md 6.3): the frames in order, each decoded
    (or its rejection reason), and the count of dropped blocks per reason. Never raises: a
    reader does not stop on bad input."""
    deframer = serial_link.Deframer()
    views = []
    for frame in deframer.feed(data):
        try:
            view = decode(frame, keys)
        except FrameError as err:
            view = {"error": err.reason}
        view["hex"] = frame.hex()
        views.append(view)
    return {"source": "serial", "frames": views, "rejected": dict(deframer.rejected_by_reason)}


def describe_serial(result):
    lines = ["%d frame(s) from the serial bytes" % len(result["frames"])]
    for view in result["frames"]:
        lines.append("  %s  %s" % (view["hex"], view.get("error") or view.get("type") or view["envelope"]))
    for reason in sorted(result["rejected"]):
        lines.append("dropped %d block(s): %s" % (result["rejected"][reason], reason))
    return "\n".join(lines)


def describe(view):
    """Lines for a person."""
    who = "device %s" % view["device_id"] if "device_id" in view else "rotating id %s" % view["rid"]
    lines = ["%s v%d %s from %s, %d bytes (%s)" % (view.get("type", "frame"), view["version"],
                                                  view["envelope"], who, view["length"], view["source"])]
    if view["verified"]:
        lines.append("  counter      %d" % view["counter"])
        for name in sorted(view["fields"]):
            lines.append("  %-12s %s" % (name, view["fields"][name]))
        lines.append("authentic under the given key")
    else:
        lines.append("NOT VERIFIED: pass --key to check the tag and read the fields")
    return "\n".join(lines)

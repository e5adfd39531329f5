"""Hypothesis properties of the codec and its transports.

Profiles: ``ci`` (default, 2,000 examples per property), ``slow`` (100,000 per property:
``make test-slow``). Select with HYPOTHESIS_PROFILE.
"""

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansim_protocol import ble, frames, serial_link, topics
from ansim_protocol.crypto import KEY_SIZE, DeviceKeys
from ansim_protocol.errors import FrameError

settings.register_profile("ci", max_examples=2000, deadline=None)
settings.register_profile("slow", max_examples=100_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LAT_STEP = 180.0 / 0xFFFFFF
LON_STEP = 360.0 / 0xFFFFFF


def _field_strategy(kind):
    if isinstance(kind, dict):
        return st.sampled_from(sorted(kind.values()))
    values = st.integers(kind[1], kind[2])
    return values | st.sampled_from(kind[3:]) if kind[3:] else values


def _fields(code):
    spec = frames.TYPES[code][1]
    if spec is frames.LOCATION:
        fix = st.fixed_dictionaries({
            "lat": st.floats(-90, 90, allow_nan=False), "lon": st.floats(-180, 180, allow_nan=False),
            "accuracy_m": st.integers(1, 255)})
        return fix | st.just({"lat": None, "lon": None, "accuracy_m": 0})
    return st.fixed_dictionaries({name: _field_strategy(kind) for name, kind in spec})


def _shapes():
    """Every (type code, downlink, sealed) the protocol allows."""
    shapes = []
    for code, (_, _, directions) in frames.TYPES.items():
        for downlink in (False, True):
            if directions & (frames.DOWN if downlink else frames.UP):
                shapes.append((code, downlink, False))
                if frames.body_size(code) <= frames.SEALED_BODY_MAX:
                    shapes.append((code, downlink, True))
    return shapes


SHAPES = _shapes()
keys_st = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE).map(DeviceKeys)


@st.composite
def valid_frames(draw):
    """(bytes, keys, kind, fields, counter) for any frame the protocol allows."""
    code, downlink, sealed = draw(st.sampled_from(SHAPES))
    kind = frames.TYPES[code][0]
    fields = draw(_fields(code))
    keys = draw(keys_st)
    counter = draw(st.integers(1, frames.COUNTER_MAX))
    if sealed:
        data = frames.build_sealed(kind, fields, keys, counter, draw(st.integers(0, 0xFFFFFFFF)), downlink)
    else:
        data = frames.build_plain(kind, fields, keys, draw(st.integers(0, 0xFFFFFFFF)), counter, downlink)
    return data, keys, kind, fields, counter


def test_shapes_cover_every_type():
    assert {frames.TYPES[code][0] for code, _, _ in SHAPES} == set(frames.TYPE_CODES)


@given(valid_frames())
def test_round_trip(case):
    data, keys, kind, fields, counter = case
    frame = frames.unpack(data, keys)
    assert (frame.kind, frame.counter) == (kind, counter)
    for name, value in fields.items():
        got = frame.fields[name]
        if name in ("lat", "lon") and value is not None:
            assert abs(got - value) <= (LAT_STEP if name == "lat" else LON_STEP) / 2 + 1e-6
        else:
            assert got == value
    if frame.sealed:
        assert len(data) == frames.SEALED_SIZE
        assert frame.rid == data[1:6]
    else:
        again = frames.build_plain(kind, frame.fields, keys, frame.device_id, counter, frame.downlink)
        assert again == data


@given(valid_frames(), st.data())
def test_any_bit_flip_is_rejected(case, data):
    frame = bytearray(case[0])
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        frames.unpack(bytes(frame), case[1])


@given(valid_frames(), keys_st)
def test_another_devices_key_is_rejected(case, other):
    assume(other.up_auth != case[1].up_auth)
    with pytest.raises(FrameError) as caught:
        frames.unpack(case[0], other)
    assert caught.value.reason == "tag"


@given(st.binary(max_size=80), keys_st)
def test_random_bytes_only_ever_raise_frame_error(data, keys):
    for decoder in (frames.peek, lambda d: frames.unpack(d, keys), ble.frame_from_advertisement,
                    ble.frame_from_manufacturer_data, serial_link.decode_block):
        try:
            decoder(data)
        except FrameError:
            pass


@given(st.binary(max_size=80))
def test_versioned_random_frames_only_ever_raise_frame_error(tail):
    """Random bytes behind a valid header reach the deeper checks, not just the version test."""
    keys = DeviceKeys(bytes(KEY_SIZE))
    for header in (0x10, 0x11, 0x12, 0x13):
        try:
            frames.unpack(bytes([header]) + tail, keys)
        except FrameError:
            pass


@given(st.text(max_size=60))
def test_random_topics_only_ever_raise_frame_error(name):
    try:
        scope, ident, channel = topics.parse(name)
    except FrameError:
        return
    assert topics.topic(ident, channel, scope) == name


@given(st.sampled_from(["dev/%s/up", "dev/%s/down", "dev/%s/state", "relay/%s/up"]), st.integers(0, 0xFFFFFFFF))
def test_every_scheme_topic_parses_back(pattern, ident):
    name = topics.ROOT + pattern % ("%08x" % ident)
    scope, number, channel = topics.parse(name)
    assert number == ident and topics.topic(number, channel, scope) == name


@given(st.lists(st.binary(min_size=1, max_size=serial_link.FRAME_MAX), max_size=5), st.binary(max_size=200),
       st.lists(st.integers(1, 40), max_size=6))
def test_serial_stream_resynchronises_after_garbage(frames_sent, garbage, cuts):
    """Whatever precedes the first delimiter, every frame after it arrives, however the line
    splits the bytes into reads."""
    stream = garbage + b"\x00" + b"".join(serial_link.encode(f) for f in frames_sent)
    deframer = serial_link.Deframer()
    received, pos = [], 0
    for cut in cuts + [len(stream)]:
        received += deframer.feed(stream[pos:pos + cut])
        pos += cut
    received += deframer.feed(stream[pos:])
    assert received[len(received) - len(frames_sent):] == frames_sent
    assert len(received) - len(frames_sent) <= 1  # garbage can be a valid block only by chance


@given(st.sampled_from(sorted({(name, kind) for code in frames.TYPES for name, kind in frames.TYPES[code][1]
                                if isinstance(kind, tuple)}, key=str)),
       st.integers(0, 0xFFFFFFFF))
def test_integer_fields_accept_exactly_their_range(field, value):
    """SPEC.md 4: lowest..highest plus the listed extra values (battery 255), nothing else."""
    name, kind = field
    assume(value < 1 << (8 * kind[0]))
    code = next(c for c in frames.TYPES for n, k in frames.TYPES[c][1] if (n, k) == field)
    body = bytearray(frames.body_size(code))
    pos = 0
    for n, k in frames.TYPES[code][1]:
        size = frames._field_size(k)
        if n == name:
            body[pos:pos + size] = value.to_bytes(size, "big")
        elif isinstance(k, dict):
            body[pos] = min(k)
        pos += size
    downlink = not frames.TYPES[code][2] & frames.UP
    keys = DeviceKeys(bytes(KEY_SIZE))
    head = bytes([0x11 if downlink else 0x10]) + bytes(4)
    frame = frames.sign_plain(head + ((code << 28) | 1).to_bytes(4, "big") + bytes(body), keys, downlink)
    allowed = kind[1] <= value <= kind[2] or value in kind[3:]
    if allowed:
        assert frames.unpack(frame, keys).fields[name] == value
    else:
        with pytest.raises(FrameError) as caught:
            frames.unpack(frame, keys)
        assert caught.value.reason == "value"
    assert allowed == (value <= 100 or value == 255 if name == "battery_pct" else value <= kind[2])


@given(st.binary(max_size=600))
def test_deframer_never_raises_and_bounds_its_buffer(stream):
    deframer = serial_link.Deframer()
    for frame in deframer.feed(stream):
        assert len(frame) <= serial_link.FRAME_MAX
    assert len(deframer._buf) <= serial_link.BLOCK_MAX


@given(st.binary(max_size=300))
def test_cobs_round_trip_has_no_zero_inside(data):
    block = serial_link.cobs_encode(data)
    assert 0 not in block
    assert serial_link.cobs_decode(block) == data


@given(valid_frames())
def test_every_ble_sized_frame_fits_one_advertisement(case):
    data = case[0]
    if len(data) <= ble.FRAME_MAX:
        adv = ble.advertisement(data)
        assert len(adv) <= ble.LEGACY_MAX
        assert ble.frame_from_advertisement(adv) == data
    else:
        with pytest.raises(FrameError):
            ble.advertisement(data)

"""Whatever the center sends, the checks in front of the core either hand it a well-formed
message or refuse it with a reason: no other exception, for any JSON or any bytes; and what
they accept, the core acts on without raising anything but Refused. Also the replay window
of SPEC.md 5 against a model of it."""

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from ansim_agent.center_messages import Refused, parse_ack, parse_monitor, parse_shared
from ansim_protocol import frames
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.world.street import Street
from test_core import Clock, make_core

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
KEYS = st.sampled_from(["alert_id", "status", "session", "action", "route", "position", "agent", "frame", "epoch"])
MESSAGES = st.dictionaries(KEYS, JSON | st.sampled_from(["received", "start", "update", "stop", "arrived",
                                                          "00020001-1", [37.5663, 126.9779]]), max_size=6)
PAYLOADS = MESSAGES.map(lambda m: json.dumps(m).encode()) | st.binary(max_size=200)


@given(PAYLOADS)
def test_any_ack_is_parsed_or_refused(payload):
    try:
        alert_id, status = parse_ack(payload)
    except Refused:
        return
    assert isinstance(alert_id, str) and status in frames.ACK_STATUSES.values()


@settings(max_examples=int(os.environ.get("ANSIM_CENTER_EXAMPLES", "500")))
@given(st.lists(PAYLOADS, min_size=1, max_size=5))
def test_any_monitoring_request_is_refused_or_followed_by_the_core(tmp_path_factory, payloads):
    street = Street(tmp_path_factory.mktemp("street"), center_port=1)
    core, store = make_core(street, Clock())
    try:
        for payload in payloads:
            try:
                core.monitor(parse_monitor(payload), Clock().now)
            except Refused:
                continue
    finally:
        store.close()


@settings(max_examples=int(os.environ.get("ANSIM_CENTER_EXAMPLES", "500")))
@given(st.lists(st.tuples(st.sampled_from(["00020001", "00010001", "0002000", "zz", "00020001/x"]),
                          PAYLOADS | st.binary(min_size=1, max_size=40).map(
                              lambda b: json.dumps({"agent": "edge-x", "frame": b.hex(), "epoch": None}).encode())),
                min_size=1, max_size=5))
def test_any_share_from_the_district_is_refused_or_merged_by_the_core(tmp_path_factory, shares):
    """What another agent (or anyone with write access to the district's topic) shares is
    refused, or a frame the core verifies with the device's key; nothing else can happen."""
    street = Street(tmp_path_factory.mktemp("street"), center_port=1)
    core, store = make_core(street, Clock())
    try:
        for device_hex, payload in shares:
            try:
                share = parse_shared(device_hex, payload)
                assert core.merge_shared(share["device_id"], share["frame"], share["epoch"], Clock().now) in (
                    "merged", "known")
            except (Refused, FrameError):
                continue
    finally:
        store.close()


def test_a_shared_frame_is_merged_only_when_the_device_made_it(tmp_path):
    street = Street(tmp_path / "street", center_port=1)
    core, store = make_core(street, Clock())
    bell, other = street.bells
    press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, 5)
    forged = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(other.key), bell.device_id, 6)
    for device_id, raw, reason in ((bell.device_id, forged, "tag"), (other.device_id, press, "topic"),
                                   (0x7777, press, "unknown")):
        try:
            core.merge_shared(device_id, raw, None, Clock().now)
        except FrameError as err:
            assert err.reason == reason
        else:
            raise AssertionError("%s merged" % reason)
    wearable = street.wearables[0]
    sealed = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, DeviceKeys(wearable.key), 3,
                                 1000)
    for epoch in (None, 1001):
        try:
            core.merge_shared(wearable.device_id, sealed, epoch, Clock().now)
        except FrameError as err:
            assert err.reason == "unknown"
    assert core.merge_shared(wearable.device_id, sealed, 1000, Clock().now) == "merged"
    assert core.merge_shared(bell.device_id, press, None, Clock().now) == "merged"
    assert core.merge_shared(bell.device_id, press, None, Clock().now) == "known"
    store.commit()
    assert store.up_state(bell.device_id)[0] == 5 and store.up_state(wearable.device_id)[0] == 3
    store.close()


class WindowModel:
    """SPEC.md 5 as a set: new if above the highest, or within 64 below it and not seen."""

    def __init__(self):
        self.accepted, self.highest = set(), None

    def accept(self, counter):
        if self.highest is not None and (counter <= self.highest - frames.REPLAY_WINDOW or counter in self.accepted):
            return False
        self.accepted.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        return True


@given(st.lists(st.integers(1, 300), max_size=200))
def test_the_replay_window_accepts_each_counter_once_and_nothing_too_old(counters):
    model, state = WindowModel(), (None, 0)
    for counter in counters:
        try:
            state = frames.accept_counter(counter, *state)
            accepted = True
        except frames.FrameError as err:
            assert err.reason == "replay"
            accepted = False
        assert accepted == model.accept(counter), (counter, state)

"""Rotating ids resolve to their wearable across epochs, clock drift and lost clocks, and
only to frames that can have been made now (SPEC.md 3.2)."""

import os

from ansim_agent.resolver import RotatingIdResolver
from ansim_protocol import frames
from ansim_protocol.crypto import CLOCKLESS, ROTATION_PERIOD_S, DeviceKeys, epoch_of, rotating_id

NOW = 1_800_000_000
E = epoch_of(NOW)


def wearables(n):
    return {0x10000 + i: DeviceKeys(os.urandom(16)) for i in range(n)}


def resolver_with(devices, now=NOW):
    r = RotatingIdResolver()
    for device_id, keys in devices.items():
        r.add(device_id, keys, now)
    return r


def test_each_wearable_resolves_in_the_current_and_neighbouring_epochs():
    devices = wearables(50)
    r = resolver_with(devices)
    for device_id, keys in devices.items():
        for epoch in (E - 1, E, E + 1):
            assert [c[0] for c in r.candidates(rotating_id(keys, epoch))] == [device_id]
        assert r.candidates(rotating_id(keys, E + 5)) == []


def test_the_window_follows_the_agents_clock():
    devices = wearables(3)
    r = resolver_with(devices)
    later = NOW + 3 * ROTATION_PERIOD_S
    r.tick(later)
    keys = devices[0x10000]
    assert r.candidates(rotating_id(keys, E)) == []
    assert r.candidates(rotating_id(keys, epoch_of(later)))[0][0] == 0x10000


def test_a_slowly_drifting_device_clock_is_followed():
    keys = DeviceKeys(os.urandom(16))
    r = resolver_with({7: keys})
    now = NOW
    drift = 0
    for _ in range(6):  # the device gains one epoch per step relative to the agent
        drift += 1
        now += ROTATION_PERIOD_S
        r.tick(now)
        device_epoch = epoch_of(now) + drift
        (device_id, _, epoch), = r.candidates(rotating_id(keys, device_epoch))
        r.confirm(device_id, epoch)
    assert r.state(7) == (epoch_of(now) + drift, drift, 0)
    assert r.epoch_now(7) == epoch_of(now) + drift


def test_the_unshifted_window_is_watched_whatever_the_offset():
    keys = DeviceKeys(os.urandom(16))
    r = resolver_with({7: keys})
    r.confirm(7, E + 1)
    assert r.state(7)[1] == 1
    r.tick(NOW + ROTATION_PERIOD_S)
    r.confirm(7, E + 1)  # its clock was set right
    assert r.state(7)[1] == 0
    r.add(7, keys, NOW, last_epoch=E - 300, offset=-300)  # a wrong offset persisted by an old agent
    for epoch in (E - 1, E, E + 1, E - 301, E - 300, E - 299):
        assert [c[0] for c in r.candidates(rotating_id(keys, epoch))] == [7]


def test_a_frame_made_earlier_matches_nothing_and_teaches_nothing():
    """SPEC.md 3.2: the look-ahead after the last heard epoch is gone: a frame from an epoch
    this agent never heard, held back 30 min, a day or a week, resolves to no device."""
    keys = DeviceKeys(os.urandom(16))
    for delay_s in (30 * 60, 86400, 7 * 86400):
        r = resolver_with({7: keys})
        r.confirm(7, E)  # heard at E; the device goes on to make frames at E+1, E+2 elsewhere
        r.tick(NOW + ROTATION_PERIOD_S + delay_s)
        for held_back in (E + 1, E + 2):
            assert r.candidates(rotating_id(keys, held_back)) == []
        assert r.state(7) == (E, 0, 0)
        now_epoch = epoch_of(NOW + ROTATION_PERIOD_S + delay_s)
        assert r.candidates(rotating_id(keys, now_epoch))[0][0] == 7


def test_a_wearable_without_a_clock_is_found_by_its_clockless_starts():
    keys = DeviceKeys(os.urandom(16))
    r = resolver_with({7: keys})
    r.confirm(7, E)
    r.tick(NOW + 30 * 86400)  # a month later its battery was changed: no clock, first clockless start
    (device_id, _, epoch), = r.candidates(rotating_id(keys, CLOCKLESS + 1))
    assert (device_id, epoch) == (7, CLOCKLESS + 1)
    r.confirm(7, epoch)
    assert r.epoch_now(7) == CLOCKLESS + 1  # frames to it go under the rid it uses
    assert r.state(7) == (CLOCKLESS + 1, 0, 1)
    # it is still found by time once a time frame set its clock
    r.confirm(7, epoch_of(NOW + 30 * 86400))
    assert r.epoch_now(7) == epoch_of(NOW + 30 * 86400)
    # starts it made unheard are found up to CLOCKLESS_AHEAD later; started once, not before
    assert r.candidates(rotating_id(keys, CLOCKLESS + 5))[0][0] == 7
    assert r.candidates(rotating_id(keys, CLOCKLESS + 6)) == []
    assert r.candidates(rotating_id(keys, CLOCKLESS + 1))[0][0] == 7


def test_state_restored_after_an_agent_restart_resolves_at_once():
    keys = DeviceKeys(os.urandom(16))
    first = resolver_with({7: keys})
    first.confirm(7, E + 1)
    first.confirm(7, CLOCKLESS + 3)
    second = RotatingIdResolver()
    second.add(7, keys, NOW, *first.state(7))
    assert second.candidates(rotating_id(keys, E + 2))[0][0] == 7
    assert second.candidates(rotating_id(keys, CLOCKLESS + 4))[0][0] == 7
    assert second.epoch_now(7) == CLOCKLESS + 3


def test_a_sealed_sos_is_verified_through_the_resolver():
    devices = wearables(200)
    r = resolver_with(devices)
    keys = devices[0x10000 + 123]
    frame = frames.build_sealed("sos", {"lat": 37.5, "lon": 127.0, "accuracy_m": 5}, keys, 9, E)
    (device_id, found_keys, epoch), = r.candidates(frames.peek(frame).rid)
    assert device_id == 0x10000 + 123 and epoch == E
    assert frames.unpack(frame, found_keys).kind == "sos"


def test_removing_a_device_forgets_its_ids():
    devices = wearables(2)
    r = resolver_with(devices)
    r.remove(0x10000)
    assert r.candidates(rotating_id(devices[0x10000], E)) == []
    assert len(r) == 1

"""Rotating ids resolve to their wearable across epochs, clock drift and clock resets."""

import os

from ansim_agent.resolver import RotatingIdResolver
from ansim_protocol import frames
from ansim_protocol.crypto import ROTATION_PERIOD_S, DeviceKeys, epoch_of, rotating_id

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
    assert r.state(7) == (epoch_of(now) + drift, drift)


def test_a_device_whose_clock_was_reset_resumes_from_its_last_epoch():
    keys = DeviceKeys(os.urandom(16))
    r = resolver_with({7: keys})
    r.confirm(7, E)
    # Power lost for a day: the device's clock restarts from its persisted epoch + 1.
    r.tick(NOW + 86400)
    assert r.candidates(rotating_id(keys, E + 1))[0][0] == 7


def test_state_restored_after_an_agent_restart_resolves_at_once():
    keys = DeviceKeys(os.urandom(16))
    first = resolver_with({7: keys})
    first.confirm(7, E + 40)
    second = RotatingIdResolver()
    last, offset = first.state(7)
    second.add(7, keys, NOW, last_epoch=last, offset=offset)
    assert second.candidates(rotating_id(keys, E + 40))[0][0] == 7


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

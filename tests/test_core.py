"""The agent's core on a virtual street: verification, dedup, replay, location, enrichment,
blinking lights, cancel, durability of what it acknowledges."""

import pytest

from ansim_agent import config as config_module
from ansim_agent import registry as registry_module
from ansim_agent.core import Core
from ansim_agent.intake import Reception
from ansim_agent.store import Store
from ansim_protocol import frames
from ansim_protocol.crypto import CLOCKLESS, DeviceKeys, epoch_of
from ansim_simulators.world.street import ORIGIN, Street

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def street(tmp_path):
    return Street(tmp_path / "street", center_port=1)


def make_core(street, clock):
    cfg = config_module.load(street.config_path)
    reg = registry_module.load(cfg.agent["registry"], cfg.supervision)
    store = Store(cfg.agent["data_dir"] / "agent.db")
    return Core(cfg, reg, store, clock), store


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def core(street, clock):
    core, store = make_core(street, clock)
    yield core
    store.close()


def sos_from(wearable, counter, clock, fix=None):
    fix = fix or {"lat": ORIGIN[0], "lon": ORIGIN[1] + 0.0003, "accuracy_m": 8}
    return frames.build_sealed("sos", fix, DeviceKeys(wearable.key), counter, epoch_of(clock.now))


def bell_press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def test_wearable_sos_becomes_a_located_enriched_alert_and_blinks_nearby_lights(core, street, clock):
    wearable = street.wearables[0]
    outcomes, downlinks = core.process_batch([Reception(sos_from(wearable, 5, clock), "ble", "ble0", rssi=-70)])
    assert outcomes[0].verdict == "accepted" and outcomes[0].kind == "sos"
    _, state, alert = core.store.alert(outcomes[0].alert_id)
    assert state == "pending" and alert["alert_id"] == "%s-5" % wearable.hex_id
    assert alert["location"]["source"] == "gnss" and alert["location"]["accuracy_m"] == 8
    assert [c["id"] for c in alert["cameras"]][:2] == ["CCTV-002", "CCTV-001"]  # 23.5 m and 26.5 m away
    assert alert["cameras"][0]["distance_m"] < alert["cameras"][1]["distance_m"]
    # The SOS is ~26 m east of the origin; lights every 20 m: those within 50 m blink.
    blinking = {d.device_id for d in downlinks}
    assert blinking == {street.lights[i].device_id for i in range(4)}
    for d in downlinks:
        light = next(l for l in street.lights if l.device_id == d.device_id)
        command = frames.unpack(d.frame, DeviceKeys(light.key))
        assert command.kind == "light_command" and command.fields["action"] == "blink"


def test_the_same_frame_heard_twice_is_one_event_and_an_old_counter_is_a_replay(core, street, clock):
    first = sos_from(street.wearables[0], 100, clock)
    older = sos_from(street.wearables[0], 100 - frames.REPLAY_WINDOW, clock)
    outcomes, _ = core.process_batch([Reception(first, "ble", "ble0"), Reception(first, "serial", "uart0"),
                                      Reception(older, "ble", "ble0")])
    assert [o.verdict for o in outcomes] == ["accepted", "duplicate", "replay"]


def test_a_genuine_frame_that_arrives_late_is_accepted_once_and_its_replay_refused(core, street, clock):
    """A broker that redelivers a backlog out of order must not make the agent drop a press
    it has acknowledged (SPEC.md 5: the replay window)."""
    bell = street.bells[0]
    outcomes, _ = core.process_batch([Reception(bell_press(bell, c), "mqtt", "local") for c in (10, 12, 11, 9)])
    assert [o.verdict for o in outcomes] == ["accepted"] * 4
    assert {o.alert_id for o in outcomes} == {"%s-%d" % (bell.hex_id, c) for c in (9, 10, 11, 12)}
    clock.now += street_config_dedup_s(core) + 1  # past the dedup window: only the counter rule is left
    outcomes, _ = core.process_batch([Reception(bell_press(bell, c), "mqtt", "local") for c in (11, 9, 12)])
    assert [o.verdict for o in outcomes] == ["replay"] * 3
    core.store.close()
    _, reopened = make_core(street, clock)  # the window is stored with the counter
    assert reopened.up_state(bell.device_id) == (12, 0b1111)
    reopened.close()


def street_config_dedup_s(core):
    return core.config.agent["dedup_window_s"]


def test_forged_unknown_and_mismatched_frames_are_refused_with_their_reason(core, street, clock):
    bell = street.bells[0]
    forged = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bytes(16)), bell.device_id, 3)
    stranger = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bytes(16)), 0x0BADBAD0, 3)
    other_topic = "ansim/v1/dev/%s/up" % street.bells[1].hex_id
    outcomes, _ = core.process_batch([
        Reception(forged, "mqtt", "local"), Reception(stranger, "mqtt", "local"),
        Reception(bell_press(bell, 4), "mqtt", "local", topic=other_topic),
        Reception(b"\x10garbage", "serial", "uart0"),
        Reception(frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, DeviceKeys(bytes(16)), 1,
                                      epoch_of(clock.now)), "ble", "ble0")])
    assert [o.verdict for o in outcomes] == ["tag", "unknown", "topic", "short", "unknown"]
    assert core.store.queue_depth() == 0


def test_bell_press_is_located_at_the_bells_registered_position(core, street, clock):
    bell = street.bells[0]
    outcomes, downlinks = core.process_batch([Reception(bell_press(bell, 1), "mqtt", "local")])
    alert = core.store.alert(outcomes[0].alert_id)[2]
    assert alert["location"] == {"lat": bell.position[0], "lon": bell.position[1], "accuracy_m": 5,
                                 "source": "registered"}
    assert downlinks


def test_without_a_fix_the_wearable_is_placed_at_the_receiver_with_an_rssi_radius(core, street, clock):
    no_fix = {"lat": None, "lon": None, "accuracy_m": 0}
    outcomes, _ = core.process_batch([Reception(sos_from(street.wearables[0], 1, clock, no_fix), "ble", "ble0",
                                                rssi=-85)])
    location = core.store.alert(outcomes[0].alert_id)[2]["location"]
    assert location["source"] == "receiver" and (location["lat"], location["lon"]) == ORIGIN
    assert 10 <= location["accuracy_m"] <= 150


def test_test_sos_is_forwarded_marked_as_test_and_blinks_nothing(core, street, clock):
    frame = frames.build_sealed("test_sos", {"lat": ORIGIN[0], "lon": ORIGIN[1], "accuracy_m": 5},
                                DeviceKeys(street.wearables[0].key), 1, epoch_of(clock.now))
    outcomes, downlinks = core.process_batch([Reception(frame, "ble", "ble0")])
    assert core.store.alert(outcomes[0].alert_id)[2]["test"] is True
    assert downlinks == []


def test_cancel_within_five_seconds_links_to_the_sos_and_restores_the_lights(core, street, clock):
    wearable = street.wearables[0]
    _, blink = core.process_batch([Reception(sos_from(wearable, 10, clock), "ble", "ble0")])
    clock.now += 3
    cancel = frames.build_sealed("cancel", {"sos_counter": 10}, DeviceKeys(wearable.key), 11, epoch_of(clock.now))
    outcomes, restore = core.process_batch([Reception(cancel, "ble", "ble0")])
    alert = core.store.alert(outcomes[0].alert_id)[2]
    assert alert["type"] == "cancel" and alert["cancels"] == "%s-10" % wearable.hex_id and alert["within_window"]
    assert {d.device_id for d in restore} == {d.device_id for d in blink}
    light = street.lights[0]
    restored = [frames.unpack(d.frame, DeviceKeys(light.key)) for d in restore if d.device_id == light.device_id]
    assert restored[0].fields["action"] == "restore"


def test_late_cancel_is_forwarded_but_lights_keep_blinking(core, street, clock):
    wearable = street.wearables[0]
    core.process_batch([Reception(sos_from(wearable, 10, clock), "ble", "ble0")])
    clock.now += 30
    cancel = frames.build_sealed("cancel", {"sos_counter": 10}, DeviceKeys(wearable.key), 11, epoch_of(clock.now))
    outcomes, restore = core.process_batch([Reception(cancel, "ble", "ble0")])
    assert core.store.alert(outcomes[0].alert_id)[2]["within_window"] is False
    assert restore == []


def test_acknowledgement_runs_only_after_the_batch_is_on_disk(street, clock, tmp_path):
    core, store = make_core(street, clock)
    committed_before_ack = []
    bell = street.bells[0]

    def ack():
        # A second connection sees only committed data.
        import sqlite3
        with sqlite3.connect(str(store.path)) as other:
            committed_before_ack.append(other.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])

    core.process_batch([Reception(bell_press(bell, 1), "mqtt", "local", ack=ack)])
    assert committed_before_ack == [1]
    store.close()


def test_counters_dedup_window_and_rid_state_survive_a_restart(street, clock):
    wearable = street.wearables[0]
    core, store = make_core(street, clock)
    frame = sos_from(wearable, 70, clock)
    core.process_batch([Reception(frame, "ble", "ble0")])
    store.close()
    core, store = make_core(street, clock)
    outcomes, _ = core.process_batch([Reception(frame, "ble", "ble0"),
                                      Reception(sos_from(wearable, 70 - frames.REPLAY_WINDOW, clock), "ble", "ble0"),
                                      Reception(sos_from(wearable, 71, clock), "ble", "ble0")])
    assert [o.verdict for o in outcomes] == ["duplicate", "replay", "accepted"]
    store.close()


def test_alert_ids_are_idempotent_across_a_reprocessed_frame(street, clock):
    """A frame processed again after its dedup entry expired still makes no second alert."""
    core, store = make_core(street, clock)
    bell = street.bells[0]
    store.add_alert("%s-1" % bell.hex_id, bell.device_id, clock.now, clock.now, {"first": True})
    store.commit()
    core.process_batch([Reception(bell_press(bell, 1), "mqtt", "local")])
    assert store.alert("%s-1" % bell.hex_id)[2] == {"first": True}
    store.close()


def test_center_ack_reaches_a_wearable_as_a_sealed_frame_under_its_current_rotating_id(core, street, clock):
    wearable = street.wearables[0]
    outcomes, _ = core.process_batch([Reception(sos_from(wearable, 12, clock), "ble", "ble0")])
    (ack,) = core.center_ack(outcomes[0].alert_id, "dispatched", clock.now)
    assert ack.via == "ble" and len(ack.frame) == 24
    keys = DeviceKeys(wearable.key)
    frame = frames.unpack(ack.frame, keys)
    assert frame.kind == "center_ack" and frame.downlink and frame.sealed
    assert frame.fields == {"acked_counter": 12, "status": "dispatched"}
    assert frame.rid == frames.peek(sos_from(wearable, 13, clock)).rid  # the id the wearable uses now


def test_a_wearable_heard_an_epoch_ahead_gets_the_time_with_its_ack(core, street, clock):
    wearable = street.wearables[0]
    keys = DeviceKeys(wearable.key)
    ahead = epoch_of(clock.now) + 1  # its clock runs 10 minutes or more fast
    sos = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, 5, ahead)
    outcomes, _ = core.process_batch([Reception(sos, "ble", "ble0")])
    time_frame, ack = core.center_ack(outcomes[0].alert_id, "received", clock.now)
    assert time_frame.via == ack.via == "ble"
    set_clock, acked = frames.unpack(time_frame.frame, keys), frames.unpack(ack.frame, keys)
    assert set_clock.kind == "time" and set_clock.fields == {"unix_time": int(clock.now)}
    assert acked.kind == "center_ack" and acked.counter > set_clock.counter
    assert set_clock.rid == acked.rid == frames.peek(sos).rid  # heard where the wearable listens
    # in step with the agent: the ack alone
    outcomes, _ = core.process_batch([Reception(sos_from(street.wearables[1], 3, clock), "ble", "ble0")])
    assert [d.kind for d in core.center_ack(outcomes[0].alert_id, "received", clock.now)] == ["center_ack"]


def test_acknowledged_alerts_are_purged_after_retention_and_open_ones_kept(core, street, clock):
    bells = street.bells
    outcomes, _ = core.process_batch([Reception(bell_press(bells[0], 1), "mqtt", "local"),
                                      Reception(bell_press(bells[1], 1), "mqtt", "local")])
    core.store.ack_alert(outcomes[0].alert_id, "received", clock.now)
    core.store.commit()
    retention = 30 * 86400
    assert core.store.purge(clock.now + retention - 1, retention, 600) == 0
    assert core.store.purge(clock.now + retention + 1, retention, 600) == 1
    assert core.store.alert(outcomes[0].alert_id) is None
    assert core.store.alert(outcomes[1].alert_id)[1] == "pending"  # never acknowledged: kept


def test_a_lamp_fault_raises_one_alert_until_the_lamp_is_repaired(core, street):
    light = street.lights[0]
    keys = DeviceKeys(light.key)

    def state(counter, faults, mode="blink"):
        fields = {"commanded_pct": 100, "actual_pct": 100, "mode": mode, "faults": faults, "last_command": 0}
        frame = frames.build_plain("light_state", fields, keys, light.device_id, counter)
        return core.process_batch([Reception(frame, "mqtt", "local")])[0][0].alert_id

    alerts = [state(1, 0), state(2, 1), state(3, 1, "schedule"), state(4, 1), state(5, 0), state(6, 1)]
    assert alerts == [None, "%s-2" % light.hex_id, None, None, None, "%s-6" % light.hex_id]


def test_an_agent_that_lost_its_database_resumes_its_commands_above_what_the_light_accepted(core, street, clock):
    light = street.lights[0]
    keys = DeviceKeys(light.key)
    state = {"commanded_pct": 60, "actual_pct": 60, "mode": "schedule", "faults": 0, "last_command": 5000}
    core.process_batch([Reception(frames.build_plain("light_state", state, keys, light.device_id, 1), "mqtt", "local")])
    command = frames.unpack(core.light_command(core.registry.get(light.device_id), "blink", 100, 60, clock.now).frame,
                            keys)
    assert command.counter == 5001  # a fresh database would have said 1, which the light refuses as a replay


@pytest.mark.parametrize("delay_s", [30 * 60, 86400, 7 * 86400], ids=["30min", "1day", "1week"])
def test_a_sealed_frame_held_back_and_replayed_later_is_not_an_emergency(street, clock, delay_s):
    """Issue 10.1: an attacker keeps a wearable's SOS from the epoch after the last one this
    agent heard, and replays it later. It must raise nothing, teach no clock offset, and leave
    the wearable's genuine frames resolvable, also after a restart of the agent."""
    wearable = street.wearables[0]
    keys = DeviceKeys(wearable.key)
    core, store = make_core(street, clock)
    heard = frames.build_sealed("heartbeat", {"battery_pct": 80, "uptime_min": 1, "faults": 0}, keys, 10,
                                epoch_of(clock.now))
    assert core.process_batch([Reception(heard, "ble", "ble0")])[0][0].verdict == "accepted"
    made = clock.now + 600  # made in the next epoch, out of this agent's hearing
    held_back = frames.build_sealed("sos", {"lat": ORIGIN[0], "lon": ORIGIN[1], "accuracy_m": 9}, keys, 11,
                                    epoch_of(made))
    clock.now = made + delay_s
    (outcome,), downlinks = core.process_batch([Reception(held_back, "ble", "ble0")])
    assert outcome.verdict == "unknown" and downlinks == []
    assert store.state_counts().get("pending", 0) == 0
    assert core.resolver.state(wearable.device_id) == (epoch_of(NOW), 0, 0)
    store.close()
    core, store = make_core(street, clock)
    genuine = sos_from(wearable, 12, clock)
    (outcome,), _ = core.process_batch([Reception(genuine, "ble", "ble0")])
    assert outcome.verdict == "accepted" and outcome.alert_id == "%s-12" % wearable.hex_id
    store.close()


def test_a_wearable_without_a_clock_is_heard_gets_the_time_and_its_old_frames_stay_old(core, street, clock):
    wearable, never_heard = street.wearables[:2]
    keys = DeviceKeys(wearable.key)
    first = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, DeviceKeys(never_heard.key), 1,
                                CLOCKLESS + 1)
    assert core.process_batch([Reception(first, "ble", "ble0")])[0][0].verdict == "accepted"
    core.process_batch([Reception(sos_from(wearable, 40, clock), "ble", "ble0")])
    clock.now += 90 * 86400  # months later, after a battery change: its first start without a clock
    clockless = CLOCKLESS + 1
    sos = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, 128, clockless)
    (outcome,), downlinks = core.process_batch([Reception(sos, "ble", "ble0")])
    assert outcome.verdict == "accepted" and outcome.kind == "sos"
    # it listens after every frame while it has no clock: the time goes out at once, under its rid
    time_frames = [d for d in downlinks if d.kind == "time"]
    assert len(time_frames) == 1 and time_frames[0].via == "ble"
    clock_frame = frames.unpack(time_frames[0].frame, keys)
    assert clock_frame.fields["unix_time"] == int(clock.now) and clock_frame.rid == frames.peek(sos).rid
    time_frame, ack = core.center_ack(outcome.alert_id, "received", clock.now)
    assert frames.unpack(ack.frame, keys).rid == frames.peek(sos).rid
    # a clockless frame carries no time: one below the highest counter is old, window or not
    older = frames.build_sealed("heartbeat", {"battery_pct": 80, "uptime_min": 1, "faults": 0}, keys, 127,
                                clockless)
    assert core.process_batch([Reception(older, "ble", "ble0")])[0][0].verdict == "replay"

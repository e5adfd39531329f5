"""Walk-home monitoring: lights ahead of the walker brighten, those behind are restored, and
all go back to their schedule on arrival or stop."""

import json

import pytest

from ansim_agent import center_messages
from ansim_agent import config as config_module
from ansim_agent import registry as registry_module
from ansim_agent.intake import Reception
from ansim_agent.monitoring import Route
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import ORIGIN, Street, offset
from test_core import Clock, make_core

WAIT_S = 10


def light_ids(street, metres):
    """Ids of the street's lights at these distances east of the origin (lights every 20 m)."""
    return {street.lights[m // 20].device_id for m in metres}


def test_route_locates_points_along_and_off_it():
    route = Route([ORIGIN, offset(ORIGIN, 100), offset(ORIGIN, 100, 50)])
    assert route.length_m == pytest.approx(150, abs=0.5)
    along, off = route.locate(offset(ORIGIN, 40, 3))
    assert along == pytest.approx(40, abs=0.5) and off == pytest.approx(3, abs=0.5)
    along, off = route.locate(offset(ORIGIN, 104, 20))
    assert along == pytest.approx(120, abs=0.5) and off == pytest.approx(4, abs=0.5)


def test_lights_follow_the_walker_and_are_restored_on_arrival(tmp_path):
    street = Street(tmp_path / "street", center_port=1)
    core, store = make_core(street, Clock())
    route = [list(ORIGIN), list(offset(ORIGIN, 180))]

    def commands(request):
        out = {}
        for d in core.monitor(center_messages.parse_monitor(json.dumps(request)), Clock().now):
            light = next(l for l in street.lights if l.device_id == d.device_id)
            out[d.device_id] = frames.unpack(d.frame, DeviceKeys(light.key)).fields["action"]
        return out

    start = commands({"session": "walk-1", "action": "start", "route": route})
    assert start == {i: "brighten" for i in light_ids(street, range(0, 101, 20))}
    moved = commands({"session": "walk-1", "action": "update", "position": list(offset(ORIGIN, 60, 2))})
    assert moved == {**{i: "restore" for i in light_ids(street, (0, 20, 40))},
                     **{i: "brighten" for i in light_ids(street, (120, 140, 160))}}
    arrived = commands({"session": "walk-1", "action": "arrived"})
    assert arrived == {i: "restore" for i in light_ids(street, range(60, 161, 20))}
    with pytest.raises(center_messages.Refused, match="no monitoring session"):
        commands({"session": "walk-1", "action": "update", "position": list(ORIGIN)})
    store.close()


def actions(street, downlinks):
    """{light id: its command's action} of a batch of downlinks."""
    out = {}
    for d in downlinks:
        light = next(l for l in street.lights if l.device_id == d.device_id)
        out[d.device_id] = frames.unpack(d.frame, DeviceKeys(light.key)).fields["action"]
    return out


def sos_at(core, wearable, counter, east_m, clock):
    lat, lon = offset(ORIGIN, east_m)
    frame = frames.build_sealed("sos", {"lat": lat, "lon": lon, "accuracy_m": 8}, DeviceKeys(wearable.key), counter,
                                epoch_of(clock.now))
    outcomes, downlinks = core.process_batch([Reception(frame, "ble", "ble0", rssi=-70)])
    return outcomes[0].alert_id, downlinks


def test_an_open_emergency_keeps_its_blink_through_a_walk_which_gets_the_lights_back_after(tmp_path):
    """A walk passes lights that blink for an open SOS: it neither brightens nor restores them
    (the emergency's blink goes first); resolving the SOS hands each to what the walk wants."""
    street, clock = Street(tmp_path / "street", center_port=1), Clock()
    core, store = make_core(street, clock)
    alert_id, blink = sos_at(core, street.wearables[0], 5, 26, clock)  # blinks the lights within 50 m
    assert actions(street, blink) == {i: "blink" for i in light_ids(street, (0, 20, 40, 60))}

    def walk(request):
        return actions(street, core.monitor(center_messages.parse_monitor(json.dumps(request)), clock.now))

    route = [list(ORIGIN), list(offset(ORIGIN, 180))]
    assert walk({"session": "w", "action": "start", "route": route}) == {
        i: "brighten" for i in light_ids(street, (80, 100))}
    assert walk({"session": "w", "action": "update", "position": list(offset(ORIGIN, 60, 2))}) == {
        i: "brighten" for i in light_ids(street, (120, 140, 160))}  # nothing for the blinking ones behind
    assert actions(street, core.resolve(alert_id, clock.now)) == {
        **{i: "restore" for i in light_ids(street, (0, 20, 40))},
        **{i: "brighten" for i in light_ids(street, (60,))}}  # the walker is there
    assert walk({"session": "w", "action": "arrived"}) == {i: "restore" for i in light_ids(street, range(60, 161, 20))}
    store.close()


def test_a_light_removed_from_the_registry_during_a_walk_gets_no_more_commands(tmp_path):
    street, clock = Street(tmp_path / "street", center_port=1), Clock()
    core, store = make_core(street, clock)

    def walk(request):
        return actions(street, core.monitor(center_messages.parse_monitor(json.dumps(request)), clock.now))

    route = [list(ORIGIN), list(offset(ORIGIN, 180))]
    assert set(walk({"session": "w", "action": "start", "route": route})) == light_ids(street, range(0, 101, 20))
    removed = street.lights[6].device_id  # at 120 m: the next update would brighten it
    old = core.registry
    core.reload(registry_module.Registry([d for d in old.devices.values() if d.device_id != removed],
                                         old.cameras, old.facilities))
    assert walk({"session": "w", "action": "update", "position": list(offset(ORIGIN, 60, 2))}) == {
        **{i: "restore" for i in light_ids(street, (0, 20, 40))},
        **{i: "brighten" for i in light_ids(street, (140, 160))}}
    assert removed not in walk({"session": "w", "action": "arrived"})
    store.close()


def test_the_end_of_one_emergency_leaves_the_lights_of_another_blinking(tmp_path):
    street, clock = Street(tmp_path / "street", center_port=1), Clock()
    core, store = make_core(street, clock)
    first, _ = sos_at(core, street.wearables[0], 5, 26, clock)  # lights at 0-60 m
    second, blink = sos_at(core, street.wearables[1], 5, 66, clock)  # lights at 20-100 m
    assert set(actions(street, blink)) == light_ids(street, (20, 40, 60, 80, 100))
    assert actions(street, core.resolve(first, clock.now)) == {i: "restore" for i in light_ids(street, (0,))}
    assert actions(street, core.resolve(second, clock.now)) == {
        i: "restore" for i in light_ids(street, (20, 40, 60, 80, 100))}
    store.close()


def test_the_center_starts_monitoring_over_mqtt(tmp_path, mqtt_client):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        lights_view = mqtt_client(local)
        lights_view.subscribe("ansim/v1/dev/+/down")
        births = mqtt_client(center)
        births.subscribe("ansim/center/v1/agents/+/state")
        with Agent(config_module.load(street.config_path)):
            births.next_message(WAIT_S)
            births.publish("ansim/center/v1/agents/%s/monitor" % street.agent_id, json.dumps(
                {"session": 9, "action": "start", "route": [list(ORIGIN), list(offset(ORIGIN, 180))]}))
            bright = set()
            for _ in range(6):
                msg = lights_view.next_message(WAIT_S)
                light = next(l for l in street.lights if topics.topic(l.device_id, topics.DOWN) == msg.topic)
                command = frames.unpack(msg.payload, DeviceKeys(light.key))
                assert command.fields["action"] == "brighten" and command.fields["level_pct"] == 100
                bright.add(light.device_id)
        assert bright == light_ids(street, range(0, 101, 20))

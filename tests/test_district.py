"""Two agents of one district over real mosquitto brokers (SPEC.md 5): a frame accepted by
one is never a new emergency at the other, replayed there seconds later or at an agent
restored from a backup, counted at the center by its own subscriber and on the other
agent's light topics."""

import json
import shutil
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.intake import Reception
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import ORIGIN, Street

WAIT_S = 10


@pytest.fixture
def district(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "center") as center, \
            MosquittoBroker(workdir=tmp_path / "local-a") as local_a, \
            MosquittoBroker(workdir=tmp_path / "local-b") as local_b:
        street_a = Street(tmp_path / "a", center_port=center.port, local_port=local_a.port, agent_id="edge-a")
        street_b = street_a.neighbour(tmp_path / "b", "edge-b", local_port=local_b.port)
        yield center, (street_a, local_a), (street_b, local_b)


def relay_topic(relay):
    return "ansim/v1/relay/%s/up" % relay


class CenterView:
    """The center's own subscriber: every alert, by agent."""

    def __init__(self, client):
        self.client = client
        client.subscribe("ansim/center/v1/jung-gu/alerts/#")

    def alerts_until(self, alert_id):
        """Alerts (agent id, alert id) received up to and including the first ``alert_id``."""
        seen = []
        while True:
            alert = json.loads(self.client.next_message(WAIT_S).payload)
            seen.append((alert["agent"]["id"], alert["alert_id"]))
            if alert["alert_id"] == alert_id:
                return seen


def shared(agent, device_id, counter):
    waits.until(lambda: (agent.store.up_state(device_id)[0] or 0) >= counter, WAIT_S,
                "agent %s to learn counter %d of %08x" % (agent.config.agent["id"], counter, device_id))


def frame_verdicts(agent):
    """``ansim_frames_total`` by verdict, as the agent's /metrics shows it."""
    counts = {}
    for metric in agent.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "ansim_frames_total" and sample.value:
                counts[sample.labels["verdict"]] = counts.get(sample.labels["verdict"], 0) + int(sample.value)
    return counts


def sos(wearable, counter):
    fix = {"lat": ORIGIN[0], "lon": ORIGIN[1] + 0.0003, "accuracy_m": 8}
    return frames.build_sealed("sos", fix, DeviceKeys(wearable.key), counter, epoch_of(time.time()))


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def test_a_wearable_sos_accepted_at_one_agent_is_no_new_emergency_at_the_other(district, mqtt_client):
    center, (street_a, local_a), (street_b, local_b) = district
    view = CenterView(mqtt_client(center))
    reports = mqtt_client(center)
    reports.subscribe("ansim/center/v1/jung-gu/heard/#")
    lights_b = mqtt_client(local_b)
    lights_b.subscribe("ansim/v1/dev/+/down")
    wearable = street_a.wearables[0]
    with Agent(config_module.load(street_a.config_path)), \
            Agent(config_module.load(street_b.config_path)) as agent_b:
        waits.until(lambda: agent_b.uplink.connected.is_set(), WAIT_S, "agent b to reach the center")
        captured = sos(wearable, 40)
        mqtt_client(local_a).publish(relay_topic("a1"), captured)
        assert view.alerts_until("%s-40" % wearable.hex_id) == [("edge-a", "%s-40" % wearable.hex_id)]
        shared(agent_b, wearable.device_id, 40)
        # b's own radio hears the genuine advert after the share: no alert, a reception report
        agent_b.intake.put(Reception(captured, "ble", "hci0", rssi=-77))
        report = json.loads(reports.next_message(WAIT_S).payload)
        assert (report["alert_id"], report["agent"], report["rssi"]) == ("%s-40" % wearable.hex_id, "edge-b", -77)
        assert report["position"] == {"lat": ORIGIN[0], "lon": ORIGIN[1]}
        # the wormhole: the same frame brought to agent b, at once and again later
        relay_b = mqtt_client(local_b)
        relay_b.publish(relay_topic("b1"), captured)
        relay_b.publish(relay_topic("b1"), captured)
        relay_b.publish(relay_topic("b1"), sos(wearable, 41))  # then a genuine new SOS at b
        assert view.alerts_until("%s-41" % wearable.hex_id) == [("edge-b", "%s-41" % wearable.hex_id)]
        commands = []
        while len(commands) < 4:  # the SOS 41 blinks b's four lights near it, and nothing before
            msg = lights_b.next_message(WAIT_S)
            light = next(l for l in street_b.lights if msg.topic == topics.topic(l.device_id, topics.DOWN))
            commands.append(frames.unpack(msg.payload, DeviceKeys(light.key)))
        assert {c.fields["action"] for c in commands} == {"blink"}
        assert len({c.counter for c in commands}) == 1  # one command each: the genuine SOS's
        assert frame_verdicts(agent_b) == {"duplicate": 3, "accepted": 1}


def test_a_bell_press_accepted_at_one_agent_is_refused_at_an_agent_restored_from_a_backup(district, mqtt_client):
    center, (street_a, local_a), (street_b, local_b) = district
    view = CenterView(mqtt_client(center))
    bell = street_a.bells[0]
    with Agent(config_module.load(street_a.config_path)):
        mqtt_client(local_a).publish(topics.topic(bell.device_id, topics.UP), press(bell, 7))
        view.alerts_until("%s-7" % bell.hex_id)
    # b never heard the bell: its store is what a backup from before the press holds (empty)
    shutil.rmtree(street_b.directory / "data", ignore_errors=True)
    with Agent(config_module.load(street_b.config_path)) as agent_b:
        shared(agent_b, bell.device_id, 7)  # the district's retained share, at connection
        device_b = mqtt_client(local_b)
        device_b.publish(topics.topic(bell.device_id, topics.UP), press(bell, 7))
        device_b.publish(topics.topic(bell.device_id, topics.UP), press(bell, 8))
        assert view.alerts_until("%s-8" % bell.hex_id) == [("edge-b", "%s-8" % bell.hex_id)]

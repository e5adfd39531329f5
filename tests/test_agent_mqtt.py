"""The agent end to end over real mosquitto brokers: a bell's press reaches the center as a
located alert, the lights around it blink, the center's ack reaches the bell, its resolve
restores the lights, and unacknowledged alerts escalate to the citywide center."""

import json
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from test_alert_schema import VALIDATOR

WAIT_S = 10


@pytest.fixture
def site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "2"}})
        yield street, local, center


def wait_until(predicate, timeout=WAIT_S, what="condition"):
    return waits.until(predicate, timeout, what)


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def test_bell_press_to_center_lights_ack_and_resolve(site, mqtt_client):
    street, local, center = site
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/#")
    lights_view = mqtt_client(local)
    lights_view.subscribe("ansim/v1/dev/+/down")
    with Agent(config_module.load(street.config_path)) as agent:
        birth = center_view.next_message(WAIT_S)
        assert birth.topic == "ansim/center/v1/agents/%s/state" % street.agent_id
        assert json.loads(birth.payload)["state"] == "online"

        bell = street.bells[0]
        device = mqtt_client(local)
        assert not device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1)).is_failure
        alert_msg = center_view.next_message(WAIT_S)
        assert alert_msg.topic == "ansim/center/v1/jung-gu/alerts/%s" % bell.hex_id
        alert = json.loads(alert_msg.payload)
        assert alert["type"] == "bell_press" and alert["alert_id"] == "%s-1" % bell.hex_id
        assert alert["location"]["source"] == "registered" and alert["cameras"]
        VALIDATOR.validate(alert)

        blinking = {}
        for _ in range(3):  # the bell is 30 m east: lights at 0..80 m within 50 m are 3
            msg = lights_view.next_message(WAIT_S)
            blinking[msg.topic] = frames.unpack(msg.payload, DeviceKeys(
                next(l.key for l in street.lights if msg.topic == topics.topic(l.device_id, topics.DOWN))))
        assert {f.fields["action"] for f in blinking.values()} == {"blink"}

        bell_view = mqtt_client(local)
        bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
        ack = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
        assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 1, "status": "received"}

        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": "resolved"}))
        bell_view.next_message(WAIT_S)  # the "resolved" ack to the bell
        restored = set()
        while len(restored) < 3:
            msg = lights_view.next_message(WAIT_S)
            light = next((l for l in street.lights if msg.topic == topics.topic(l.device_id, topics.DOWN)), None)
            if light is None:  # the bell's own acks share the filter
                continue
            command = frames.unpack(msg.payload, DeviceKeys(light.key))
            if command.kind == "light_command" and command.fields["action"] == "restore":
                restored.add(msg.topic)
        assert restored == set(blinking)
        assert agent.store.alert(alert["alert_id"])[1] == "acked"


def test_unacknowledged_alert_escalates_to_the_citywide_center(site, mqtt_client):
    street, local, center = site
    citywide = mqtt_client(center)
    citywide.subscribe("ansim/center/v1/citywide/alerts/#")
    with Agent(config_module.load(street.config_path)):
        bell = street.bells[1]
        mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 9))
        escalated = json.loads(citywide.next_message(WAIT_S).payload)
        assert escalated["alert_id"] == "%s-9" % bell.hex_id and escalated["escalated_from"] == "jung-gu"


def test_escalation_after_an_outage_is_bounded_and_never_floods_the_link(site, mqtt_client):
    """A backlog older than escalation_s, delivered when the center's broker comes back: the
    district gets every alert first, and nothing is escalated until the district has had
    escalation_s to acknowledge; then copies leave at a bounded rate."""
    street, local, center = site  # escalation_s = 2
    from ansim_agent.uplink import ESCALATION_BURST, ESCALATIONS_PER_S
    center.stop()
    with Agent(config_module.load(street.config_path)) as agent:
        device = mqtt_client(local)
        bell = street.bells[0]
        backlog = 300
        for counter in range(1, backlog + 1):
            device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter))
        wait_until(lambda: agent.store.queue_depth() == backlog, what="the backlog stored")
        center.start()
        district, citywide = mqtt_client(center), mqtt_client(center)
        district.subscribe("ansim/center/v1/jung-gu/alerts/#")
        citywide.subscribe("ansim/center/v1/citywide/alerts/#")
        got = [json.loads(district.next_message(WAIT_S).payload)["alert_id"] for _ in range(backlog)]
        assert got == ["%s-%d" % (bell.hex_id, c) for c in range(1, backlog + 1)]
        with pytest.raises(TimeoutError):  # the district had the alerts for less than escalation_s
            citywide.next_message(1)
        first = citywide.next_message(WAIT_S)
        start = time.monotonic()
        window = 3.0
        count = 1
        while time.monotonic() - start < window:
            try:
                citywide.next_message(max(0.01, window - (time.monotonic() - start)))
            except TimeoutError:
                break
            count += 1
        assert json.loads(first.payload)["escalated_from"] == "jung-gu"
        assert count <= ESCALATION_BURST + ESCALATIONS_PER_S * (window + 1), count


def test_alerts_survive_a_center_outage_and_arrive_in_order(site, mqtt_client):
    street, local, center = site
    center.stop()
    with Agent(config_module.load(street.config_path)) as agent:
        device = mqtt_client(local)
        bell = street.bells[0]
        for counter in range(1, 21):
            assert not device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter)).is_failure
        # The device's PUBACK comes from the broker; the agent stores before it PUBACKs its copy.
        wait_until(lambda: agent.store.queue_depth() == 20)
        center.start()
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        ids = [json.loads(view.next_message(WAIT_S).payload)["alert_id"] for _ in range(20)]
        assert ids == ["%s-%d" % (bell.hex_id, c) for c in range(1, 21)]


def test_garbage_oversize_and_bad_topics_are_counted_and_never_stop_the_agent(site, mqtt_client):
    street, local, center = site
    view = mqtt_client(center)
    view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    with Agent(config_module.load(street.config_path)) as agent:
        device = mqtt_client(local)
        bell = street.bells[0]
        device.publish(topics.topic(bell.device_id, topics.UP), bytes(1000))            # oversize
        device.publish(topics.topic(bell.device_id, topics.UP), b"\x10\xff\x00garbage")  # malformed
        device.publish("ansim/v1/dev/NOTHEX!!/up", press(bell, 1))                      # bad topic
        device.publish(topics.topic(street.bells[1].device_id, topics.UP), press(bell, 2))  # wrong device's topic
        device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 3))
        assert json.loads(view.next_message(WAIT_S).payload)["alert_id"] == "%s-3" % bell.hex_id
        counted = agent.metrics.frames_by_verdict()
        assert (counted.get("oversize"), counted.get("short"), counted.get("topic")) == (1, 1, 2)


def test_a_center_broker_without_mqtt_v5_is_reached_over_3_1_1(tmp_path, mqtt_client):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"mqtt_version": "3"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/#")
        with Agent(config_module.load(street.config_path)):
            assert json.loads(view.next_message(WAIT_S).payload)["state"] == "online"
            bell = street.bells[0]
            mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 4))
            assert json.loads(view.next_message(WAIT_S).payload)["alert_id"] == "%s-4" % bell.hex_id
        # mosquitto logs each client's protocol (its own enum): p2 is MQTT 3.1.1, p5 is MQTT v5.
        assert "as %s (p2," % street.agent_id in center.log_path.read_text()


def test_a_lights_reported_state_is_kept_at_the_center_for_its_map(site, mqtt_client):
    """CENTER_API.md: each light's last light_state, retained on the district's lights topic;
    a console that connects later finds it, and it is sent again after the center was away."""
    street, local, center = site
    light = street.lights[2]
    state = frames.build_plain("light_state", {"commanded_pct": 100, "actual_pct": 97, "mode": "blink", "faults": 0,
                                               "last_command": 0}, DeviceKeys(light.key), light.device_id, 3)
    with Agent(config_module.load(street.config_path)) as agent:
        waits.until(agent.uplink.connected.is_set, WAIT_S, "the agent connected to the center")
        mqtt_client(local).publish(topics.topic(light.device_id, topics.UP), state)
        topic = "ansim/center/v1/jung-gu/lights/%s" % light.hex_id
        for _ in ("the center has it", "a console that connects later gets it retained"):
            console = mqtt_client(center)
            console.subscribe(topic)
            msg = console.next_message(WAIT_S)
        body = json.loads(msg.payload)
        assert msg.retain and body["device"] == light.hex_id and body["agent"] == street.agent_id
        assert (body["mode"], body["commanded_pct"], body["actual_pct"], body["faults"]) == ("blink", 100, 97, 0)

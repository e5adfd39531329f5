"""Nothing fails silently: an intake missing at start leaves the rest running and comes up
when it appears, a crash in a thread stops the agent for systemd to restart it, SIGHUP
brings in new devices without a restart, and a device's last will is never lost."""

import json
import signal

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker, free_port
from ansim_simulators.world.street import ORIGIN, Street, offset
from test_agent_crash import start_agent

WAIT_S = 10


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def up_gauge(agent, component):
    for metric in agent.metrics.up.collect():
        for sample in metric.samples:
            if sample.labels["component"] == component:
                return sample.value
    return None


def next_alert(view, timeout=WAIT_S):
    while True:
        msg = view.next_message(timeout)
        if "/alerts/" in msg.topic:
            return json.loads(msg.payload)


def test_a_local_broker_missing_at_start_is_shown_down_and_joined_when_it_comes(tmp_path, mqtt_client):
    local_port = free_port()
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local_port,
                        overrides={"center": {"escalation_s": "3600"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/#")
        with Agent(config_module.load(street.config_path)) as agent:
            assert json.loads(view.next_message(WAIT_S).payload)["state"] == "online"  # the uplink runs
            waits.until(lambda: "cannot reach the local MQTT broker" in agent.health.down_components().get(
                "local_mqtt", ""), WAIT_S, "local_mqtt shown down with the reason")
            assert up_gauge(agent, "local_mqtt") == 0
            with MosquittoBroker(workdir=tmp_path / "local", port=local_port) as local:
                waits.until(lambda: up_gauge(agent, "local_mqtt") == 1, 30, "local_mqtt up once the broker is there")
                bell = street.bells[0]
                mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
                assert next_alert(view)["alert_id"] == "%s-1" % bell.hex_id


def test_an_unhandled_error_in_the_pipeline_stops_the_agent_and_says_where(tmp_path, mqtt_client):
    """A bug must not leave a live process with a dead thread: the agent stops (the command
    exits EXIT_FAULT, systemd restarts it) and /metrics shows the part that crashed."""
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port)
        with Agent(config_module.load(street.config_path)) as agent:
            waits.until(agent.uplink.connected.is_set, WAIT_S, "the agent connected to the center")

            def broken(request, now):
                raise RuntimeError("a bug in monitoring")
            agent.core.monitor = broken
            mqtt_client(center).publish("ansim/center/v1/agents/%s/monitor" % street.agent_id,
                                        json.dumps({"session": "w", "action": "stop"}))
            assert agent.wait(WAIT_S), "the agent did not stop after a crash in its pipeline"
            component, error = agent.health.fault
            assert component == "pipeline" and "a bug in monitoring" in str(error)
            assert up_gauge(agent, "pipeline") == 0


def test_sighup_reloads_the_registry_and_a_new_bell_is_heard_without_a_restart(tmp_path, mqtt_client):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/#")
        with open(tmp_path / "agent.log", "w") as log:
            agent = start_agent(street, log)
            try:
                assert json.loads(view.next_message(WAIT_S).payload)["state"] == "online"
                new_bell = street._device(0x000200AA, "bell", offset(ORIGIN, 200))
                street.bells.append(new_bell)
                street._write_registry()
                agent.send_signal(signal.SIGHUP)
                device = mqtt_client(local)

                def heard():
                    device.publish(topics.topic(new_bell.device_id, topics.UP), press(new_bell, heard.counter))
                    heard.counter += 1
                    try:
                        return next_alert(view, 0.5)["alert_id"].startswith(new_bell.hex_id)
                    except TimeoutError:
                        return False
                heard.counter = 1
                waits.until(heard, WAIT_S, "an alert from the bell added by SIGHUP")
                assert agent.poll() is None, "SIGHUP must not stop the agent"
            finally:
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(10) == 0
        assert "registry reloaded" in (tmp_path / "agent.log").read_text()


def test_a_will_fired_right_after_a_device_came_back_is_reported(tmp_path, mqtt_client):
    """A bell that drops again within seconds of coming back: online then offline again at
    the center at once, not 90 s later from silence."""
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/+/alerts/#")
        bell = street.bells[0]
        state = topics.topic(bell.device_id, topics.STATE)
        device = mqtt_client(local)
        with Agent(config_module.load(street.config_path)):
            waits.until(lambda: device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1)) and
                        next_alert(view)["type"] == "bell_press", WAIT_S, "the agent listening")
            device.publish(state, b"offline")  # what the broker publishes for the bell's will
            assert next_alert(view)["type"] == "device_offline"
            device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 2))  # back
            device.publish(state, b"offline")  # and gone again, well within supervision's 5 s
            types = [next_alert(view, 3)["type"] for _ in range(3)]
        assert sorted(types) == ["bell_press", "device_offline", "device_online"]
        assert types.index("device_online") < types.index("device_offline")


def test_a_flood_of_online_messages_makes_one_time_frame(tmp_path, mqtt_client):
    """The state topic is unauthenticated (until the broker's per-device ACL): 50 forged
    "online" messages for a light must not make 50 frames to it."""
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        light, bell = street.lights[-1], street.bells[0]  # the light 180 m away: the press does not blink it
        light_view = mqtt_client(local)
        light_view.subscribe(topics.topic(light.device_id, topics.DOWN))
        device = mqtt_client(local)
        with Agent(config_module.load(street.config_path)):
            for _ in range(50):
                device.publish(topics.topic(light.device_id, topics.STATE), b"online")
            device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
            next_alert(view)  # the pipeline has handled every "online" before this press
            first = frames.unpack(light_view.next_message(WAIT_S).payload, DeviceKeys(light.key))
            assert first.kind == "time"
            extra = []
            try:
                while True:
                    extra.append(light_view.next_message(1).payload)
            except TimeoutError:
                pass
        assert extra == [], "%d more frames to the light" % len(extra)

"""Whatever the center sends, the agent goes on: bad acknowledgements and monitoring requests
are refused and counted, and the pipeline still stores presses and relays genuine acks.
The relay of an ack is as durable as the alert: an agent killed before the bell's broker
took the frame sends it after its restart."""

import json
import os
import signal

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker, free_port
from ansim_simulators.world.street import Street
from test_agent_crash import start_agent
from test_agent_ops import components_on

WAIT_S = 10

BAD_ACKS = [
    b"not json",
    b"[1, 2]",
    json.dumps({"alert_id": 12345, "status": "received"}).encode(),
    json.dumps({"alert_id": {"nested": True}, "status": "received"}).encode(),
    json.dumps({"alert_id": "00020001-%d" % (1 << 40), "status": "received"}).encode(),
    json.dumps({"alert_id": "ffffffff-1", "status": "received"}).encode(),  # never stored here
    json.dumps({"alert_id": "ALERT", "status": "received"}).encode(),
    json.dumps({"status": "received"}).encode(),
    b"[" * 30000 + b"]" * 30000,  # deeper than any JSON parser recurses, under the broker's 64 KiB cap
    b"\xff\xfe binary",
]


def bad_monitors(street):
    route = [[37.5663, 126.9779], [37.5663, 126.9799]]
    huge = int("9" * 400)
    return [json.dumps(m).encode() for m in (
        {"session": "w1", "action": "start", "route": [[huge, 126.9779], [37.5663, 126.9799]]},
        {"session": "w1", "action": "start", "route": [[37.5663, 126.9779]]},
        {"session": "w1", "action": "start", "route": "north"},
        {"session": "w1", "action": "start", "route": route, "position": [1e308 * 10, 0]},
        {"session": "w1", "action": "start", "route": route, "position": [91, 0]},
        {"session": "w1", "action": "fly", "route": route},
        {"session": ["a"], "action": "stop"},
        {"session": "x" * 65, "action": "stop"},
        {"session": "never-started", "action": "update", "position": [37.5663, 126.9779]},
    )] + [b'{"session": "w1", "action": "start", "route": [[NaN, 1], [2, 3]]}']


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


@pytest.fixture
def site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}})
        yield street, local, center


def test_bad_center_input_is_refused_and_counted_and_the_agent_goes_on(site, mqtt_client):
    street, local, center = site
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    bell = street.bells[0]
    bell_view = mqtt_client(local)
    bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
    device = mqtt_client(local)
    ack_topic = "ansim/center/v1/agents/%s/ack" % street.agent_id
    monitor_topic = "ansim/center/v1/agents/%s/monitor" % street.agent_id
    with Agent(config_module.load(street.config_path)) as agent:
        waits.until(agent.uplink.connected.is_set, WAIT_S, "the agent connected to the center")
        device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
        alert = json.loads(center_view.next_message(WAIT_S).payload)
        # The same alert acknowledged with a status the API does not have must not close it.
        center_view.publish(ack_topic, json.dumps({"alert_id": alert["alert_id"], "status": "closed"}))
        for payload in BAD_ACKS:
            center_view.publish(ack_topic, payload)
        for payload in bad_monitors(street):
            center_view.publish(monitor_topic, payload)
        refused = len(BAD_ACKS) + 1 + len(bad_monitors(street))

        def counted():
            return sum(s.value for m in agent.metrics.center_messages.collect() for s in m.samples
                       if s.name.endswith("_total") and s.labels["verdict"] == "refused")
        waits.until(lambda: counted() == refused, WAIT_S, "%d refused center messages counted" % refused)
        waits.until(lambda: agent.store.alert(alert["alert_id"])[1] == "delivered", WAIT_S,
                    "the alert delivered and still open (not closed by the bad status)")
        assert agent.health.fault is None and agent._thread.is_alive() and agent.uplink._thread.is_alive()

        # Still working: a new press reaches the center and a genuine ack reaches the bell.
        device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 2))
        assert json.loads(center_view.next_message(WAIT_S).payload)["alert_id"] == "%s-2" % bell.hex_id
        center_view.publish(ack_topic, json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
        ack = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
        assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 1, "status": "received"}
        # Sent again (the center's retry), it is not relayed twice.
        center_view.publish(ack_topic, json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
        center_view.publish(ack_topic, json.dumps({"alert_id": "%s-2" % bell.hex_id, "status": "received"}))
        second = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
        assert second.fields == {"acked_counter": 2, "status": "received"}
        waits.until(lambda: agent.store.alert(alert["alert_id"])[1] == "acked", WAIT_S, "the alert closed")


def test_an_ack_relay_survives_kill_9_before_the_bells_broker_took_it(tmp_path, mqtt_client):
    """The center's ack is PUBACKed once stored with its frame for the bell; the local broker
    is away, the agent is killed: the restarted agent sends the frame."""
    local_port = free_port()
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        metrics_port = free_port()
        street = Street(tmp_path / "street", center_port=center.port, local_port=local_port,
                        overrides={"center": {"escalation_s": "3600"}, "metrics": {"port": str(metrics_port)}})
        street.metrics_url = "http://127.0.0.1:%d/metrics" % metrics_port
        bell = street.bells[0]
        center_view = mqtt_client(center, client_id="center-sim")
        center_view.subscribe("ansim/center/v1/#")
        with open(tmp_path / "agent.log", "w") as log:
            with MosquittoBroker(workdir=tmp_path / "local", port=local_port) as local:
                agent = start_agent(street, log)
                try:
                    waits.until(lambda: _up(street, "local_mqtt"), WAIT_S, "the agent on its local broker")
                    device = mqtt_client(local)
                    device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
                    alert_id = None
                    while alert_id is None:
                        msg = center_view.next_message(WAIT_S)
                        if "/alerts/" in msg.topic:
                            alert_id = json.loads(msg.payload)["alert_id"]
                except BaseException:
                    agent.kill()
                    raise
            # The bell's broker is gone: the relay cannot be handed over.
            center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                                json.dumps({"alert_id": alert_id, "status": "dispatched"}))
            db = street.config_path.parent / "data" / "agent.db"
            waits.until(lambda: _acked(db, alert_id), WAIT_S, "the ack stored by the agent")
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            with MosquittoBroker(workdir=tmp_path / "local", port=local_port) as local:
                bell_view = mqtt_client(local, client_id="bell-view")
                bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
                agent = start_agent(street, log)
                try:
                    while True:
                        frame = frames.unpack(bell_view.next_message(WAIT_S * 2).payload, DeviceKeys(bell.key))
                        if frame.kind == "center_ack":
                            break
                    assert frame.fields == {"acked_counter": 1, "status": "dispatched"}
                finally:
                    agent.send_signal(signal.SIGTERM)
                    assert agent.wait(10) == 0


def _up(street, component):
    """The running agent's /metrics say ``component`` is up (False while nothing answers)."""
    try:
        return components_on(street.metrics_url).get(component) == "up"
    except OSError:
        return False


def _acked(db, alert_id):
    import sqlite3
    if not os.path.exists(db):
        return False
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM downlinks WHERE kind='center_ack'").fetchone()[0]
        state = conn.execute("SELECT state FROM alerts WHERE alert_id=?", (alert_id,)).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return rows == 1 and state == ("acked",)


def test_the_agent_pubacks_in_the_order_the_messages_came(tmp_path, mqtt_client):
    """MQTT-4.6.0-2, seen from the broker's own debug log: presses (PUBACKed after the commit),
    state messages and oversize payloads (refused at once) and garbage, interleaved; the
    agent's PUBACKs leave in the order its PUBLISHes were sent. With PUBACKs out of order,
    mosquitto 2.0 redelivered a restarted agent's backlog out of order."""
    with MosquittoBroker(workdir=tmp_path / "local", debug_log=True) as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}})
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        device = mqtt_client(local)
        bell, light = street.bells[0], street.lights[0]
        with Agent(config_module.load(street.config_path)) as agent:
            presses = 60
            for counter in range(1, presses + 1):
                device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter))
                device.publish(topics.topic(light.device_id, topics.STATE), b"online")
                if counter % 3 == 0:
                    device.publish(topics.topic(bell.device_id, topics.UP), bytes(200))  # oversize
                    device.publish(topics.topic(bell.device_id, topics.UP), b"\x10garbage")
            for _ in range(presses):
                view.next_message(WAIT_S)
            waits.until(lambda: _pubacks(local.log_path, street.agent_id + "-local")[1] >= 
                        _pubacks(local.log_path, street.agent_id + "-local")[0], WAIT_S, "every PUBACK")
            assert agent.health.fault is None
        sent, acked = _pubacks(local.log_path, street.agent_id + "-local", lists=True)
        assert len(sent) >= presses * 2 + presses // 3 * 2
        assert acked == sent


def _pubacks(log_path, client_id, lists=False):
    """(mids of QoS 1 PUBLISHes the broker sent the client, mids it PUBACKed), in log order."""
    import re
    text = open(log_path, errors="replace").read()
    sent = [int(m) for m in re.findall(r"Sending PUBLISH to %s \(d\d, q1, r\d, m(\d+)," % re.escape(client_id), text)]
    acked = [int(m) for m in re.findall(r"Received PUBACK from %s \(Mid: (\d+)" % re.escape(client_id), text)]
    return (sent, acked) if lists else (len(sent), len(acked))

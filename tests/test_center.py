"""The control-center simulator against real mosquitto brokers and a real agent: one alert per
id however often it arrives, per-device order, birth and death with the latest session winning,
and acknowledgements that close alerts in the agent's store before they escalate.

Every wait is on a protocol event (a certificate, an alert, a PUBACK, a frame to a device)
with a deadline; "nothing else happened" is shown by a later event that would have come after it.
"""

import json

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.center.control_center import ControlCenter
from ansim_simulators.world.street import Street

WAIT_S = 10
STATE = "ansim/center/v1/agents/%s/state"


@pytest.fixture
def brokers(tmp_path):
    """(local, center): the devices' broker and the center's, both plain."""
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        yield local, center


def make_street(tmp_path, brokers, escalation_s=3600, name="street", **kwargs):
    local, center = brokers
    return Street(tmp_path / name, center_port=center.port, local_port=local.port,
                  overrides={"center": {"escalation_s": str(escalation_s)}}, **kwargs)


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def alert_id(device, counter):
    return "%s-%d" % (device.hex_id, counter)


def next_frame(view, device, kind, timeout=WAIT_S):
    """The next frame of ``kind`` for ``device`` on a view subscribed to its down topic."""
    while True:
        msg = view.next_message(timeout)
        if msg.topic == topics.topic(device.device_id, topics.DOWN):
            frame = frames.unpack(msg.payload, DeviceKeys(device.key))
            if frame.kind == kind:
                return frame


def test_one_alert_per_id_however_often_it_arrives_and_order_is_checked(tmp_path, brokers, mqtt_client):
    local, center = brokers
    street = make_street(tmp_path, brokers)
    bell = street.bells[0]
    with ControlCenter("127.0.0.1", center.port) as cc, Agent(config_module.load(street.config_path)):
        cc.wait_for_agent(street.agent_id, "online", timeout=WAIT_S)
        device = mqtt_client(local)
        for counter in (1, 2, 5):
            assert not device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter)).is_failure
        cc.wait_for(3, timeout=WAIT_S)
        first = cc.alert(alert_id(bell, 1))
        assert first.topic == "ansim/center/v1/jung-gu/alerts/%s" % bell.hex_id
        assert first.agents == [street.agent_id] and first.type == "bell_press"

        # The same alert again, as an agent re-sends it after a crash: counted, not added.
        raw = mqtt_client(center)
        assert not raw.publish(first.topic, json.dumps(first.body)).is_failure
        cc.wait_for(lambda: cc.duplicates == 1, timeout=WAIT_S)
        assert cc.alert_ids == [alert_id(bell, c) for c in (1, 2, 5)]
        assert cc.alert(alert_id(bell, 1)).copies == {"jung-gu": 2}
        assert cc.order_violations == []

        # An older counter arriving after a newer one breaks the per-device order.
        late = dict(first.body, alert_id=alert_id(bell, 3))
        assert not raw.publish(first.topic, json.dumps(late)).is_failure
        cc.wait_for_alert(alert_id(bell, 3), timeout=WAIT_S)
        assert cc.order_violations == [(bell.hex_id, alert_id(bell, 5), alert_id(bell, 3))]
        assert cc.malformed == [] and cc.errors == []


def test_birth_then_death_and_the_latest_session_wins(tmp_path, brokers, mqtt_client):
    _, center = brokers
    street = make_street(tmp_path, brokers)
    config = config_module.load(street.config_path)
    with ControlCenter("127.0.0.1", center.port) as cc:
        with Agent(config):
            session = cc.wait_for_agent(street.agent_id, "online", timeout=WAIT_S).session
            # A center that starts later learns the agent's state from the retained certificate.
            with ControlCenter("127.0.0.1", center.port, client_id="late-center") as late:
                assert late.wait_for_agent(street.agent_id, "online", session, timeout=WAIT_S)
        death = cc.wait_for_agent(street.agent_id, "offline", session, timeout=WAIT_S)
        assert death.site == "jung-gu"

        with Agent(config):  # a restart is a new session
            cc.wait_for_agent(street.agent_id, "online", session + 1, timeout=WAIT_S)
            # The old session's death certificate, arriving late, does not kill the new one.
            stale = json.dumps({"agent": street.agent_id, "site": "jung-gu", "state": "offline",
                                "session": session, "at": 0})
            assert not mqtt_client(center).publish(STATE % street.agent_id, stale).is_failure
            cc.wait_for(lambda: len(cc.certificates) == 4, timeout=WAIT_S)
            assert cc.agent_state(street.agent_id) == "online"
        cc.wait_for_agent(street.agent_id, "offline", session + 1, timeout=WAIT_S)
        assert [(c.state, c.session) for c in cc.certificates] == [
            ("online", session), ("offline", session), ("online", session + 1), ("offline", session),
            ("offline", session + 1)]


def test_auto_ack_closes_the_alert_in_the_agents_store_before_it_escalates(tmp_path, brokers, mqtt_client):
    local, center = brokers
    street = make_street(tmp_path, brokers, escalation_s=2)
    acked_bell, silent_bell = street.bells
    # The center answers one bell (after a short delay) and ignores the other.
    choose = lambda body: "received" if body["device"]["id"] == acked_bell.hex_id else None  # noqa: E731
    with ControlCenter("127.0.0.1", center.port, auto_ack=choose, ack_delay_s=0.2) as cc, \
            Agent(config_module.load(street.config_path)) as agent:
        cc.wait_for_agent(street.agent_id, timeout=WAIT_S)
        bell_view = mqtt_client(local)
        bell_view.subscribe(topics.topic(acked_bell.device_id, topics.DOWN))
        device = mqtt_client(local)
        device.publish(topics.topic(acked_bell.device_id, topics.UP), press(acked_bell, 1))
        device.publish(topics.topic(silent_bell.device_id, topics.UP), press(silent_bell, 1))

        record = cc.wait_for_ack(alert_id(acked_bell, 1), timeout=WAIT_S)
        assert [(status, agent_id) for status, agent_id, _ in record.acks] == [("received", street.agent_id)]
        # The agent marks the alert acked before it relays the ack to the bell.
        ack = next_frame(bell_view, acked_bell, "center_ack")
        assert ack.fields == {"acked_counter": 1, "status": "received"}
        assert agent.store.alert(alert_id(acked_bell, 1))[1] == "acked"

        # The unanswered alert escalates. The answered one was raised first, so had it escalated
        # its copy would have reached the citywide center first.
        cc.wait_for_escalation(alert_id(silent_bell, 1), timeout=WAIT_S + 2)
        assert cc.escalations == [alert_id(silent_bell, 1)]
        assert cc.alert(alert_id(silent_bell, 1)).escalation["escalated_from"] == "jung-gu"
        assert not cc.alert(alert_id(acked_bell, 1)).escalated
        assert agent.store.alert(alert_id(acked_bell, 1))[1] == "acked"
        assert agent.store.alert(alert_id(silent_bell, 1))[1] == "delivered"
        assert cc.errors == []


def test_two_agents_hear_one_press_and_both_get_the_ack(tmp_path, mqtt_client):
    """One event, two receivers: the center keeps one alert and acknowledges both agents, so
    neither escalates an alert the center already handles."""
    with MosquittoBroker(workdir=tmp_path / "local-1") as local_1, \
            MosquittoBroker(workdir=tmp_path / "local-2") as local_2, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local_1.port)
        second = tmp_path / "second-agent.toml"  # same registry and keys, its own id, store and broker
        second.write_text(street.config_path.read_text()
                          .replace('"%s"' % street.agent_id, '"edge-test-02"')
                          .replace('data_dir = "data"', 'data_dir = "second-data"')
                          .replace('registry = "registry.toml"', 'registry = %s' % json.dumps(str(street.registry_path)))
                          .replace("port = %d\n" % local_1.port, "port = %d\n" % local_2.port))
        bell = street.bells[0]
        with ControlCenter("127.0.0.1", center.port, auto_ack="received") as cc, \
                Agent(config_module.load(street.config_path)) as agent_1, \
                Agent(config_module.load(second)) as agent_2:
            for agent_id in (street.agent_id, "edge-test-02"):
                cc.wait_for_agent(agent_id, timeout=WAIT_S)
            views = []
            for local in (local_1, local_2):
                view = mqtt_client(local)
                view.subscribe(topics.topic(bell.device_id, topics.DOWN))
                views.append(view)
            frame = press(bell, 7)
            for local in (local_1, local_2):
                mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), frame)
            cc.wait_for(lambda: len(cc.alert(alert_id(bell, 7)).acks) == 2 if cc.alert(alert_id(bell, 7)) else False,
                        timeout=WAIT_S)
            record = cc.alert(alert_id(bell, 7))
            assert cc.alert_ids == [alert_id(bell, 7)] and record.duplicates == 1
            assert sorted(agent for _, agent, _ in record.acks) == sorted([street.agent_id, "edge-test-02"])
            assert all(not rc.is_failure for _, _, rc in record.acks)
            for view, agent in zip(views, (agent_1, agent_2)):
                assert next_frame(view, bell, "center_ack").fields["status"] == "received"
                assert agent.store.alert(alert_id(bell, 7))[1] == "acked"

"""The agent's uplink as deployed: the center's broker over TLS with client certificates (CN =
username) and the ACL of edge_agent/CENTER_API.md. Alerts flow and acknowledgements come back;
walk-home requests reach the agent; an agent with a certificate from another CA delivers
nothing and keeps its alerts; an agent cannot speak for another agent. Every wait is on an
event with a deadline."""

import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest

import ansim_agent
from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.center.control_center import AGENT_ACL, ControlCenter, center_acl
from ansim_simulators.fixtures.pki import TlsFiles, create_pki
from ansim_simulators.world.street import ORIGIN, Street, offset

WAIT_S = 10
AGENT = "edge-test-01"
OTHER = "edge-other-02"
CENTER = "center-jung-gu"
NOT_AUTHORIZED = 135
STATE = "ansim/center/v1/agents/%s/state"


class LogWatch(logging.Handler):
    """Counts log records matching a pattern and lets a test wait for the n-th one."""

    def __init__(self, pattern):
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.matches = []
        self._cond = threading.Condition()

    def emit(self, record):
        message = record.getMessage()
        if self.pattern.search(message):
            with self._cond:
                self.matches.append(message)
                self._cond.notify_all()

    def count(self):
        with self._cond:
            return len(self.matches)

    def wait_for(self, count, timeout):
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.matches) >= count, timeout), \
                "fewer than %d log lines matching %r within %s s: %s" % (count, self.pattern.pattern,
                                                                       timeout, self.matches)
            return list(self.matches)


@pytest.fixture
def uplink_log():
    logger = logging.getLogger("ansim.agent.uplink")
    watch = LogWatch(r"refused|lost the center")
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)


@pytest.fixture
def brokers(tmp_path, pki):
    """(local, center): the devices' plain broker, and the center's with TLS and the ACL."""
    with MosquittoBroker(workdir=tmp_path / "local") as local, \
            MosquittoBroker(workdir=tmp_path / "center", tls=pki.server, acl=center_acl(CENTER)) as center:
        yield local, center


def agent_street(tmp_path, brokers, tls):
    local, center = brokers
    assert stat.S_IMODE(os.stat(tls.keyfile).st_mode) & 0o077 == 0  # the config refuses anything else
    return Street(tmp_path / "street", center_port=center.port, local_port=local.port, agent_id=AGENT,
                  center_tls=tls, overrides={"center": {"escalation_s": "3600"}})


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def test_the_documented_acl_is_the_one_tested():
    doc = (Path(ansim_agent.__file__).parent / "CENTER_API.md").read_text()
    section = doc.split("## ACL", 1)[1]
    first_block = section.split("```", 2)[1]
    assert [" ".join(line.split()) for line in first_block.strip().splitlines()] == list(AGENT_ACL)


def test_alerts_flow_and_acks_come_back_under_tls_and_the_acl(tmp_path, brokers, pki, mqtt_client):
    local, center = brokers
    street = agent_street(tmp_path, brokers, pki.client(AGENT))
    config = config_module.load(street.config_path)
    assert config.center["tls"] is True
    bell = street.bells[0]
    alert_id = "%s-1" % bell.hex_id
    with ControlCenter("127.0.0.1", center.port, tls=pki.client(CENTER), auto_ack="received") as cc:
        with Agent(config) as agent:
            session = cc.wait_for_agent(AGENT, "online", timeout=WAIT_S).session
            bell_view = mqtt_client(local)
            bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
            assert not mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 1)).is_failure

            record = cc.wait_for_ack(alert_id, timeout=WAIT_S)
            assert record.topic == "ansim/center/v1/jung-gu/alerts/%s" % bell.hex_id
            assert record.agents == [AGENT] and record.body["agent"]["id"] == AGENT
            ack = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
            assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 1, "status": "received"}
            assert agent.store.alert(alert_id)[1] == "acked"

            # The center may also send walk-home monitoring requests: the lights ahead brighten
            # (those blinking for the bell's open emergency keep blinking).
            light_view = mqtt_client(local)
            light_view.subscribe("ansim/v1/dev/+/down")
            route = [list(ORIGIN), list(offset(ORIGIN, 180))]
            assert not cc.monitor(AGENT, {"session": "walk-1", "action": "start", "route": route}).is_failure
            message = light_view.next_message(WAIT_S)
            light = next(l for l in street.lights if topics.topic(l.device_id, topics.DOWN) == message.topic)
            command = frames.unpack(message.payload, DeviceKeys(light.key))
            assert command.kind == "light_command" and command.fields["action"] == "brighten"
        cc.wait_for_agent(AGENT, "offline", session, timeout=WAIT_S)
        assert cc.errors == [] and cc.malformed == []


def test_an_agent_with_a_certificate_from_another_ca_delivers_nothing(tmp_path, brokers, pki, mqtt_client,
                                                                     uplink_log):
    local, center = brokers
    foreign = create_pki(tmp_path / "other-ca").client(AGENT)  # right CN, wrong issuer
    street = agent_street(tmp_path, brokers, TlsFiles(pki.ca_cert, foreign.certfile, foreign.keyfile))
    bell = street.bells[0]
    with ControlCenter("127.0.0.1", center.port, tls=pki.client(CENTER)) as cc, \
            Agent(config_module.load(street.config_path)) as agent:
        uplink_log.wait_for(1, WAIT_S)  # the broker turned the agent away
        lights = mqtt_client(local)
        lights.subscribe("ansim/v1/dev/+/down")
        mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
        lights.next_message(WAIT_S)  # the agent commands lights after the alert is committed
        assert agent.store.alert("%s-1" % bell.hex_id)[1] == "pending"
        # Another attempt after the alert was in the outbox is turned away too (backoff <= 30 s).
        uplink_log.wait_for(uplink_log.count() + 1, 35)
        assert agent.store.alert("%s-1" % bell.hex_id)[1] == "pending"
        assert agent.store.queue_depth() == 1
        assert not agent.uplink.connected.is_set()
        assert cc.alerts == [] and cc.agent_state(AGENT) is None


def test_an_agent_cannot_publish_another_agents_birth_certificate(brokers, pki, mqtt_client):
    _, center = brokers
    with ControlCenter("127.0.0.1", center.port, tls=pki.client(CENTER)) as cc:
        forger = mqtt_client(center, client_id="forger", tls=pki.client(AGENT))
        forged = json.dumps({"agent": OTHER, "site": "jung-gu", "state": "online", "session": 99, "at": 0})
        assert forger.publish(STATE % OTHER, forged, retain=True).value == NOT_AUTHORIZED
        assert forger.disconnected.wait(5)  # mosquitto 2.0 drops a client that breaks the ACL

        # Its own certificate is allowed; had the forgery been delivered, it would have come first.
        agent = mqtt_client(center, client_id=AGENT, tls=pki.client(AGENT))
        own = json.dumps({"agent": AGENT, "site": "jung-gu", "state": "online", "session": 1, "at": 0})
        assert not agent.publish(STATE % AGENT, own, retain=True).is_failure
        cc.wait_for_agent(AGENT, "online", 1, timeout=WAIT_S)
        assert list(cc.agents) == [AGENT] and len(cc.certificates) == 1

        # ... and it reads only its own acknowledgements.
        agent.subscribe("ansim/center/v1/agents/+/ack")
        assert not cc.ack("00020001-1", "received", agent_id=OTHER)[OTHER].is_failure
        assert not cc.ack("00020001-2", "received", agent_id=AGENT)[AGENT].is_failure
        msg = agent.next_message(WAIT_S)
        assert (msg.topic, json.loads(msg.payload)) == (
            "ansim/center/v1/agents/%s/ack" % AGENT, {"alert_id": "00020001-2", "status": "received"})

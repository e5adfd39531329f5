"""Work that other threads hand to the agent's pipeline (the center's ack, a device coming
online) runs at once, not on the pipeline's next tick: with a tick of an hour, the center's
ack still reaches the bell and a bell that comes online still gets the time, and the agent
still stops. No timing is asserted (these machines are noisy): the hour-long tick makes any
wait for it fail the test's ordinary timeout."""

import json

import pytest

from ansim_agent import config as config_module
from ansim_agent import service
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street

WAIT_S = 10


@pytest.fixture
def site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        yield Street(tmp_path / "street", center_port=center.port, local_port=local.port), local, center


def test_center_ack_and_device_state_do_not_wait_for_the_pipelines_tick(site, mqtt_client, monkeypatch):
    monkeypatch.setattr(service, "TICK_S", 3600.0)
    street, local, center = site
    bell = street.bells[0]
    keys = DeviceKeys(bell.key)
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    bell_view = mqtt_client(local)
    bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
    device = mqtt_client(local)
    agent = Agent(config_module.load(street.config_path))
    with agent:
        press = frames.build_plain("bell_press", {"button": 1}, keys, bell.device_id, 1)
        assert not device.publish(topics.topic(bell.device_id, topics.UP), press).is_failure
        alert = json.loads(center_view.next_message(WAIT_S).payload)

        # the pipeline now waits for frames, and none come: the ack alone must wake it
        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
        ack = frames.unpack(bell_view.next_message(WAIT_S).payload, keys)
        assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 1, "status": "received"}

        # the bell reconnects (its birth on the state topic): the time follows without a frame
        assert not device.publish(topics.topic(bell.device_id, topics.STATE), b"online").is_failure
        clock = frames.unpack(bell_view.next_message(WAIT_S).payload, keys)
        assert clock.kind == "time" and clock.counter > ack.counter
    assert not agent._thread.is_alive()  # the stop woke the pipeline too

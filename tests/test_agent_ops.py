"""Operating the agent: Prometheus /metrics of a running agent over real brokers, and
`ansim agent status` for a person at a terminal (running, stopped, during a center outage)."""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators import waits
from ansim_simulators.broker import MosquittoBroker
from ansim_simulators.street import Street

WAIT_S = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        port = free_port()
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"center": {"escalation_s": "3600"}, "metrics": {"port": str(port)}})
        street.metrics_url = "http://127.0.0.1:%d/metrics" % port
        yield street, local, center


def wait_until(predicate, timeout=WAIT_S, what="condition"):
    return waits.until(predicate, timeout, what)


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def metric_lines(url):
    return set(scrape(url).splitlines())


def press(bell, counter, key=None):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(key or bell.key), bell.device_id, counter)


def status(street):
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "agent", "status", "--config",
                             str(street.config_path)], capture_output=True, text=True, timeout=30)
    assert result.stderr == "", result.stderr
    return result


# -- Prometheus /metrics ------------------------------------------------------------------------

def test_metrics_count_frames_by_path_type_and_verdict_with_depth_latency_and_link(site, mqtt_client):
    street, local, center = site
    url = street.metrics_url
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    with Agent(config_module.load(street.config_path)):
        wait_until(lambda: "ansim_center_connected 1.0" in metric_lines(url), what="center connected")
        bell = street.bells[0]
        device = mqtt_client(local)
        assert not device.publish(topics.topic(bell.device_id, topics.UP), press(bell, 1)).is_failure
        forged = press(bell, 2, key=os.urandom(16))  # the right device id, the wrong key
        assert not device.publish(topics.topic(bell.device_id, topics.UP), forged).is_failure
        assert json.loads(center_view.next_message(WAIT_S).payload)["alert_id"] == "%s-1" % bell.hex_id

        expected = {
            'ansim_frames_total{path="mqtt",type="bell_press",verdict="accepted"} 1.0',
            'ansim_frames_total{path="mqtt",type="-",verdict="tag"} 1.0',
            "ansim_alert_latency_seconds_count 1.0",
            "ansim_center_connected 1.0",
        }
        lines = wait_until(lambda: (lambda got: got if expected <= got else None)(metric_lines(url)),
                           what="the frames and the delivery counted")
        assert any(re.fullmatch(r"ansim_outbox_depth \d+\.0", line) for line in lines)
        buckets = [line for line in lines if line.startswith("ansim_alert_latency_seconds_bucket{")]
        assert 'ansim_alert_latency_seconds_bucket{le="+Inf"} 1.0' in buckets and len(buckets) > 5
        assert any(line.startswith("ansim_batch_seconds_bucket{") for line in lines)
        assert not any("verdict=\"accepted\"" in line and "bell_press" not in line
                       for line in lines if line.startswith("ansim_frames_total"))
    with pytest.raises(urllib.error.URLError):  # a stopped agent frees its metrics port
        scrape(url)


def test_metrics_show_the_outbox_filling_during_a_center_outage(site, mqtt_client):
    street, local, center = site
    url = street.metrics_url
    center.stop()
    with Agent(config_module.load(street.config_path)) as agent:
        bell = street.bells[0]
        device = mqtt_client(local)
        for counter in (1, 2, 3):
            assert not device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter)).is_failure
        wait_until(lambda: agent.store.queue_depth() == 3, what="3 alerts stored")
        lines = metric_lines(url)
        assert "ansim_center_connected 0.0" in lines
        assert 'ansim_frames_total{path="mqtt",type="bell_press",verdict="accepted"} 3.0' in lines
        # The gauge follows the store every supervision tick (5 s).
        wait_until(lambda: "ansim_outbox_depth 3.0" in metric_lines(url), timeout=15, what="outbox depth 3")


# -- ansim agent status ---------------------------------------------------------------------------

def test_status_after_a_normal_run_shows_alerts_by_state_and_devices(site, mqtt_client):
    street, local, center = site
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    with Agent(config_module.load(street.config_path)) as agent:
        device = mqtt_client(local)
        first, second = street.bells
        device.publish(topics.topic(first.device_id, topics.UP), press(first, 1))
        device.publish(topics.topic(second.device_id, topics.UP), press(second, 1))
        delivered = {json.loads(center_view.next_message(WAIT_S).payload)["alert_id"] for _ in range(2)}
        assert delivered == {"%s-1" % first.hex_id, "%s-1" % second.hex_id}
        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": "%s-1" % first.hex_id, "status": "received"}))
        wait_until(lambda: agent.store.alert("%s-1" % first.hex_id)[1] == "acked", what="the ack stored")
        wait_until(lambda: agent.store.alert("%s-1" % second.hex_id)[1] == "delivered", what="PUBACK stored")
        # A streetlight's connection dies: the broker publishes its will.
        light = street.lights[4]
        device.publish(topics.topic(light.device_id, topics.STATE), b"offline")
        wait_until(lambda: light.device_id in agent.store.offline_devices(), what="the light offline")
        wait_until(lambda: agent.store.queue_depth() == 0, what="its offline event delivered")
    result = status(street)
    out = result.stdout
    assert result.returncode == 0, out
    assert out.startswith("agent edge-test-01 (site jung-gu)\n")
    assert "data:    %s" % (street.directory / "data" / "agent.db") in out
    assert "config:  %s" % street.config_path in out
    assert "process: not running (nothing answers on %s)" % street.metrics_url in out
    assert re.search(r"^alerts: all delivered; 2 not yet acknowledged by the center, the oldest for \d+ s$",
                     out, re.M), out  # the second bell's press and the light's offline event
    assert re.search(r"^ +0 waiting for the center \(not delivered yet\)$", out, re.M), out
    assert re.search(r"^ +2 delivered, not yet acknowledged by the center$", out, re.M), out
    assert re.search(r"^ +1 acknowledged by the center$", out, re.M), out
    assert "devices: %d registered, 2 heard, 1 offline" % len(street.devices) in out
    assert re.search(r"^  offline: %s streetlight, last heard never$" % light.hex_id, out, re.M), out


def test_status_during_a_center_outage_shows_alerts_waiting_and_their_age(site, mqtt_client):
    street, local, center = site
    center.stop()
    with Agent(config_module.load(street.config_path)) as agent:
        bell = street.bells[1]
        device = mqtt_client(local)
        for counter in (1, 2, 3):
            device.publish(topics.topic(bell.device_id, topics.UP), press(bell, counter))
        wait_until(lambda: agent.store.queue_depth() == 3, what="3 alerts stored")
        running = status(street)  # read-only, beside the running agent
        assert running.returncode == 0, running.stdout
        assert ("process: running, NOT connected to the center 127.0.0.1:%d: alerts wait in the outbox"
                % center.port) in running.stdout
        assert re.search(r"^alerts: 3 WAITING for the center, the oldest for \d+ s \(since \d{4}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d\)$", running.stdout, re.M), running.stdout
    stopped = status(street)
    assert stopped.returncode == 0, stopped.stdout
    assert "process: not running" in stopped.stdout
    assert re.search(r"^alerts: 3 WAITING for the center", stopped.stdout, re.M), stopped.stdout
    assert re.search(r"^ +3 waiting for the center \(not delivered yet\)$", stopped.stdout, re.M), stopped.stdout
    assert "devices: %d registered, 1 heard, 0 offline" % len(street.devices) in stopped.stdout


def test_status_says_when_the_agent_never_ran(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())
    result = status(street)
    assert result.returncode == 1
    assert "agent edge-test-01" in result.stdout
    assert "does not exist (has the agent run with this config?)" in result.stdout
    assert not (street.directory / "data").exists()  # status never creates the agent's state

"""Operating the agent: Prometheus /metrics of a running agent over real brokers,
`ansim agent status` for a person at a terminal and for a monitoring script (its JSON and
exit status: running, stopped, during a center outage, with a part down, with a damaged or
unreadable store), `ansim agent alerts`, and one agent per data directory (real processes)."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import prometheus_client
import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_agent.store import Store
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street

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


def ansim_agent(config_path, action, *options, prefix=()):
    return subprocess.run(list(prefix) + [sys.executable, "-m", "ansim_tools.cli", "agent", action, "--config",
                                          str(config_path), *options], capture_output=True, text=True, timeout=30)


def status(street, *options, prefix=()):
    result = ansim_agent(street.config_path, "status", *options, prefix=prefix)
    assert result.stderr == "", result.stderr
    assert "Traceback" not in result.stdout
    return result


def status_json(street):
    """(the facts, the exit status) of `ansim agent status --json`; both say the same."""
    result = status(street, "--json")
    facts = json.loads(result.stdout)
    assert facts["exit_status"] == result.returncode
    return facts, result.returncode


def down_lines(text):
    """The DOWN lines status prints first."""
    lines = text.splitlines()
    return lines[:next(i for i, line in enumerate(lines) if not line.startswith("DOWN: "))]


def components_on(url):
    """{component: "up"/"down"} from the ansim_up samples the agent exports, whichever they are."""
    found = {}
    for line in scrape(url).splitlines():
        match = re.match(r'ansim_up\{component="([^"]+)"\} (\S+)$', line)
        if match:
            found[match.group(1)] = "up" if float(match.group(2)) else "down"
    return found


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
        running = status(street)  # beside the running agent: exit 0 = running and healthy
        parts = components_on(street.metrics_url)
        assert "down" not in parts.values(), parts
        assert running.returncode == 0, running.stdout
        assert running.stdout.startswith("agent edge-test-01 (site jung-gu)\n")  # no DOWN line
        assert "process: running, connected to the center 127.0.0.1:%d" % center.port in running.stdout
        assert running.stdout.rstrip().endswith("\nhealth: ok"), running.stdout
        facts, code = status_json(street)
        assert code == 0 and facts["health"] == "healthy" and facts["problems"] == []
        assert facts["process"]["state"] == "running" and facts["center"]["connected"] is True
        assert facts["components"] == parts  # every ansim_up sample, as the agent exports them
        assert facts["alerts"]["by_state"] == {"acked": 1, "delivered": 2}
        assert facts["devices"]["offline_devices"] == [
            {"id": light.hex_id, "role": "streetlight", "name": "", "last_heard": None, "silent_s": None}]
    result = status(street)
    out = result.stdout
    assert result.returncode == 1, out  # not running
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
    assert "health:" not in out
    facts, code = status_json(street)
    assert (code, facts["health"], facts["process"]["state"]) == (1, "not running", "not running")
    assert facts["alerts"]["unacknowledged"] == 2 and facts["devices"]["offline"] == 1

    # ansim agent alerts: what the store holds, newest first, without coordinates or keys
    listed = ansim_agent(street.config_path, "alerts")
    assert (listed.returncode, listed.stderr) == (0, "")
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["alert_id", "type", "device", "state", "created", "delivered", "acked", "escalated"]
    by_id = {row.split()[0]: row.split() for row in rows[1:-1]}
    first_id, second_id = "%s-1" % first.hex_id, "%s-1" % second.hex_id
    assert by_id[first_id][1:4] == ["bell_press", first.hex_id, "acked"]
    assert by_id[second_id][1:4] == ["bell_press", second.hex_id, "delivered"]
    assert by_id[second_id][-2:] == ["-", "no"]  # not acknowledged, not escalated
    assert [row[1:4] for row in by_id.values() if row[1] == "device_offline"] == [
        ["device_offline", light.hex_id, "delivered"]]
    assert rows[-1] == "3 alerts, newest first"
    acked = json.loads(ansim_agent(street.config_path, "alerts", "--state", "acked", "--json").stdout)
    assert acked["matching"] == 1 and [a["alert_id"] for a in acked["alerts"]] == [first_id]
    alert = acked["alerts"][0]
    assert set(alert) == {"alert_id", "type", "device", "state", "created", "delivered_at", "acked_at", "escalated"}
    assert alert["created"] <= alert["delivered_at"] <= alert["acked_at"] and alert["escalated"] is False
    newest = ansim_agent(street.config_path, "alerts", "--limit", "1")
    assert newest.stdout.splitlines()[-1] == "1 alert, newest first; 2 older not shown (--limit)"
    secrets = ["%.4f" % street.bells[0].position[0], "%.4f" % street.lights[4].position[1], "location"]
    secrets += [device.key.hex() for device in street.devices]
    for output in (listed.stdout, json.dumps(acked)):
        assert not [secret for secret in secrets if secret in output], output


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
        assert running.returncode == 3, running.stdout  # running but degraded
        down = sorted(name for name, state in components_on(street.metrics_url).items() if state == "down")
        assert down_lines(running.stdout) == ["DOWN: %s" % name for name in down]
        assert ("process: running, NOT connected to the center 127.0.0.1:%d: alerts wait in the outbox"
                % center.port) in running.stdout
        assert re.search(r"^health: DEGRADED: (DOWN: \S+; )*not connected to the center 127.0.0.1:%d$"
                         % center.port, running.stdout, re.M), running.stdout
        facts, code = status_json(street)
        assert code == 3 and facts["health"] == "degraded" and facts["center"]["connected"] is False
        assert facts["alerts"]["waiting"] == 3 and facts["alerts"]["waiting_past_escalation"] == 0
        assert facts["alerts"]["oldest_waiting"]["age_s"] >= 0
        assert re.search(r"^alerts: 3 WAITING for the center, the oldest for \d+ s \(since \d{4}-\d\d-\d\d "
                         r"\d\d:\d\d:\d\d\)$", running.stdout, re.M), running.stdout
    stopped = status(street)
    assert stopped.returncode == 1, stopped.stdout
    assert "process: not running" in stopped.stdout
    assert re.search(r"^alerts: 3 WAITING for the center", stopped.stdout, re.M), stopped.stdout
    assert re.search(r"^ +3 waiting for the center \(not delivered yet\)$", stopped.stdout, re.M), stopped.stdout
    assert "devices: %d registered, 1 heard, 0 offline" % len(street.devices) in stopped.stdout


def test_status_shows_a_part_that_is_down_first_and_exits_3(site):
    street, local, center = site
    with Agent(config_module.load(street.config_path)):
        wait_until(lambda: "ansim_center_connected 1.0" in metric_lines(street.metrics_url), what="center connected")
        local.stop()  # the Pi's broker for bells and streetlights dies
        wait_until(lambda: components_on(street.metrics_url).get("local_mqtt") == "down", what="local_mqtt down")
        result = status(street)
        facts, code = status_json(street)
    assert result.returncode == 3, result.stdout
    assert down_lines(result.stdout) == ["DOWN: local_mqtt"]
    assert "process: running, connected to the center" in result.stdout
    assert result.stdout.splitlines()[-1] == "health: DEGRADED: DOWN: local_mqtt"
    assert code == 3 and facts["components"]["local_mqtt"] == "down" and facts["problems"] == ["DOWN: local_mqtt"]


def test_status_says_when_the_agent_never_ran(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())
    result = status(street)
    assert result.returncode == 1
    assert "agent edge-test-01" in result.stdout
    assert "does not exist (has the agent run with this config?)" in result.stdout
    assert not (street.directory / "data").exists()  # status never creates the agent's state


def test_status_exit_1_says_when_the_agent_never_ran_also_as_json(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())
    facts, code = status_json(street)
    assert code == 1 and facts["process"]["state"] == "not running" and facts["store"]["exists"] is False
    assert facts["alerts"] is None and not (street.directory / "data").exists()


# -- status of a running agent, as its /metrics say: the agent's own metric names and library -----

@contextlib.contextmanager
def agent_metrics(port, up, center_connected=1):
    """/metrics as an agent serves them (prometheus-client), with these ansim_up values."""
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("ansim_up", "1 while a part of the agent works, 0 while it is down",
                                    ("component",), registry=registry)
    for component, value in up.items():
        gauge.labels(component).set(value)
    prometheus_client.Gauge("ansim_center_connected", "1 while the center's broker is connected",
                            registry=registry).set(center_connected)
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def metrics_street(tmp_path, escalation_s=30):
    port = free_port()
    street = Street(tmp_path / "street", center_port=free_port(),
                    overrides={"metrics": {"port": str(port)}, "center": {"escalation_s": str(escalation_s)}})
    street.metrics_port = port
    return street


def store_alerts(street, ages_s, state="pending"):
    """Alerts in a real store, created ``ages_s`` seconds ago, as the agent leaves them."""
    store = Store(street.directory / "data" / "agent.db")
    now = time.time()
    for index, age in enumerate(ages_s, 1):
        store.add_alert("00020001-%d" % index, 0x00020001, now - age, now - age, {"type": "bell_press"})
    store.commit()
    if state == "delivered":
        store.mark_delivered([seq for seq, *_ in store.undelivered()], now)
    store.close()


def test_status_lists_each_component_down_first_and_exits_3(tmp_path):
    street = metrics_street(tmp_path)
    store_alerts(street, [1])
    with agent_metrics(street.metrics_port, {"pipeline": 1, "local_mqtt": 0, "uplink": 1, "serial": 0}):
        result = status(street)
        facts, code = status_json(street)
    assert result.returncode == 3, result.stdout
    assert down_lines(result.stdout) == ["DOWN: local_mqtt", "DOWN: serial"]
    assert result.stdout.splitlines()[2] == "agent edge-test-01 (site jung-gu)"
    assert "  parts:   pipeline up, local_mqtt DOWN, uplink up, serial DOWN" in result.stdout
    assert result.stdout.splitlines()[-1] == "health: DEGRADED: DOWN: local_mqtt; DOWN: serial"
    assert code == 3 and facts["health"] == "degraded"
    assert facts["components"] == {"pipeline": "up", "local_mqtt": "down", "uplink": "up", "serial": "down"}
    assert facts["problems"] == ["DOWN: local_mqtt", "DOWN: serial"]
    assert facts["center"]["connected"] is True and facts["alerts"]["waiting"] == 1


def test_status_exits_3_when_alerts_wait_longer_than_escalation(tmp_path):
    street = metrics_street(tmp_path, escalation_s=30)
    store_alerts(street, [120, 90, 5])  # two wait past escalation_s, one does not yet
    with agent_metrics(street.metrics_port, {"pipeline": 1, "uplink": 1, "store": 1}):
        result = status(street)
        facts, code = status_json(street)
    assert result.returncode == 3, result.stdout
    assert down_lines(result.stdout) == []
    assert re.search(r"^alerts: 3 WAITING for the center, the oldest for 2 min 0 s", result.stdout, re.M)
    assert result.stdout.splitlines()[-1] == \
        "health: DEGRADED: 2 alerts waiting for the center longer than [center] escalation_s (30 s)"
    assert facts["alerts"]["waiting_past_escalation"] == 2 and facts["alerts"]["oldest_waiting"]["age_s"] >= 120


def test_status_exits_0_for_a_running_healthy_agent_whose_alerts_are_delivered(tmp_path):
    street = metrics_street(tmp_path, escalation_s=30)
    store_alerts(street, [600], state="delivered")  # delivered long ago, waiting only for the ack
    with agent_metrics(street.metrics_port, {"pipeline": 1, "uplink": 1, "store": 1}):
        result = status(street)
    assert result.returncode == 0, result.stdout
    assert "alerts: all delivered; 1 not yet acknowledged by the center, the oldest for 10 min" in result.stdout


# -- one agent per data directory: real processes -------------------------------------------------

def agent_process(config_path, log):
    return subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "run", "--config", str(config_path)],
                            stdout=log, stderr=log)


def lock_pid(data_dir):
    try:
        text = (data_dir / "agent.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def test_a_second_agent_on_the_same_data_dir_exits_2_naming_the_first(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())  # no center: the agent runs, reconnecting
    data_dir = street.directory / "data"
    second_config = street.directory / "copy-of-agent.toml"  # another config, the same data_dir
    shutil.copy(street.config_path, second_config)
    processes = []
    try:
        with open(tmp_path / "first.log", "wb") as log:
            first = agent_process(street.config_path, log)
        processes.append(first)
        wait_until(lambda: lock_pid(data_dir) == first.pid or first.poll() is not None, what="the first agent's lock")
        assert first.poll() is None, (tmp_path / "first.log").read_text()

        second = ansim_agent(second_config, "run")
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            "ansim agent: another agent (pid %d) already uses data_dir %s: stop it first "
            "(`systemctl stop ansim-agent`) or give this one another [agent] data_dir" % (first.pid, data_dir)]
        assert first.poll() is None and lock_pid(data_dir) == first.pid  # the first runs on, undisturbed

        # [metrics] port = 0: status knows the agent runs from the lock
        running = status(street)
        assert running.returncode == 0, running.stdout
        assert "process: running (pid %d holds the data directory; [metrics] port = 0" % first.pid in running.stdout
        assert status_json(street)[0]["process"]["pid"] == first.pid

        first.kill()  # kill -9 leaves agent.lock with its pid, but the kernel released the lock
        first.wait(WAIT_S)
        with open(tmp_path / "third.log", "wb") as log:
            third = agent_process(second_config, log)
        processes.append(third)
        wait_until(lambda: lock_pid(data_dir) == third.pid or third.poll() is not None, what="the next agent's lock")
        wait_until(lambda: "edge-test-01 running" in (tmp_path / "third.log").read_text() or third.poll() is not None,
                   what="the next agent started")  # its SIGTERM handler is set
        assert third.poll() is None, (tmp_path / "third.log").read_text()
        third.send_signal(signal.SIGTERM)
        assert third.wait(WAIT_S) == 0
        assert lock_pid(data_dir) is None  # a clean stop leaves no pid behind
        stopped = status(street)
        assert stopped.returncode == 1 and "process: not running (no process holds the data directory" in stopped.stdout
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(WAIT_S)


# -- ansim agent alerts from a store alone ---------------------------------------------------------

def test_alerts_filters_by_state_refuses_an_unknown_one_and_reads_only_its_columns(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())
    store_alerts(street, [30, 20, 10])
    db_path = street.directory / "data" / "agent.db"
    db = sqlite3.connect(db_path)  # a column another version may add: never shown
    db.execute("ALTER TABLE alerts ADD COLUMN center_note TEXT DEFAULT 'private-note'")
    db.execute("UPDATE alerts SET state='acked', acked_at=created+1 WHERE alert_id='00020001-1'")
    db.commit()
    db.close()
    pending = ansim_agent(street.config_path, "alerts", "--state", "pending")
    assert pending.returncode == 0, pending.stderr
    assert [row.split()[0] for row in pending.stdout.splitlines()[1:-1]] == ["00020001-3", "00020001-2"]
    assert pending.stdout.splitlines()[-1] == "2 alerts in state pending, newest first"
    everything = json.loads(ansim_agent(street.config_path, "alerts", "--json").stdout)
    assert [(a["alert_id"], a["state"]) for a in everything["alerts"]] == [
        ("00020001-3", "pending"), ("00020001-2", "pending"), ("00020001-1", "acked")]
    assert "private-note" not in json.dumps(everything)
    closed = ansim_agent(street.config_path, "alerts", "--state", "closed")
    assert (closed.returncode, closed.stdout.strip()) == (
        0, "no alerts in state closed in %s (by state: acked 1, pending 2)" % db_path)
    typo = ansim_agent(street.config_path, "alerts", "--state", "pendng")
    assert typo.returncode == 2 and typo.stderr.splitlines() == [
        "ansim agent: --state pendng: no such state (did you mean pending?): the states are "
        "pending, delivered, acked, closed"]
    misplaced = ansim_agent(street.config_path, "status", "--state", "pending")
    assert misplaced.returncode == 2 and "--state does not go with `ansim agent status`" in misplaced.stderr


def test_alerts_without_a_store_exits_1(tmp_path):
    street = Street(tmp_path / "street", center_port=free_port())
    result = ansim_agent(street.config_path, "alerts")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["ansim agent: no alerts recorded: %s does not exist (has the agent run "
                                          "with this config?)" % (street.directory / "data" / "agent.db")]


# -- a damaged or unreadable store: one line with the right fix ------------------------------------

def _garbage(db_path):
    db_path.write_bytes(os.urandom(8192))


def _malformed(db_path):
    """A real store whose pages after the schema are overwritten: the tables are gone."""
    db_path.unlink()
    store_alerts_at(db_path, 50)
    size = db_path.stat().st_size
    with open(db_path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def store_alerts_at(db_path, count):
    store = Store(db_path)
    for index in range(count):
        store.add_alert("00020001-%d" % index, 0x00020001, time.time(), time.time(), {"type": "bell_press"})
    store.commit()
    store.close()


def _a_directory(db_path):
    db_path.unlink()
    db_path.mkdir()


def _unreadable(db_path):
    db_path.chmod(0)


def _read_only_data_dir(db_path):
    assert not db_path.with_name("agent.db-shm").exists()  # closed cleanly: the next reader creates it
    db_path.parent.chmod(0o555)


def without_root_privileges(db_path):
    """As root, the status process without the capabilities that override file modes (the
    tests run as root, where chmod alone denies nothing): as the wrong user would be."""
    if os.geteuid() != 0:
        return ()
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", "--inh-caps=" + caps, "--bounding-set=" + caps)


def read_only_mount(db_path):
    """The status process in its own mount namespace where the data directory is a read-only
    bind mount: a file system remounted read-only after disk errors. Nothing outside changes.
    Without root, a user namespace maps this user to root inside it (its files stay readable)."""
    directory = str(db_path.parent)
    as_root = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return ("unshare", *as_root, "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', directory)


DAMAGED = ["the file is damaged", "move it aside (`mv {db} {db}.broken`) and restart the agent",
           "alerts not delivered from it are then lost; keep the file for analysis"]
RUN_AS = "run as the agent's user, e.g. `sudo -u ansim ansim agent status ...`"
STORE_CASES = {
    "garbage: not a database": (_garbage, None, ["cannot read {db}: ", "(file is not a database)"] + DAMAGED),
    "pages overwritten: malformed": (_malformed, None, ["(database disk image is malformed)"] + DAMAGED),
    "a directory where the file should be": (_a_directory, None, ["it is a directory", "mv {db} {db}.broken"]),
    "the file unreadable for this user": (_unreadable, without_root_privileges,
                                          ["cannot read {db}: permission denied for", RUN_AS]),
    "the data directory read-only for this user": (_read_only_data_dir, without_root_privileges,
                                                   ["cannot create agent.db-shm beside it", "WAL mode", RUN_AS]),
    "the file system read-only": (lambda db_path: None, read_only_mount,
                                  ["its file system is mounted read-only", "`dmesg`", "remount it read-write"]),
}


@pytest.mark.parametrize("case", STORE_CASES)
def test_a_damaged_or_unreadable_store_is_one_line_with_the_right_fix(tmp_path, case):
    break_it, prefix_for, fragments = STORE_CASES[case]
    street = Street(tmp_path / "street", center_port=free_port())
    db_path = street.directory / "data" / "agent.db"
    store_alerts(street, [5])
    argv_prefix = prefix_for(db_path) if prefix_for else ()
    break_it(db_path)
    try:
        shown = status(street, prefix=argv_prefix)
        listed = ansim_agent(street.config_path, "alerts", prefix=argv_prefix)
    finally:
        db_path.parent.chmod(0o755)
    fragments = [f.format(db=db_path) for f in fragments]
    assert shown.returncode == 1, shown.stdout  # not running
    problem = [line for line in shown.stdout.splitlines() if line.startswith("cannot read ")]
    assert len(problem) == 1, shown.stdout
    for fragment in fragments:
        assert fragment in problem[0], "%r not in: %s" % (fragment, problem[0])
    # no advice that does not fit: neither "run as the agent's user" for a damaged file nor "mv" for a permission
    assert (RUN_AS in problem[0]) == (RUN_AS in fragments)
    assert ("mv " in problem[0]) == any("mv " in f for f in fragments)
    assert listed.returncode == 1 and listed.stdout == ""
    assert listed.stderr.splitlines() == ["ansim agent: " + problem[0].replace("agent status ...", "agent alerts ...")]
    assert "Traceback" not in shown.stdout + listed.stderr

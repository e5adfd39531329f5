"""The Pi's broker as `ansim provision` configures it, run for real: mosquitto started with the
generated ansim.conf (only its `listener 1883` moved to a free loopback port, plus a log, a
persistence directory and, as root, `user`), the generated passwd and acl installed where the
conf names them. Real paho clients (MQTT v5: a refused publish gets PUBACK 135, a refused
subscription SUBACK 135; v3.1.1: silently dropped) and the agent's subscriber, which sees what
is delivered, show that a device publishes only on its own up and state topics, that nothing
but the agent publishes light commands, and that anonymous clients and wrong passwords are
refused. Then the real agent and a bell on a virtual board log in with their provisioned
credentials: a press reaches the center and the ack reaches the bell; wrong credentials are a
clear line on the bell's console (retried every 30 s, not in a tight loop) and a DOWN reason
at the agent."""

import contextlib
import json
import os
import pwd
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import topics
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import ConnectFailed, MosquittoBroker
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BELL, LIGHT1, LIGHT2 = 0x00020001, 0x00030001, 0x00030002
AGENT_USER = "ansim-agent"
OK, NOT_AUTHORIZED = 0, 135
BUTTON, TAMPER, SIREN, STROBE = 0, 4, 25, 26
WAIT_S = 15
CONNECTED = "ANNOUNCE: 경찰관이 연결되었습니다"


def provision(*args):
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "provision", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


class GeneratedBroker(MosquittoBroker):
    """mosquitto run with the generated ansim.conf itself."""

    def __init__(self, conf, **kwargs):
        super().__init__(**kwargs)
        self.conf = conf

    def _write_config(self):
        text = self.conf.read_text()
        assert "\nlisten" + "er 1883\n" in text  # on every interface, on the Pi
        text = text.replace("\nlistener 1883\n", "\nlistener %d %s\n" % (self.port, self.host))
        text += "\nlog_dest file %s\nlog_type all\npersistence_location %s/\n" % (self.log_path, self.workdir)
        if os.geteuid() == 0:
            text += "user %s\n" % pwd.getpwuid(os.geteuid()).pw_name
        self.config_path.write_text(text)


class PiSite:
    """A provisioned site (a bell, two streetlights, a wearable) and its broker, started."""

    def __init__(self, tmp_path, broker_port, bell_settings=()):
        self.dir = tmp_path / "site"
        self.etc = tmp_path / "etc-mosquitto-ansim"  # what --mosquitto-dir names, as /etc/mosquitto/ansim
        self.etc.mkdir()
        broker = "127.0.0.1:%d" % broker_port
        self.printed = [
            provision("add", "--site", str(self.dir), "--role", "bell", "--position", "37.5663,126.978",
                      "--broker", broker, "--mosquitto-dir", str(self.etc), *bell_settings),
            provision("add", "--site", str(self.dir), "--role", "streetlight", "--count", "2",
                      "--position", "37.5663,126.9779", "--broker", broker),
            provision("add", "--site", str(self.dir), "--role", "wearable")]
        for name in ("passwd", "acl"):  # sudo install -m 600 ... /etc/mosquitto/ansim/
            (self.etc / name).write_bytes((self.dir / "mosquitto" / name).read_bytes())
        self.agent_password_file = self.dir / "mosquitto" / "agent.password"
        self.agent_password = self.agent_password_file.read_text().strip()

    def config(self, device_id):
        return json.loads((self.dir / "devices" / ("%08x.json" % device_id)).read_text())

    def password(self, device_id):
        return self.config(device_id)["broker"]["password"]


@contextlib.contextmanager
def pi_broker(tmp_path, **site_kwargs):
    broker = GeneratedBroker(None, workdir=tmp_path / "broker")
    site = PiSite(tmp_path, broker.port, **site_kwargs)
    broker.conf = site.dir / "mosquitto" / "ansim.conf"
    with broker:
        yield site, broker


def login(mqtt_client, broker, site, device_id, **kwargs):
    return mqtt_client(broker, client_id="%08x" % device_id, username="%08x" % device_id,
                       password=site.password(device_id), **kwargs)


def up(device_id):
    return topics.topic(device_id, topics.UP)


def state(device_id):
    return topics.topic(device_id, topics.STATE)


def down(device_id):
    return topics.topic(device_id, topics.DOWN)


def delivered(view, marker_topic, marker_from, timeout=5):
    """Everything ``view`` receives up to a marker that ``marker_from`` publishes now: what was
    refused before it was dropped, what was accepted arrived first (mosquitto is one thread)."""
    marker = b"marker-%f" % time.monotonic()
    assert marker_from.publish(marker_topic, marker) == OK
    seen = []
    while True:
        msg = view.next_message(timeout)
        if msg.payload == marker:
            return seen
        if not msg.payload.startswith(b"marker-"):  # an earlier marker again (overlapping subscriptions)
            seen.append((msg.topic, bytes(msg.payload)))


def next_payload(view, timeout=5):
    """The next message's payload that is not a marker of ``delivered``."""
    while True:
        payload = bytes(view.next_message(timeout).payload)
        if not payload.startswith(b"marker-"):
            return payload


def test_devices_publish_only_on_their_own_topics_and_only_the_agent_commands_lights(tmp_path, mqtt_client):
    with pi_broker(tmp_path) as (site, broker):
        agent = mqtt_client(broker, client_id="edge-test-01-local", username=AGENT_USER,
                            password=site.agent_password)
        granted = [agent.subscribe(f)[0].value for f in (topics.UPLINK_FILTER, topics.STATE_FILTER,
                                                         topics.RELAY_FILTER)]
        assert granted == [1, 1, 1]
        bell = login(mqtt_client, broker, site, BELL)
        light1, light2 = login(mqtt_client, broker, site, LIGHT1), login(mqtt_client, broker, site, LIGHT2)
        assert light1.subscribe(down(LIGHT1))[0].value == 1 and light2.subscribe(down(LIGHT2))[0].value == 1

        # Its own up and state topics: accepted and delivered to the agent.
        assert bell.publish(up(BELL), b"bell frame") == OK
        assert bell.publish(state(BELL), b"online", retain=True) == OK
        assert delivered(agent, up(BELL), bell) == [(up(BELL), b"bell frame"), (state(BELL), b"online")]

        # Another device's up or state topic, a relay's, any down topic (a light command): refused.
        for topic in (up(LIGHT1), state(LIGHT1), topics.topic(0x00010001, topics.UP),
                      topics.topic(0x0000ff01, topics.UP, topics.RELAY), "ansim/v1/dev/00020001/other", "x"):
            assert bell.publish(topic, b"forged").value == NOT_AUTHORIZED, topic
        for topic in (down(LIGHT1), down(LIGHT2), down(BELL)):
            assert bell.publish(topic, b"blink!").value == NOT_AUTHORIZED, topic
            assert light1.publish(topic, b"blink!").value == NOT_AUTHORIZED, topic
        assert delivered(agent, up(BELL), bell) == []
        assert delivered(light1, down(LIGHT1), agent) == [] and delivered(light2, down(LIGHT2), agent) == []

        # A device reads only its own down topic: not another's, not the others' frames.
        # (mosquitto 2.0 may grant such a subscription: its ACL is checked on every message.)
        snoop = mqtt_client(broker, client_id="%08x-snoop" % LIGHT1, username="%08x" % LIGHT1,
                            password=site.password(LIGHT1))
        for topic in (down(LIGHT2), "ansim/v1/dev/+/down", topics.UPLINK_FILTER, up(LIGHT2), "#"):
            snoop.subscribe(topic)
        assert agent.publish(down(LIGHT2), b"for light 2") == OK
        assert next_payload(light2) == b"for light 2"
        assert light2.publish(up(LIGHT2), b"light 2 frame") == OK
        assert next_payload(agent) == b"light 2 frame"
        assert light2.publish(state(LIGHT2), b"online", retain=True) == OK
        assert next_payload(agent) == b"online"
        assert delivered(snoop, down(LIGHT1), agent) == []  # nothing of light 2, no frames
        snoop.close()

        # The agent: the only one that publishes light commands; it cannot forge a device's frame.
        assert agent.publish(down(LIGHT1), b"light command") == OK
        assert next_payload(light1) == b"light command"
        assert delivered(light2, down(LIGHT2), agent) == []
        assert agent.publish(up(LIGHT1), b"forged").value == NOT_AUTHORIZED

        # MQTT 3.1.1 has no refusal in PUBACK: the forged publish is acknowledged, never delivered.
        light2_v3 = mqtt_client(broker, client_id="%08x-v3" % LIGHT2, username="%08x" % LIGHT2,
                                password=site.password(LIGHT2), protocol=mqtt.MQTTv311)
        light2_v3.publish(up(LIGHT1), b"forged v3")
        light2_v3.publish(down(LIGHT1), b"blink v3")
        assert delivered(agent, up(LIGHT2), light2_v3) == []
        assert delivered(light1, down(LIGHT1), agent) == []


def test_anonymous_clients_and_wrong_passwords_are_refused(tmp_path, mqtt_client):
    with pi_broker(tmp_path) as (site, broker):
        attempts = [{}, {"username": "%08x" % BELL}, {"username": "%08x" % BELL, "password": "guess"},
                    {"username": "%08x" % BELL, "password": site.password(LIGHT1)},  # another device's
                    {"username": AGENT_USER, "password": site.password(BELL)},
                    {"username": "00010001", "password": ""},  # a wearable has no login
                    {"username": "mosquitto", "password": "mosquitto"}]
        for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
            for kwargs in attempts:
                with pytest.raises(ConnectFailed, match="refused"):
                    broker.client(protocol=protocol, **kwargs)
        login(mqtt_client, broker, site, BELL).close()  # while the right one gets in


def test_a_device_sending_more_than_max_packet_size_is_disconnected(tmp_path, mqtt_client):
    with pi_broker(tmp_path) as (site, broker):
        agent = mqtt_client(broker, username=AGENT_USER, password=site.agent_password)
        agent.subscribe(topics.UPLINK_FILTER)
        bell = login(mqtt_client, broker, site, BELL)
        bell.paho.publish(up(BELL), b"x" * 2000, qos=1)
        assert bell.disconnected.wait(5)
        with pytest.raises(TimeoutError):
            agent.next_message(0.5)


def test_a_passwd_hashed_without_mosquitto_passwd_is_accepted_by_mosquitto(tmp_path, monkeypatch, mqtt_client):
    from ansim_tools import provision as provision_module
    which = provision_module.shutil.which
    monkeypatch.setattr(provision_module.shutil, "which",
                        lambda name, **kw: None if name == "mosquitto_passwd" else which(name, **kw))
    site = provision_module.Site(tmp_path / "site")
    site.add("bell", 1, [37.5, 127.0], None, None)
    monkeypatch.undo()
    password = json.loads((tmp_path / "site" / "devices" / "00020001.json").read_text())["broker"]["password"]
    with MosquittoBroker(workdir=tmp_path / "broker", password_file=tmp_path / "site" / "mosquitto" / "passwd") as b:
        assert not mqtt_client(b, username="00020001", password=password).publish("t", b"x").is_failure
        with pytest.raises(ConnectFailed):
            b.client(username="00020001", password=password + "x")


# -- the real agent and a bell on a virtual board, with their provisioned credentials --------

def agent_config(tmp_path, site, broker, center, password_file=None):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nid = "edge-test-01"\nsite = "jung-gu"\nposition = { lat = 37.5663, lon = 126.9779 }\n'
        'data_dir = "data"\nregistry = %s\n'
        '[local_mqtt]\nport = %d\nusername = "%s"\npassword_file = %s\n'
        '[center]\nhost = "127.0.0.1"\nport = %d\ntls = false\ndistrict = "jung-gu"\n[metrics]\nport = 0\n'
        % (json.dumps(str(site.dir / "registry.toml")), broker.port, AGENT_USER,
           json.dumps(str(password_file or site.agent_password_file)), center.port))
    return config_module.load(path)


def flash_bell(tmp_path, site):
    """What `ansim flash` puts on the bell: the firmware and devices/00020001.json as config.json."""
    board_dir = tmp_path / "flash"
    copy_to_directory(firmware_files("bell"), board_dir)
    (board_dir / "config.json").write_bytes((site.dir / "devices" / "00020001.json").read_bytes())
    return board_dir


BELL_SETTINGS = ["--set", "button_pin=%d" % BUTTON, "--set", "tamper_pin=%d" % TAMPER,
                 "--set", "siren_pin=%d" % SIREN, "--set", "strobe_pin=%d" % STROBE, "--set", "heartbeat_s=2"]


def prints(board, since=0):
    return "".join(e.get("text", "") for e in board.control.events(since) if e.get("ev") == "print")


def test_the_agent_and_a_bell_log_in_with_their_credentials_press_and_ack(tmp_path, mqtt_client):
    with pi_broker(tmp_path, bell_settings=BELL_SETTINGS) as (site, broker), \
            MosquittoBroker(workdir=tmp_path / "center") as center, \
            Agent(agent_config(tmp_path, site, broker, center)) as agent:
        assert agent.health.is_up("local_mqtt"), agent.health.down_components()
        center_view = mqtt_client(center)
        center_view.subscribe("ansim/center/v1/+/alerts/#")
        with VirtualBoard(flash_bell(tmp_path, site), "socket", workdir=tmp_path / "vm") as board:
            ctl = board.control
            try:
                ctl.wait_for(lambda e: "bell: online as 00020001" in e.get("text", ""), timeout=WAIT_S, ev="print")
                mark = ctl.mark()
                ctl.press(BUTTON, ms=150)
                deadline = time.monotonic() + WAIT_S
                while True:
                    alert = json.loads(center_view.next_message(max(0.0, deadline - time.monotonic())).payload)
                    if alert.get("type") == "bell_press":
                        break
                assert alert["alert_id"].startswith("00020001-")  # verified at the agent with the provisioned key
                center_view.publish("ansim/center/v1/agents/edge-test-01/ack",
                                    json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
                ctl.wait_for(lambda e: CONNECTED in e.get("text", ""), since=mark, timeout=WAIT_S, ev="print")
                assert "refused" not in prints(board) and "Traceback" not in prints(board)
            except BaseException:
                print("VM log:\n" + board.log())
                print("prints:\n" + prints(board))
                print(broker.log_tail(40))
                raise


def test_wrong_credentials_are_a_clear_line_on_the_bell_and_a_down_reason_at_the_agent(tmp_path):
    with pi_broker(tmp_path, bell_settings=BELL_SETTINGS) as (site, broker), \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        with Agent(agent_config(tmp_path, site, broker, center, password_file=wrong)) as agent:
            waits.until(lambda: "refused the agent" in agent.health.down_components().get("local_mqtt", ""),
                        timeout=WAIT_S)
            reason = agent.health.down_components()["local_mqtt"]
            assert "not-the-password" not in reason and site.agent_password not in reason
            print(reason)

        board_dir = flash_bell(tmp_path, site)
        config = json.loads((board_dir / "config.json").read_text())
        config["broker"]["password"] = "stale-password-of-an-old-flash"
        (board_dir / "config.json").write_text(json.dumps(config))
        with VirtualBoard(board_dir, "socket", workdir=tmp_path / "vm") as board:
            line = board.control.wait_for(lambda e: "refused" in e.get("text", ""), timeout=WAIT_S, ev="print")
            # mosquitto 2.0 answers a wrong password with CONNACK 5 (not authorised), some brokers 4
            assert "refused 00020001 as 00020001: not authorised: check the broker's passwd" in line["text"] \
                or "bad user name or password" in line["text"], line
            assert "retry in 30 s" in line["text"], line
            time.sleep(3)  # a tight retry loop would print again at once
            assert prints(board).count("refused 00020001") == 1, prints(board)

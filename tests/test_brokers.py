"""The private brokers behave as the alert path needs: QoS 1 delivery, TLS identities confined
by the ACL, bridging, restarts that keep queued messages, clear errors, and no broker left
running when the test runner dies. Every wait is on a protocol answer, with a timeout."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ansim_simulators.fixtures import broker as broker_module
import paho.mqtt.client as mqtt

from ansim_simulators.fixtures.broker import (DEVICE_MAX_PACKET_SIZE, MAX_PACKET_SIZE, BrokerError, ConnectFailed,
                                     MosquittoBroker, MosquittoNotFound)
from ansim_simulators.fixtures.pki import TlsFiles

DEVICE = "00020001"
OTHER = "00020002"
NOT_AUTHORIZED = 135


def up(device):
    return f"ansim/v1/dev/{device}/up"


def test_plain_broker_round_trips_qos1(broker, mqtt_client):
    sub = mqtt_client(broker, client_id="sub")
    assert [rc.value for rc in sub.subscribe("ansim/v1/dev/+/up", qos=1)] == [1]
    pub = mqtt_client(broker, client_id="pub")
    assert not pub.publish(up(DEVICE), b"\x10frame", qos=1).is_failure
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (up(DEVICE), b"\x10frame", 1)


def test_tls_device_publishes_and_receives_on_its_own_topic_only(tls_broker, pki, mqtt_client):
    device = mqtt_client(tls_broker, client_id="bell", tls=pki.client(DEVICE))
    other = mqtt_client(tls_broker, client_id="other", tls=pki.client(OTHER))
    # mosquitto 2.0 grants the subscription and applies the read ACL on delivery.
    device.subscribe(f"ansim/v1/dev/{OTHER}/#")
    assert [rc.value for rc in device.subscribe(f"ansim/v1/dev/{DEVICE}/#")] == [1]
    assert not other.publish(up(OTHER), b"not yours").is_failure
    assert not device.publish(up(DEVICE), b"mine").is_failure
    # Had the other device's message been delivered, it would have arrived first.
    msg = device.next_message()
    assert (msg.topic, msg.payload) == (up(DEVICE), b"mine")


def test_tls_client_without_certificate_is_refused(tls_broker, pki, mqtt_client):
    with pytest.raises(ConnectFailed):
        mqtt_client(tls_broker, client_id="anonymous", tls=TlsFiles(cafile=pki.ca_cert))


def test_publishing_as_another_device_gets_puback_135_and_is_not_delivered(tls_broker, pki, mqtt_client):
    other = mqtt_client(tls_broker, client_id="other", tls=pki.client(OTHER))
    other.subscribe(f"ansim/v1/dev/{OTHER}/#")
    forger = mqtt_client(tls_broker, client_id="forger", tls=pki.client(DEVICE))
    assert forger.publish(up(OTHER), b"forged").value == NOT_AUTHORIZED
    # mosquitto 2.0 then drops the connection: a device that does this must reconnect.
    assert forger.disconnected.wait(5)
    # The broker handles one connection's packets in order: had the forgery been delivered,
    # it would reach the subscriber before this marker.
    other.publish(up(OTHER), b"marker")
    assert other.next_message().payload == b"marker"


def test_bridge_carries_qos1_from_edge_to_center(bridged_brokers, mqtt_client):
    edge, center = bridged_brokers
    sub = mqtt_client(center, client_id="center")
    sub.subscribe("ansim/#", qos=1)
    assert not mqtt_client(edge, client_id="device").publish(up(DEVICE), b"alert", qos=1).is_failure
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (up(DEVICE), b"alert", 1)


ALERT_SIZED = b'{"schema": "ansim.alert/1", "route": [' + b"[37.5663, 126.9779], " * 200 + b"[0, 0]]}"


@pytest.mark.parametrize("cap, passes, refused", [
    (DEVICE_MAX_PACKET_SIZE, b"\x10" + bytes(63), bytes(2000)),  # a frame is at most 64 bytes
    (MAX_PACKET_SIZE, ALERT_SIZED, bytes(1 << 20)),               # alerts and routes: a few KB
    (None, bytes(1 << 20), None),
])
def test_max_packet_size_disconnects_the_sender_of_a_longer_packet(tmp_path, mqtt_client, cap, passes, refused):
    """The cap applies to MQTT 3.1.1 clients too (as the devices are: no Maximum Packet Size told in
    CONNACK): the sender is disconnected and nothing is delivered; what fits is delivered."""
    with MosquittoBroker(workdir=tmp_path, max_packet_size=cap) as b:
        assert ("max_packet_size %s" % cap in b.config_path.read_text()) == (cap is not None)
        sub = mqtt_client(b, client_id="sub")
        sub.subscribe("ansim/#", qos=1)
        pub = mqtt_client(b, client_id="pub", protocol=mqtt.MQTTv311)
        assert not pub.publish(up(DEVICE), passes, qos=1, timeout=10).is_failure
        assert sub.next_message().payload == passes
        if refused is None:
            return
        pub.paho.publish(up(DEVICE), refused, qos=1)
        assert pub.disconnected.wait(5)
        mqtt_client(b, client_id="marker").publish(up(DEVICE), b"marker")
        assert sub.next_message().payload == b"marker"  # the refused message would have come first
        assert "Client pub disconnected due to oversize packet" in b.log_path.read_text()


def test_restart_keeps_port_and_queued_messages_of_persistent_sessions(tmp_path):
    durable = {"client_id": "center", "clean_start": False, "session_expiry": 3600}
    with MosquittoBroker(workdir=tmp_path, persistence=True) as b:
        with b.client(**durable) as center:
            center.subscribe("ansim/#", qos=1)
        with b.client(client_id="pub") as pub:
            assert not pub.publish(up(DEVICE), b"kept", qos=1).is_failure
        port, pid = b.port, b.pid
        b.restart()
        assert (b.port, b.pid != pid) == (port, True)
        with b.client(**durable) as center:
            assert center.next_message().payload == b"kept"


def test_broker_that_cannot_start_reports_why(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(BrokerError, match="exited with code") as err:
        with MosquittoBroker(workdir=tmp_path, tls=TlsFiles(missing, missing, missing)):
            pass
    assert str(missing) in str(err.value)  # the log tail names the culprit


OWNER = """
import sys
from ansim_simulators.fixtures.broker import MosquittoBroker
broker = MosquittoBroker(workdir=sys.argv[1]).start()
print(broker.pid, flush=True)
sys.stdin.read()
"""


def test_broker_dies_when_its_owner_is_killed(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    broker_pid = int(owner.stdout.readline())
    try:
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        while _alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(broker_pid), f"mosquitto {broker_pid} outlived its owner"
    finally:
        owner.stdin.close()
        owner.stdout.close()
        if _alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


def _alive(pid):
    """True unless the process is gone or a zombie (an orphan's reaper may be slow or absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_missing_mosquitto_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker_module, "SBIN_DIRS", (str(tmp_path),))
    with pytest.raises(MosquittoNotFound) as err:
        MosquittoBroker(workdir=tmp_path).start()
    assert str(err.value) == ("mosquitto not found: run `make test` (it installs it) "
                              "or `sudo apt-get install mosquitto`")

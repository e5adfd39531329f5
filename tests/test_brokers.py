"""The private brokers behave as the alert path needs: delivery, TLS identities with an ACL,
bridging, and no orphaned broker when the test runner dies."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ansim_simulators import broker as broker_module
from ansim_simulators.pki import TlsFiles
from conftest import MqttProbe

DEVICE = "00020001"
OTHER = "00020002"


def test_plain_broker_delivers_qos1(broker, probes):
    sub = probes(broker.port, "sub")
    sub.subscribe("ansim/v1/dev/+/up")
    pub = probes(broker.port, "pub")
    pub.publish("ansim/v1/dev/%s/up" % DEVICE, b"\x10frame")
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("ansim/v1/dev/%s/up" % DEVICE, b"\x10frame", 1)


def test_tls_device_publishes_and_receives_on_its_own_topics(tls_broker, pki, probes):
    device = probes(tls_broker.port, "bell", tls=pki.client(DEVICE))
    device.subscribe("ansim/v1/dev/%s/down" % DEVICE)
    assert not device.publish("ansim/v1/dev/%s/up" % DEVICE, b"up").rc
    device.publish("ansim/v1/dev/%s/down" % DEVICE, b"down")
    assert device.next_message().payload == b"down"


def test_tls_without_client_certificate_is_refused(tls_broker, pki, probes):
    # Under TLS 1.3 the refusal can surface as a reset during the handshake or as a disconnect.
    with pytest.raises((ConnectionRefusedError, OSError)):
        probes(tls_broker.port, "anonymous", tls=TlsFiles(cafile=pki.ca_cert))


def test_acl_denies_publishing_as_another_device_with_reason_135(tls_broker, pki, probes):
    device = probes(tls_broker.port, "bell", tls=pki.client(DEVICE))
    acks = []
    device.client.on_publish = lambda c, u, mid, reason, props: acks.append(reason)
    device.publish("ansim/v1/dev/%s/up" % OTHER, b"forged")
    assert acks and acks[0].value == 135, acks


def test_bridge_carries_qos1_from_edge_to_center(bridged_brokers, probes):
    edge, center = bridged_brokers
    sub = probes(center.port, "center")
    # mosquitto announces a connected bridge on the remote broker with a retained "1".
    sub.subscribe("$SYS/broker/connection/+/state")
    assert sub.next_message(timeout=10).payload == b"1", edge.log()[-600:]
    sub.subscribe("ansim/#")
    probes(edge.port, "edge-device").publish("ansim/v1/dev/%s/up" % DEVICE, b"alert")
    msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("ansim/v1/dev/%s/up" % DEVICE, b"alert", 1)


def test_broker_dies_when_its_owner_is_killed(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from ansim_simulators.broker import MosquittoBroker\n"
         "b = MosquittoBroker().start()\n"
         "print(b.process.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    broker_pid = int(owner.stdout.readline())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(broker_pid):
        time.sleep(0.02)
    assert not _alive(broker_pid), "mosquitto %d outlived its owner" % broker_pid


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_restart_keeps_the_port_and_queued_messages_of_persistent_sessions():
    with broker_module.MosquittoBroker(persistence=True) as b:
        durable = MqttProbe(b.port, "center", session_expiry_s=3600)
        durable.subscribe("ansim/#")
        durable.close()
        publisher = MqttProbe(b.port, "pub")
        publisher.publish("ansim/v1/dev/%s/up" % DEVICE, b"kept")
        publisher.close()
        port = b.port
        b.restart()
        assert b.port == port
        durable = MqttProbe(b.port, "center", session_expiry_s=3600)
        try:
            assert durable.next_message().payload == b"kept"
        finally:
            durable.close()


def test_missing_mosquitto_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(broker_module.os, "access", lambda path, mode: False)
    with pytest.raises(broker_module.BrokerError, match="mosquitto not found: run `make test`"):
        broker_module.MosquittoBroker().start()

"""Fixtures with real parts: private mosquitto brokers on free ports (plain, TLS with client
certificates and an ACL, a bridged pair), always torn down. The logic lives in
ansim_simulators.broker so that the demo and the simulators use the same brokers."""

import queue

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansim_simulators.broker import Bridge, MosquittoBroker
from ansim_simulators.pki import create_pki

WAIT_S = 5.0
DEVICE_ACL = ["pattern write ansim/v1/dev/%u/#", "pattern read ansim/v1/dev/%u/#"]


class MqttProbe:
    """A connected paho client that collects messages in a queue; every wait has a timeout."""

    def __init__(self, port, client_id, tls=None, protocol=mqtt.MQTTv5, session_expiry_s=None):
        self.messages = queue.Queue()
        self._events = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.cafile),
                                certfile=str(tls.certfile) if tls.certfile else None,
                                keyfile=str(tls.keyfile) if tls.keyfile else None)
        self.client.on_connect = lambda c, u, flags, reason, props: self._events.put(("connect", reason))
        self.client.on_disconnect = lambda c, u, flags, reason, props: self._events.put(("disconnect", reason))
        self.client.on_subscribe = lambda c, u, mid, reasons, props: self._events.put(("subscribe", reasons))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        properties = None
        if session_expiry_s is not None:  # a persistent session that outlives the connection
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
        self.client.connect("localhost" if tls else "127.0.0.1", port,
                            clean_start=session_expiry_s is None, properties=properties)
        self.client.loop_start()
        kind, self.connect_reason = self._next_event()
        if kind != "connect" or self.connect_reason.is_failure:
            self.close()
            raise ConnectionRefusedError("broker refused %s: %s %s" % (client_id, kind, self.connect_reason))

    def _next_event(self):
        try:
            return self._events.get(timeout=WAIT_S)
        except queue.Empty:
            raise TimeoutError("no answer from the broker within %.0f s" % WAIT_S) from None

    def subscribe(self, topic, qos=1):
        self.client.subscribe(topic, qos)
        kind, reasons = self._next_event()
        assert kind == "subscribe" and not reasons[0].is_failure, reasons

    def publish(self, topic, payload, qos=1):
        """Publish and wait for the PUBACK; returns the MessageInfo (reason code under MQTT v5)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT_S)
        return info

    def next_message(self, timeout=WAIT_S):
        return self.messages.get(timeout=timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker():
    with MosquittoBroker() as b:
        yield b


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return create_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(pki):
    with MosquittoBroker(tls=pki.server, acl=DEVICE_ACL) as b:
        yield b


@pytest.fixture
def bridged_brokers():
    """(edge, center): the edge bridges ansim/# to the center in both directions, QoS 1."""
    with MosquittoBroker() as center, MosquittoBroker(bridge=Bridge(center.port)) as edge:
        yield edge, center


@pytest.fixture
def probes():
    """Make MqttProbe clients that are closed after the test."""
    made = []

    def make(port, client_id, **kw):
        probe = MqttProbe(port, client_id, **kw)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()

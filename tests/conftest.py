"""Fixtures with real parts: private mosquitto brokers on free ports (plain, TLS with client
certificates and the device ACL, a bridged pair), always torn down, and connected MQTT clients.
The logic lives in ansim_simulators.broker so that the demo and the simulators reuse it."""

import pytest

from ansim_simulators.broker import DEVICE_ACL, Bridge, MosquittoBroker
from ansim_simulators.pki import create_pki


@pytest.fixture
def broker(tmp_path):
    """A plain, anonymous broker; its log stays in tmp_path for a failing test."""
    with MosquittoBroker(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA with a loopback server certificate; ``pki.client(cn)`` issues device certs."""
    return create_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path, pki):
    """A TLS broker: client certificates required, CN = username, devices confined by DEVICE_ACL."""
    with MosquittoBroker(workdir=tmp_path / "tls-broker", tls=pki.server, acl=DEVICE_ACL) as b:
        yield b


@pytest.fixture
def bridged_brokers(tmp_path):
    """(edge, center): the edge bridges ansim/# to the center both ways at QoS 1, connected."""
    with MosquittoBroker(workdir=tmp_path / "center") as center, \
            MosquittoBroker(workdir=tmp_path / "edge", bridges=[Bridge("127.0.0.1", center.port)]) as edge:
        edge.wait_bridges()
        yield edge, center


@pytest.fixture
def mqtt_client():
    """Factory ``mqtt_client(broker, **connect_kwargs)`` for connected SyncClients (MQTT v5 by
    default, see ansim_simulators.broker.connect_client), closed after the test."""
    made = []

    def make(broker, **kwargs):
        client = broker.client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()

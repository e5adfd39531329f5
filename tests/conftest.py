"""Fixtures with real parts: private mosquitto brokers on free ports (plain, TLS with client
certificates and the device ACL, a bridged pair), always torn down, and connected MQTT clients.
The logic lives in ansim_simulators.fixtures.broker so that the demo and the simulators reuse it."""

import pytest

from ansim_simulators.fixtures.broker import DEVICE_ACL, Bridge, MosquittoBroker
from ansim_simulators.fixtures.pki import create_pki
from ansim_simulators.fixtures.smallfs import MountUnavailable, SmallFilesystem


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
    default, see ansim_simulators.fixtures.broker.connect_client), closed after the test."""
    made = []

    def make(broker, **kwargs):
        client = broker.client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def small_filesystem(tmp_path):
    """Factory ``small_filesystem(size_bytes, kind="tmpfs")``: a mounted
    ansim_simulators.fixtures.smallfs.SmallFilesystem (tmpfs, or a loop-mounted ext4 image) below
    tmp_path, to fill up or make read-only; unmounted after the test (stop whatever has files
    open on it first). Skips when mounting needs root and this is not root."""
    mounted = []

    def make(size_bytes, kind="tmpfs"):
        fs = SmallFilesystem(size_bytes, kind, directory=tmp_path / ("smallfs-%d" % len(mounted)))
        try:
            fs.mount()
        except MountUnavailable as err:
            pytest.skip(str(err))
        mounted.append(fs)
        return fs

    yield make
    errors = []
    for fs in reversed(mounted):
        try:
            fs.unmount()
        except Exception as err:  # unmount the others anyway
            errors.append(err)
    if errors:
        raise errors[0]

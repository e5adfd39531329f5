"""Under systemd (Type=notify, WatchdogSec) the agent says READY once it runs and pings the
watchdog only while its pipeline and uplink make progress: a wedged pipeline stops the pings
and the unit's status names it, so systemd kills and restarts the agent."""

import signal
import socket
import threading

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from test_agent_crash import start_agent

WAIT_S = 10


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET, with a 3 s watchdog (a
    thread counts as stalled after 1.5 s: more than a turn of the uplink's loop, 1 s)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    received = []

    def collect():
        while not stop.is_set():
            try:
                received.append(sock.recv(4096).decode())
            except socket.timeout:
                continue
    stop = threading.Event()
    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    yield received
    stop.set()
    reader.join(2)
    sock.close()


def test_the_watchdog_is_pinged_while_the_agent_works_and_not_once_its_pipeline_is_wedged(tmp_path, notify_socket):
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port)
        with Agent(config_module.load(street.config_path)) as agent:
            waits.until(lambda: notify_socket.count("WATCHDOG=1") >= 2, WAIT_S, "watchdog pings from a working agent")
            wedged, release = threading.Event(), threading.Event()

            def wedge():
                wedged.set()
                release.wait(WAIT_S)
            agent._call(wedge)
            assert wedged.wait(WAIT_S)
            try:
                waits.until(lambda: any(m.startswith("STATUS=") and "pipeline" in m for m in notify_socket),
                            WAIT_S, "the status naming the wedged pipeline")
                pings = notify_socket.count("WATCHDOG=1")
                waits.until(lambda: agent.watchdog.stalled() == ["pipeline"], WAIT_S, "the pipeline seen stalled")
                # Two more watchdog periods: a single ping would let systemd believe it alive.
                assert not waits_for_ping(notify_socket, pings, 3.0)
            finally:
                release.set()
            waits.until(lambda: notify_socket.count("WATCHDOG=1") > pings, WAIT_S, "pings again once it moves")


def test_the_agent_process_says_ready_pings_and_says_stopping(tmp_path, notify_socket):
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port)
        with open(tmp_path / "agent.log", "w") as log:
            agent = start_agent(street, log)  # with NOTIFY_SOCKET and WATCHDOG_USEC from the fixture
            try:
                waits.until(lambda: "READY=1" in notify_socket, WAIT_S, "READY=1 from the agent")
                waits.until(lambda: "WATCHDOG=1" in notify_socket, WAIT_S, "a watchdog ping")
            finally:
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(10) == 0
        waits.until(lambda: "STOPPING=1" in notify_socket, WAIT_S, "STOPPING=1")


def waits_for_ping(messages, count, seconds):
    """True if a WATCHDOG=1 beyond ``count`` arrives within ``seconds``."""
    try:
        waits.until(lambda: messages.count("WATCHDOG=1") > count, seconds, "a ping")
    except AssertionError:
        return False
    return True

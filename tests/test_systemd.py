"""sd_notify and the watchdog: messages arrive as datagrams on a real unix socket (a path and
an abstract one) given as NOTIFY_SOCKET; the watchdog pings only while every heartbeat beats;
the unit file asks for Type=notify with a watchdog."""

import configparser
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from ansim_agent import systemd
from ansim_agent.systemd import Heartbeat, Watchdog, ready, status, stopping, watchdog_interval
from ansim_simulators.fixtures import waits

UNIT = Path(__file__).resolve().parent.parent / "edge_agent" / "ansim-agent.service"
WAIT_S = 5


class Listener:
    """systemd's end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(WAIT_S)

    def receive(self, timeout=WAIT_S):
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def receive_until(self, wanted, timeout=WAIT_S):
        """Datagrams up to and including the first equal to ``wanted``."""
        got = []
        deadline = time.monotonic() + timeout
        while not got or got[-1] != wanted:
            left = deadline - time.monotonic()
            assert left > 0, "%r not received within %s s; got %r" % (wanted, timeout, got)
            got.append(self.receive(left))
        return got

    def drain(self):
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return got
        finally:
            self.sock.settimeout(WAIT_S)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A socket bound at a path in tmp_path, named in NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Listener(sock)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_ready_stopping_and_status_arrive_as_datagrams(notify_socket):
    assert ready()
    assert notify_socket.receive() == "READY=1"
    assert status("stalled:\npipeline")
    assert notify_socket.receive() == "STATUS=stalled: pipeline"  # one line: a newline starts another key
    assert stopping()
    assert notify_socket.receive() == "STOPPING=1"
    assert systemd.notify("STATUS=x\nWATCHDOG=1")
    assert notify_socket.receive() == "STATUS=x\nWATCHDOG=1"


def test_abstract_socket(monkeypatch):
    name = "ansim-test-%s" % uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert ready()
        assert Listener(sock).receive() == "READY=1"


def test_without_notify_socket_nothing_is_sent():
    assert systemd.notify("READY=1") is False
    assert ready() is False and stopping() is False and status("x") is False
    assert watchdog_interval() is None
    watchdog = Watchdog({"pipeline": Heartbeat()}).start()
    assert watchdog._thread is None  # no watchdog thread, no pings
    assert watchdog.check() is False and watchdog.pings == 0
    watchdog.stop()


def test_a_socket_nobody_listens_on_is_not_fatal(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(systemd, "_failed_once", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, "ansim.agent.systemd"):
        assert ready() is False
        assert ready() is False
    assert len(caplog.records) == 1  # logged once, not at every ping
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert ready() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "", "thirty"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    assert watchdog_interval() == 0.5
    assert Watchdog({}).interval == 0.5 and Watchdog({}).stale_after == 0.25


def test_watchdog_pings_only_while_every_heartbeat_beats(notify_socket, caplog):
    clock = FakeClock()
    beats = {"pipeline": Heartbeat(clock), "uplink": Heartbeat(clock)}
    watchdog = Watchdog(beats, clock, interval=30)
    assert watchdog.stale_after == 15
    assert watchdog.check() and notify_socket.receive() == "WATCHDOG=1"
    for _ in range(3):
        clock.now += 10
        beats["pipeline"].beat()
        beats["uplink"].beat()
        assert watchdog.check() and notify_socket.receive() == "WATCHDOG=1"
    assert watchdog.stalled() == []

    with caplog.at_level(logging.ERROR, "ansim.agent.systemd"):
        clock.now += 10
        beats["pipeline"].beat()  # the uplink is wedged from here on
        assert watchdog.check()  # its last beat is 10 s old: not yet stale
        assert notify_socket.receive() == "WATCHDOG=1"
        clock.now += 6
        beats["pipeline"].beat()
        assert watchdog.stalled() == ["uplink"]
        assert watchdog.check() is False
        assert notify_socket.receive() == "STATUS=stalled: uplink"
        for _ in range(3):
            clock.now += 5
            beats["pipeline"].beat()
            assert watchdog.check() is False
    assert notify_socket.drain() == []  # no ping, and the status was sent once
    assert [r.getMessage() for r in caplog.records] == [
        "stalled: uplink (last beat 16.0 s ago); no more watchdog pings, systemd will restart the agent"]

    clock.now += 16  # now the pipeline too
    assert watchdog.check() is False
    assert watchdog.stalled() == ["pipeline", "uplink"]
    assert notify_socket.receive() == "STATUS=stalled: pipeline, uplink"

    beats["pipeline"].beat()  # both come back before systemd's kill
    beats["uplink"].beat()
    assert watchdog.check()
    assert notify_socket.receive_until("WATCHDOG=1") == ["STATUS=running", "WATCHDOG=1"]
    assert watchdog.pings == 6


def test_watchdog_thread_stops_pinging_when_a_thread_wedges(notify_socket, monkeypatch):
    """Real threads and time: two loops beat; the watchdog thread pings every interval / 2;
    one loop stops, and within stale_after the pings stop and the status names it."""
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # 0.6 s: pings every 0.3 s
    beats = {"pipeline": Heartbeat(), "uplink": Heartbeat()}
    running = {name: threading.Event() for name in beats}

    def loop(name):
        while running[name].is_set():
            beats[name].beat()
            time.sleep(0.005)

    threads = []
    for name in beats:
        running[name].set()
        threads.append(threading.Thread(target=loop, args=(name,), daemon=True))
        threads[-1].start()
    watchdog = Watchdog(beats).start()
    try:
        assert watchdog.interval == 0.6 and watchdog.stale_after == 0.3
        for _ in range(3):
            assert notify_socket.receive() == "WATCHDOG=1"
        waits.until(lambda: watchdog.pings >= 3, WAIT_S, "three pings counted")

        running["pipeline"].clear()
        threads[0].join()
        got = notify_socket.receive_until("STATUS=stalled: pipeline")
        assert set(got) <= {"WATCHDOG=1", "STATUS=stalled: pipeline"}
        assert watchdog.stalled() == ["pipeline"]
        pings = watchdog.pings
        with pytest.raises(socket.timeout):  # four ping periods and nothing more
            notify_socket.receive(timeout=1.2)
        assert watchdog.pings == pings
    finally:
        watchdog.stop()
        running["uplink"].clear()
    assert not watchdog._thread.is_alive()


def unit_service_section():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    return parser["Service"]


def test_unit_file_asks_for_notify_and_a_watchdog():
    service = unit_service_section()
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    watchdog_s = float(service["WatchdogSec"])  # plain seconds, no unit suffix
    # The watchdog declares a loop stalled after WatchdogSec / 2: well past the slowest loop's
    # turn (the uplink's, 1 s) plus seconds of legitimate blocking on the store.
    assert 10 <= watchdog_s / 2 and watchdog_s <= 120
    assert service["Restart"] == "always"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_unit_file_verifies(tmp_path):
    """systemd's own parser accepts the unit (with an ExecStart that exists on this machine)."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/ansim/.venv/bin/ansim", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

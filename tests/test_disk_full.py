"""Storage errors: a full disk, a read-only data_dir, a corrupt agent.db.

With a full disk the agent must acknowledge no frame it has not stored, say so in one line
with the fix, keep running and resume by itself once space is freed: every press the local
broker accepted reaches the center. At start, a read-only data_dir or a corrupt agent.db
gives a non-zero exit and one line (no traceback).

The agent runs as a real process (``python -m ansim_tools.cli agent``) with its data_dir on
a small filesystem (ansim_simulators.fixtures.smallfs: tmpfs, or a loop-mounted ext4 image) on which
a ballast file leaves about 1 MB free; a stream of signed bell presses then fills it, and
deleting the ballast frees the space again.

What the local broker's PUBACK to the bell shows is only that the broker has the press (it
queues it for the agent's persistent session). The agent's own PUBACK, sent after its
commit, is what lets the broker forget a press: so the test kills the agent (-9) while the
disk is full, frees the space and starts it again. The broker redelivers whatever the agent
did not acknowledge; a press acknowledged but not stored would be lost, and the count at the
center (an independent subscriber) shows it. (Checked: an agent changed to acknowledge a
batch whose commit failed loses about 70 of the 600 presses here.)
"""

import json
import signal
import subprocess
import sys
import threading

import pytest

from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.fixtures.waits import until

FS_BYTES = 16 << 20       # room for SQLite's WAL before its first checkpoint (1000 pages, ~4 MB) and the store
LEAVE_BYTES = 1 << 20     # free when the agent starts: it takes ~150 KB, the first ~100 presses the rest
PRESSES_PER_BELL = 300    # 600 presses take ~5 MB (WAL up to its first checkpoint, and the store)
FULL_S = 30               # the agent has this long to notice the full disk
DELIVER_S = 60            # and this long to deliver everything once the space is freed
START_ERROR_S = 30        # a storage error at start ends the agent within this


def start_agent(street, log):
    return subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "--config", str(street.config_path)],
                            stdout=log, stderr=subprocess.STDOUT)


def stop_agent(agent):
    """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
    return agent.wait()


class Scene:
    """Two brokers, a street whose agent keeps its data on ``fs``, the center's view of the
    alerts, and the bells' client on the local broker."""

    def __init__(self, tmp_path, fs, local, center, mqtt_client):
        self.fs = fs
        self.data_dir = fs.path / "data"
        self.street = Street(tmp_path / "street", center_port=center.port, local_port=local.port, bells=2,
                             overrides={"agent": {"data_dir": json.dumps(str(self.data_dir))},
                                        "center": {"escalation_s": "3600"}})
        self.log_path = tmp_path / "agent.log"
        self.log = open(self.log_path, "w")
        self.received = set()
        self._center_view = mqtt_client(center, client_id="center-sim")
        self._center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        self._births = mqtt_client(center, client_id="center-births")
        self._births.subscribe("ansim/center/v1/agents/+/state")
        self._bells = mqtt_client(local, client_id="bells")
        # The agent's persistent session on the local broker (client id: the agent id + "-local",
        # CENTER_API.md), made beforehand: it holds every press from the first one on, whenever
        # the agent subscribes. What is tested here is the store, not the start-up order.
        with local.client(client_id=self.street.agent_id + "-local", clean_start=False,
                          session_expiry=7 * 24 * 3600) as session:
            session.subscribe(topics.UPLINK_FILTER)
        self.accepted = []  # alert ids of the presses the local broker PUBACKed, in order

    def start_agent(self):
        agent = start_agent(self.street, self.log)
        until(lambda: agent.poll() is not None or self._online(), 20, "the agent's birth certificate")
        assert agent.poll() is None, "the agent exited at start (%s):\n%s" % (agent.returncode, self.log_text())
        return agent

    def _online(self):
        try:
            return json.loads(self._births.next_message(timeout=0.1).payload)["state"] == "online"
        except TimeoutError:
            return False

    def stream(self):
        """Both bells press in turns, QoS 1; keeps the alert ids the broker accepted."""
        for counter in range(1, PRESSES_PER_BELL + 1):
            for bell in self.street.bells:
                frame = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)
                reason = self._bells.publish(topics.topic(bell.device_id, topics.UP), frame)
                if not reason.is_failure:
                    self.accepted.append("%s-%d" % (bell.hex_id, counter))

    def collect(self, timeout):
        """Read the center's alerts until every accepted press arrived or ``timeout``; returns
        the alert ids accepted by the local broker that never reached the center."""
        def all_there():
            try:
                while True:
                    self.received.add(json.loads(self._center_view.next_message(timeout=0.05).payload)["alert_id"])
            except TimeoutError:
                pass
            return set(self.accepted) <= self.received
        try:
            until(all_there, timeout, "every accepted press at the center")
        except AssertionError:
            pass
        return sorted(set(self.accepted) - self.received, key=lambda a: (a[:8], int(a[9:])))

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def disk_full_lines(self):
        """Log lines saying the disk is full and naming where: the data_dir or its filesystem."""
        return [line for line in self.log_text().splitlines()
                if str(self.fs.path) in line and any(w in line.lower() for w in ("full", "no space"))]

    def close(self):
        self.log.close()


@pytest.fixture
def scene(tmp_path, small_filesystem, mqtt_client, request):
    fs = small_filesystem(FS_BYTES, getattr(request, "param", "tmpfs"))
    with MosquittoBroker(workdir=tmp_path / "local") as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        s = Scene(tmp_path, fs, local, center, mqtt_client)
        try:
            yield s
        finally:
            s.close()


def _start_on_a_nearly_full_disk(scene):
    scene.fs.fill(LEAVE_BYTES)
    return scene.start_agent()


def _fill_up(scene, agent):
    """Stream until the disk is full and the agent has shown what it does about it (its
    line, a traceback, or an exit)."""
    sender = threading.Thread(target=scene.stream, daemon=True)
    sender.start()
    sender.join(60)
    assert not sender.is_alive(), "the stream did not finish within 60 s"
    until(lambda: scene.fs.free_bytes() < 16 << 10, FULL_S,
          "the stream filling the disk (%d bytes still free: raise PRESSES_PER_BELL)" % scene.fs.free_bytes())
    try:
        until(lambda: scene.disk_full_lines() or "Traceback" in scene.log_text() or agent.poll() is not None,
              FULL_S, "a sign from the agent")
    except AssertionError:
        pass


@pytest.mark.parametrize("scene", ["tmpfs", "ext4"], indirect=True)
def test_full_disk_nothing_acknowledged_that_was_not_stored(scene):
    """Killed while the disk is full and started again after freeing it, the agent delivers
    every press: the broker redelivered all it had not acknowledged."""
    agent = _start_on_a_nearly_full_disk(scene)
    try:
        _fill_up(scene, agent)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        scene.fs.release()
        agent = start_agent(scene.street, scene.log)
        missing = scene.collect(DELIVER_S)
    finally:
        stop_agent(agent)
    assert len(scene.accepted) == 2 * PRESSES_PER_BELL
    assert not missing, "lost %d of %d presses the local broker accepted: %s\n--- agent log ---\n%s" % (
        len(missing), len(scene.accepted), missing, scene.log_text()[-6000:])


@pytest.mark.parametrize("scene", ["tmpfs", "ext4"], indirect=True)
def test_full_disk_is_one_line_with_the_fix_and_the_agent_resumes_when_space_is_freed(scene):
    """While the disk is full the agent says so (where, and the fix: free space there), does
    not exit, and once the ballast is deleted delivers every press without a restart."""
    agent = _start_on_a_nearly_full_disk(scene)
    problems = []
    try:
        _fill_up(scene, agent)
        lines = scene.disk_full_lines()
        if not lines:
            problems.append("no log line says the disk holding %s is full" % scene.data_dir)
        elif not all("free" in line.lower() for line in lines):
            problems.append("the disk-full line does not give the fix (free space on %s): %s" % (scene.fs.path, lines))
        if len(lines) > 10:
            problems.append("%d disk-full lines: a flood, not one line" % len(lines))
        if agent.poll() is not None:
            problems.append("the agent exited (code %s) on the full disk" % agent.returncode)
        scene.fs.release()
        missing = scene.collect(DELIVER_S)
        if missing:
            problems.append("%d of %d presses the local broker accepted never reached the center within %d s "
                            "after the space was freed (first: %s)"
                            % (len(missing), len(scene.accepted), DELIVER_S, missing[:5]))
        if agent.poll() is not None:
            problems.append("the agent exited (code %s)" % agent.returncode)
    finally:
        code = stop_agent(agent)
    log_text = scene.log_text()
    if "Traceback" in log_text:
        problems.append("a traceback in the log")
    if code != 0:
        problems.append("exit code %s after SIGTERM" % code)
    assert not problems, "\n".join(problems) + "\n--- agent log (tail) ---\n" + log_text[-6000:]


# -- storage errors at start -----------------------------------------------------------------


def _start_error(street):
    """Run the agent, which should refuse to start: (exit code, stdout, stderr)."""
    agent = subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "--config", str(street.config_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = agent.communicate(timeout=START_ERROR_S)
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=10)
        pytest.fail("the agent started anyway and ran for %d s:\n%s%s" % (START_ERROR_S, out, err))
    return agent.returncode, out, err


def _one_line_problems(code, out, err, must_name, words):
    problems = []
    if code == 0:
        problems.append("exit code 0")
    if "Traceback" in out + err:
        problems.append("a traceback")
    lines = err.strip().splitlines()
    if len(lines) != 1:
        problems.append("%d lines on stderr, not one" % len(lines))
    elif must_name not in lines[0] or not any(w in lines[0].lower() for w in words):
        problems.append("the line does not name %s and say %s" % (must_name, " or ".join(map(repr, words))))
    return problems


def test_read_only_data_dir_at_start_is_one_line(tmp_path, small_filesystem):
    """The filesystem holding data_dir went read-only (as the kernel does after I/O errors)
    with the agent's store on it."""
    from ansim_agent.store import Store
    fs = small_filesystem(FS_BYTES)
    data_dir = fs.path / "data"
    Store(data_dir / "agent.db").close()
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"agent": {"data_dir": json.dumps(str(data_dir))}})
        fs.remount(read_only=True)
        code, out, err = _start_error(street)
    problems = _one_line_problems(code, out, err, str(data_dir), ("read-only", "read only"))
    assert not problems, "\n".join(problems) + "\nexit %s\n--- stdout ---\n%s--- stderr ---\n%s" % (code, out, err)


def test_corrupt_store_at_start_is_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "agent.db").write_bytes(b"this is not an SQLite database, it is garbage\n" * 200)
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port,
                        overrides={"agent": {"data_dir": json.dumps(str(data_dir))}})
        code, out, err = _start_error(street)
    problems = _one_line_problems(code, out, err, str(data_dir / "agent.db"),
                                  ("corrupt", "not a database", "malformed"))
    assert not problems, "\n".join(problems) + "\nexit %s\n--- stdout ---\n%s--- stderr ---\n%s" % (code, out, err)

"""Private mosquitto brokers for tests, simulators and the demo.

Why: the alert path must be tested against the real broker a Raspberry Pi runs, never a
system broker on 1883 that may be absent or shared. Each broker is a child process on a free
loopback port with its own config, log and persistence directory, dies with the process that
started it (PR_SET_PDEATHSIG), and can be restarted on the same port to test outages.
Settings follow ../shared/notes/FEASIBILITY.md: ``max_queued_messages 0`` (mosquitto's
default of 1000 silently drops messages for slow subscribers and bridges), ``user`` set to
the current user when running as root.
"""

import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The broker could not be found or started; the message says what to do."""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary():
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if not found:
        raise BrokerError("mosquitto not found: run `make test` (it installs it) or "
                          "`sudo apt-get install mosquitto`")
    return found


def _die_with_parent():
    """Runs in the child before exec: SIGTERM it when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Bridge:
    """An outgoing bridge from one broker to another (mosquitto ``connection`` section)."""

    def __init__(self, port, topics=(("ansim/#", "both", 1),), host="127.0.0.1", name="bridge"):
        self.host, self.port, self.topics, self.name = host, port, topics, name

    def config_lines(self):
        lines = ["connection %s" % self.name, "address %s:%d" % (self.host, self.port),
                 "cleansession false", "bridge_protocol_version mqttv311",
                 "restart_timeout 1 5", "start_type automatic"]
        lines += ["topic %s %s %d" % (pattern, direction, qos) for pattern, direction, qos in self.topics]
        return lines


class MosquittoBroker:
    """One mosquitto process on loopback. Use as a context manager or call start()/stop().

    ``tls``: a ``pki.TlsFiles`` with the server's certificate: the listener then requires
    client certificates and uses their CN as the MQTT username. ``acl``: lines of an ACL file
    (e.g. ``pattern write ansim/v1/dev/%u/#``). ``bridge``: a ``Bridge`` to another broker.
    ``persistence``: keep messages and sessions across restart().
    """

    def __init__(self, tls=None, acl=None, bridge=None, persistence=False, port=None, workdir=None):
        self.port = port or free_port()
        self.tls, self.acl, self.bridge, self.persistence = tls, acl, bridge, persistence
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ansim-mosquitto-"))
        self.log_path = self.workdir / "mosquitto.log"
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def config(self):
        lines = ["per_listener_settings false", "listener %d 127.0.0.1" % self.port,
                 "max_queued_messages 0", "max_inflight_messages 0",
                 "log_dest file %s" % self.log_path, "log_type error", "log_type warning",
                 "log_type notice", "log_type information", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user %s" % getpass.getuser())
        if self.tls is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["cafile %s" % self.tls.cafile, "certfile %s" % self.tls.certfile,
                      "keyfile %s" % self.tls.keyfile, "require_certificate true",
                      "use_identity_as_username true", "allow_anonymous false"]
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text("\n".join(self.acl) + "\n")
            lines.append("acl_file %s" % acl_file)
        if self.persistence:
            (self.workdir / "data").mkdir(exist_ok=True)
            lines += ["persistence true", "persistence_location %s/" % (self.workdir / "data"),
                      "autosave_interval 1"]
        if self.bridge is not None:
            lines += self.bridge.config_lines()
        return "\n".join(lines) + "\n"

    def start(self):
        binary = mosquitto_binary()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        preexec_fn=_die_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError("mosquitto exited with status %d at start-up: %s"
                                  % (self.process.returncode, self._diagnostics()))
            try:
                socket.create_connection(self.address, timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.005)
        self.stop()
        raise BrokerError("mosquitto did not listen on port %d within %.0f s: %s"
                          % (self.port, READY_TIMEOUT_S, self._diagnostics()))

    def _diagnostics(self):
        err = self.process.stderr.read().decode(errors="replace") if self.process.poll() is not None else ""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return (err + log).strip()[-800:] or "no output"

    def stop(self):
        """Terminate the broker and wait for it; persistence is written on SIGTERM."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()
        self.process = None

    def kill(self):
        """SIGKILL: an outage without a clean shutdown."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process.stderr.close()
            self.process = None

    def restart(self):
        """Stop and start again on the same port with the same config and persistence."""
        self.stop()
        return self.start()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

"""Private mosquitto brokers, and a blocking MQTT client, for tests and demos.

Why: the alert path has to be exercised against a real MQTT broker (a pure-Python broker lost
queued QoS 1 messages, see the feasibility notes), but never against whatever system broker
may be listening on 1883. Each :class:`MosquittoBroker` is a child ``mosquitto`` process on its
own free loopback port, with its config, ACL, log and persistence in its own directory:

- ``max_queued_messages 0``: mosquitto's default of 1000 silently drops messages for a slow or
  absent subscriber, and for bridges; an alert must never be dropped that way.
- ``max_packet_size`` (default :data:`MAX_PACKET_SIZE`, 64 KiB): a client that sends a longer
  packet is disconnected before the broker holds it, so nobody can push a 1 MB message at the
  devices (one once made a streetlight fail with MemoryError). Brokers only the devices and
  the agent's downlinks use can take :data:`DEVICE_MAX_PACKET_SIZE`; ``None``: no cap.
- ``user <current user>`` when run as root: otherwise mosquitto drops to user ``mosquitto`` and
  cannot write its log into our directory.
- The broker gets SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a killed test run
  leaves no orphaned brokers. Linux only; note the signal fires when the *thread* that started
  the broker exits, so start brokers from a long-lived thread (pytest's main thread is).

:class:`SyncClient` wraps paho so that connect, subscribe and publish return only once the
broker has answered (CONNACK, SUBACK, PUBACK): tests wait on the protocol, never on sleeps.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .pki import TlsFiles

NOT_FOUND_MESSAGE = "mosquitto not found: run `make test` (it installs it) or `sudo apt-get install mosquitto`"
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin",)

# Devices authenticate by client certificate; the CN is their username (%u). A device may
# publish and read only below its own topic.
DEVICE_ACL: tuple[str, ...] = (
    "pattern write ansim/v1/dev/%u/#",
    "pattern read ansim/v1/dev/%u/#",
)

# Longest MQTT packet (fixed header included) a broker accepts by default: far above every
# real ansim message (frames <= 64 B, center alerts and walk-home routes a few KB).
MAX_PACKET_SIZE = 65536
# For brokers only devices use (their frames, topics under 40 B): a tighter cap.
DEVICE_MAX_PACKET_SIZE = 1024

_PR_SET_PDEATHSIG = 1
_RUNNING = re.compile(rb"mosquitto version \S+ running")


class BrokerError(RuntimeError):
    """A broker or MQTT client did not behave as needed; the message says what and why."""


class MosquittoNotFound(BrokerError):
    """The ``mosquitto`` binary is not installed."""


class ConnectFailed(BrokerError):
    """The broker refused the client, or the connection broke before CONNACK."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary, from PATH or :data:`SBIN_DIRS`."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(SBIN_DIRS))
    if not found:
        raise MosquittoNotFound(NOT_FOUND_MESSAGE)
    return found


@dataclass(frozen=True)
class Bridge:
    """A bridge from the broker that owns it to a remote broker at ``host:port``.

    ``cleansession`` false keeps the bridge's session (and its queued QoS 1 messages) on both
    sides across reconnects; a short ``restart_timeout`` makes it reconnect quickly after the
    remote restarts. ``name`` must be unique among the bridges into one remote broker.
    """

    host: str
    port: int
    topics: Sequence[str] = ("ansim/#",)
    direction: str = "both"
    qos: int = 1
    name: str = "bridge"
    cleansession: bool = False
    restart_timeout: int = 1


class MosquittoBroker:
    """A private ``mosquitto`` child process on a loopback port; also a context manager.

    ``tls`` makes the single listener TLS with client certificates required, the certificate CN
    being the MQTT username; otherwise the listener is plain and anonymous. ``acl`` lines
    (e.g. :data:`DEVICE_ACL`) go verbatim into an ACL file. ``persistence`` keeps sessions and
    queued messages in ``workdir/persistence`` across :meth:`restart`, saved after every change
    unless ``save_every_change`` is false (then on a clean stop, as Debian's mosquitto does:
    every change written makes the broker the bottleneck of a load test). With no ``workdir`` a
    temporary one is made and removed by :meth:`close`. ``max_packet_size`` (bytes, whole
    packet; ``None`` for none): a client sending a longer packet is disconnected. ``debug_log``
    logs every packet (PUBLISH and PUBACK with their message ids), for tests of ordering.
    ``password_file`` (a mosquitto password file, e.g. the one ``ansim provision`` writes) makes
    the plain listener refuse anonymous clients and check user names and passwords.
    """

    def __init__(self, *, workdir: Path | str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, tls: TlsFiles | None = None,
                 acl: Sequence[str] | None = None, persistence: bool = False,
                 bridges: Sequence[Bridge] = (), startup_timeout: float = 5.0,
                 max_packet_size: int | None = MAX_PACKET_SIZE, save_every_change: bool = True,
                 debug_log: bool = False, password_file: Path | str | None = None) -> None:
        if tls is not None and (tls.certfile is None or tls.keyfile is None):
            raise ValueError("a TLS listener needs certfile and keyfile")
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="ansim-mosquitto-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.acl = tuple(acl) if acl is not None else None
        self.persistence = persistence
        self.save_every_change = save_every_change
        self.debug_log = debug_log
        self.bridges = tuple(bridges)
        self.startup_timeout = startup_timeout
        self.max_packet_size = max_packet_size
        self.password_file = Path(password_file).resolve() if password_file is not None else None
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.output_path = self.workdir / "mosquitto.out"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> MosquittoBroker:
        """Start the broker and return once it is ready (or raise BrokerError with its log tail)."""
        if self._proc is not None:
            raise BrokerError("broker already running")
        binary = find_mosquitto()
        self._write_config()
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.output_path, "ab") as output:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self._wait_ready(log_start)
        return self

    def stop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop the broker and reap it. ``kill`` sends SIGKILL to simulate a crash: with
        persistence, what mosquitto saved after the last change survives."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port with the same config and persistence."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the working directory if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def client(self, **kwargs) -> SyncClient:
        """A connected :class:`SyncClient` for this broker; keyword arguments as :func:`connect_client`."""
        return connect_client(self.host, self.port, **kwargs)

    def wait_bridges(self, timeout: float = 5.0, tls: TlsFiles | None = None) -> None:
        """Block until every bridge of this broker is connected to its remote.

        Reads the retained bridge state mosquitto publishes on
        ``$SYS/broker/connection/<client id>/state`` ("1" = connected), so it needs a client
        allowed to read ``$SYS`` (``tls`` for a TLS listener). Right after the remote restarts
        the state may still read "1" until this broker notices the lost connection.
        """
        pending = {self._bridge_client_id(b) for b in self.bridges}
        deadline = time.monotonic() + timeout
        with self.client(tls=tls, timeout=timeout) as watcher:
            watcher.subscribe("$SYS/broker/connection/+/state")
            while pending:
                try:
                    msg = watcher.next_message(deadline - time.monotonic())
                except TimeoutError:
                    raise BrokerError(f"bridges {sorted(pending)} not connected within {timeout}s\n"
                                      f"{self.log_tail()}") from None
                if msg.payload == b"1":
                    pending.discard(msg.topic.split("/")[3])

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and console output, for error messages."""
        parts = []
        for path in (self.log_path, self.output_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(no broker output)"

    def _wait_ready(self, log_start: int) -> None:
        """Poll until the broker is ready, exits, or the deadline passes.

        Ready means mosquitto logged "running" since ``log_start`` *and* accepts TCP: it opens
        its listening socket before loading the TLS files, so an accepted connection alone
        could come from a broker about to exit on a bad certificate.
        """
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._logged_running(log_start) and self._accepts_tcp():
                return
            try:
                code = self._proc.wait(timeout=0.01)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with code {code}" if code is not None else \
                    f"was not ready within {self.startup_timeout}s"
                raise BrokerError(f"mosquitto on {self.host}:{self.port} {why}\n{self.log_tail()}")

    def _logged_running(self, log_start: int) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(log_start)
                return _RUNNING.search(log.read()) is not None
        except FileNotFoundError:
            return False

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            *self._tls_lines(),
            "max_queued_messages 0",
            # Without it mosquitto's small PUBACKs wait for Nagle (~10 ms on loopback).
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            *(["log_type debug"] if self.debug_log else []),
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if os.geteuid() == 0:
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text("\n".join(self.acl) + "\n")
            lines.append(f"acl_file {acl_path}")
        if self.persistence:
            store = self.workdir / "persistence"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/"]
            if self.save_every_change:  # even stop(kill=True) loses nothing acknowledged; slow under load
                lines += ["autosave_on_changes true", "autosave_interval 1"]
        for bridge in self.bridges:
            lines += self._bridge_lines(bridge)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _tls_lines(self) -> list[str]:
        if self.tls is None and self.password_file is not None:
            return ["allow_anonymous false", f"password_file {self.password_file}"]
        if self.tls is None:
            return ["allow_anonymous true"]
        return [
            f"cafile {self.tls.cafile}",
            f"certfile {self.tls.certfile}",
            f"keyfile {self.tls.keyfile}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
        ]

    def _bridge_client_id(self, bridge: Bridge) -> str:
        # Unique per local broker, so two brokers may bridge into one remote with the same name.
        return f"{bridge.name}.{self.port}"

    def _bridge_lines(self, bridge: Bridge) -> list[str]:
        return [
            f"connection {bridge.name}",
            f"address {bridge.host}:{bridge.port}",
            f"remote_clientid {self._bridge_client_id(bridge)}",
            *(f"topic {topic} {bridge.direction} {bridge.qos}" for topic in bridge.topics),
            f"cleansession {'true' if bridge.cleansession else 'false'}",
            f"restart_timeout {bridge.restart_timeout}",
        ]


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: keep the child's work minimal

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class SyncClient:
    """A paho client whose calls return once the broker has answered; also a context manager.

    Made by :func:`connect_client`. Received messages queue up for :meth:`next_message`; the
    raw paho client is :attr:`paho`. One client is one connection: paho's automatic reconnect
    is off, so a dropped client stays down (:attr:`disconnected` is set) and closes at once.
    """

    def __init__(self, paho: mqtt.Client) -> None:
        self.paho = paho
        self._connack = threading.Event()
        self.disconnected = threading.Event()
        self._connect_result: ReasonCode | None = None
        self._disconnect_reason: object = None
        self._acks: dict[int, object] = {}
        self._acks_changed = threading.Condition()
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_subscribe = self._on_subscribe
        paho.on_publish = self._on_publish
        paho.on_message = lambda _client, _userdata, msg: self._inbox.put(msg)

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes (granted QoS, or e.g. 135 not authorized)."""
        rc, mid = self.paho.subscribe(topic, qos)
        self._check(rc, "subscribe")
        return self._wait_ack(mid, timeout, "SUBACK")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float = 5.0) -> ReasonCode:
        """Publish and return the PUBACK reason code (for QoS 0: once the packet is sent)."""
        info = self.paho.publish(topic, payload, qos, retain)
        self._check(info.rc, "publish")
        return self._wait_ack(info.mid, timeout, "PUBACK")

    def next_message(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        """The next received message; TimeoutError if none arrives within ``timeout``."""
        try:
            return self._inbox.get(timeout=max(timeout, 0))
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout}s") from None

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self, host: str, port: int, timeout: float, connect_kwargs: dict) -> None:
        try:
            self.paho.connect(host, port, **connect_kwargs)
        except OSError as exc:  # includes ssl.SSLError: under TLS 1.2 a refused cert fails here
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        self.paho.loop_start()
        if not self._connack.wait(timeout):
            self.close()
            raise ConnectFailed(f"no CONNACK from {host}:{port} within {timeout}s")
        result = self._connect_result
        if result is None or result.is_failure:
            self.close()
            # Under TLS 1.3 a refused client certificate shows up as a disconnect here.
            why = result if result is not None else f"disconnected ({self._disconnect_reason})"
            raise ConnectFailed(f"{host}:{port} refused the connection: {why}")

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._connect_result = reason_code
        self._connack.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._disconnect_reason = reason_code
        self.disconnected.set()
        self._connack.set()  # wakes a connect still waiting for CONNACK

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        self._ack(mid, list(reason_codes))

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        self._ack(mid, reason_code)

    def _ack(self, mid: int, result: object) -> None:
        with self._acks_changed:
            self._acks[mid] = result
            self._acks_changed.notify_all()

    def _wait_ack(self, mid: int, timeout: float, what: str):
        # The ack may arrive before paho returns the mid to us: results are kept by mid.
        with self._acks_changed:
            if not self._acks_changed.wait_for(lambda: mid in self._acks, timeout):
                raise TimeoutError(f"no {what} for message id {mid} within {timeout}s")
            return self._acks.pop(mid)

    @staticmethod
    def _check(rc: mqtt.MQTTErrorCode, what: str) -> None:
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{what} failed: {mqtt.error_string(rc)}")


def connect_client(host: str, port: int, *, client_id: str = "", tls: TlsFiles | None = None,
                   protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5, clean_start: bool = True,
                   session_expiry: int = 0, timeout: float = 5.0, username: str | None = None,
                   password: str | None = None) -> SyncClient:
    """Connect a :class:`SyncClient` and return once CONNACK says success.

    Raises :class:`ConnectFailed` if the broker refuses (bad or missing certificate, ACL, ...)
    or does not answer within ``timeout``. ``clean_start`` false plus a ``session_expiry``
    (seconds, MQTT v5) resumes a persistent session kept by the broker. ``username`` and
    ``password``: the login for a broker with a ``password_file``.
    """
    v5 = protocol == mqtt.MQTTv5
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                       reconnect_on_failure=False, **({} if v5 else {"clean_session": clean_start}))
    if username is not None:
        paho.username_pw_set(username, password)
    if tls is not None:
        paho.tls_set(ca_certs=str(tls.cafile),
                     certfile=str(tls.certfile) if tls.certfile else None,
                     keyfile=str(tls.keyfile) if tls.keyfile else None)
    connect_kwargs: dict = {}
    if v5:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry
        connect_kwargs = {"clean_start": clean_start, "properties": properties}
    client = SyncClient(paho)
    client._connect(host, port, timeout, connect_kwargs)
    return client

"""A fault run: a stream of bell presses into the Pi's broker while the agent is killed, the
Pi's broker restarted, the Pi rebooted and the center taken away, counted at both ends by
observers of their own (issue 8).

What runs, all on 127.0.0.1:

- the Pi's mosquitto (``local``, with persistence, as Debian configures it) and the center's
  (``center``, with persistence); the agent reaches the center through :class:`_Proxy`, so that
  a *drop* cuts the agent's connection alone while the center's broker keeps everything;
- the real agent, ``python -m ansim_tools.cli agent --config FILE``, a child process;
- ``bells`` simulated bells (:class:`_Link` each): one frame in flight per bell, as the
  firmware does: a bell publishes its next press only after the broker's PUBACK of the
  previous one, and re-sends the same bytes on a new connection when the broker goes away
  before the PUBACK. A press counts as *sent* when the Pi's broker PUBACKed it;
- the center's observer: its own client (persistent session, QoS 1) on every district's
  alert topic; it counts what arrives, and acknowledges every alert once, on its first
  arrival, from a client of its own (an ack counts as *sent* when the center's broker
  PUBACKed it);
- the bells' observer: a client on the Pi's broker (persistent session, QoS 1) on every
  ``ansim/v1/dev/+/down``: each ``center_ack`` frame is verified with the bell's key and
  replay-checked as the bell's guard would (its counter above the last accepted one).

Faults, drawn from the seed (:func:`draw_schedule`), on two lanes that may overlap: the Pi's
(``kill9`` of the agent, ``broker_restart`` of the Pi's broker, ``reboot``: agent and broker
killed together, then the broker and the agent started again) and the center's (``drop``: the
agent's connection cut; ``outage``: the center's broker stopped for N seconds). Brokers stop
with SIGTERM by default, so what a broker PUBACKed is in its persistence file (mosquitto
answers PUBACK before it saves; a SIGKILL of a broker can lose what it acknowledged, a loss
that is mosquitto's, not the agent's): ``broker_kill=True`` kills the Pi's broker with
SIGKILL instead, and :class:`Report` then tells losses that never reached the agent's store
apart from the agent's own.

Brokers are (re)started from the thread that calls :meth:`FaultRun.run` only: a broker gets
SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``); the agent too.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError

from ansim_simulators.fixtures.broker import MosquittoBroker, _die_with_parent
from .street import Street
from ansim_simulators.fixtures.waits import until

KINDS = ("kill9", "broker_restart", "reboot", "drop", "outage")
PI_LANE = ("kill9", "broker_restart", "reboot")
ALERTS_FILTER = "ansim/center/v1/+/alerts/#"
STATE_TOPIC = "ansim/center/v1/agents/%s/state"
ACK_TOPIC = "ansim/center/v1/agents/%s/ack"
DOWN_FILTER = "ansim/v1/dev/+/down"
SESSION_EXPIRY_S = 24 * 3600
EXAMPLES = 8


# -- the schedule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault: ``at`` seconds after the stream starts; ``duration`` is how long the agent
    stays dead after a kill, the Pi stays down in a reboot, or the center in an outage."""

    at: float
    kind: str
    duration: float = 0.0

    def occupies(self):
        """Seconds its lane is busy: the fault, then time for the parts to come back."""
        return self.duration + {"kill9": 0.3, "broker_restart": 1.0, "reboot": 1.5, "drop": 1.0,
                                "outage": 1.5}[self.kind]

    def __str__(self):
        return "%s at %.2f s%s" % (self.kind, self.at, " for %.1f s" % self.duration if self.duration else "")


def draw_schedule(seed, duration, kills=4, broker_restarts=1, reboots=1, drops=1, outages=1,
                  outage_s=(2.0, 6.0)):
    """The faults of one run, drawn from ``seed``: on each lane, the faults in a random order at
    random moments between 5 % and 92 % of ``duration``, never overlapping (each lane's spare
    time is cut at random points between its faults). ValueError when they do not fit."""
    rng = random.Random("faults-%s" % (seed,))
    lanes = {"pi": [], "center": []}
    wanted = [("kill9", kills), ("broker_restart", broker_restarts), ("reboot", reboots),
              ("drop", drops), ("outage", outages)]
    for kind, count in wanted:
        for _ in range(count):
            if kind == "kill9":
                length = rng.uniform(0.0, 0.5)  # until the agent is started again (systemd: 2 s)
            elif kind == "reboot":
                length = rng.uniform(0.5, 2.0)
            elif kind == "outage":
                length = rng.uniform(*outage_s)
            else:
                length = 0.0
            lanes["pi" if kind in PI_LANE else "center"].append(Fault(0.0, kind, round(length, 3)))
    begin, end = 0.05 * duration, 0.92 * duration
    schedule = []
    for name, faults in lanes.items():
        rng.shuffle(faults)
        spare = (end - begin) - sum(f.occupies() for f in faults)
        if spare < 0:
            raise ValueError("%d faults on the %s lane need %.0f s, more than %.0f s of a %.0f s run: "
                             "lengthen the run or ask for fewer" % (len(faults), name, end - begin - spare,
                                                                     end - begin, duration))
        cuts = sorted(rng.uniform(0, spare) for _ in faults)
        busy = 0.0
        for fault, cut in zip(faults, cuts):
            schedule.append(Fault(round(begin + cut + busy, 3), fault.kind, fault.duration))
            busy += fault.occupies()
    return sorted(schedule, key=lambda f: (f.at, f.kind))


def load_schedule(path):
    """The faults a run carried out (its ``faults.json``: ``at``, ``kind`` and, for kill9,
    reboot and outage, ``duration``), to run them again."""
    return [Fault(float(f["at"]), f["kind"], float(f.get("duration", 0.0)))
            for f in json.loads(Path(path).read_text())]


# -- MQTT parts --------------------------------------------------------------------------------


def _connect_props():
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props


class _Conn:
    """One paho connection that never reconnects by itself: it is up, or it is done."""

    def __init__(self, port, client_id):
        self.acks = {}
        self.changed = threading.Condition()
        self.up = False
        self.down = False
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                reconnect_on_failure=False)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        self.port = port

    def open(self, timeout):
        try:
            self.paho.connect("127.0.0.1", self.port, keepalive=10, clean_start=True)
        except OSError:
            return False
        self.paho.loop_start()
        with self.changed:
            self.changed.wait_for(lambda: self.up or self.down, timeout)
            if self.up and not self.down:
                return True
        self.close()
        return False

    def close(self):
        try:
            self.paho.disconnect()
        finally:
            self.paho.loop_stop()

    def _on_connect(self, _c, _u, _f, reason, _p):
        with self.changed:
            self.up = not reason.is_failure
            self.down = reason.is_failure
            self.changed.notify_all()

    def _on_disconnect(self, *_):
        with self.changed:
            self.down = True
            self.changed.notify_all()

    def _on_publish(self, _c, _u, mid, reason, _p):
        with self.changed:
            self.acks[mid] = reason
            self.changed.notify_all()


class _Link:
    """What a bell (or the center's acknowledging desk) does with a broker that may go away:
    :meth:`publish` returns once the broker PUBACKed the message, re-sending the same bytes on
    a new connection as often as needed, until ``deadline``."""

    def __init__(self, port, client_id, stop):
        self.port, self.client_id, self.stop = port, client_id, stop
        self.conn = None
        self.reconnects = 0

    def publish(self, topic, payload, deadline):
        backoff = 0.02
        while time.monotonic() < deadline:
            if self.conn is None:
                conn = _Conn(self.port, self.client_id)
                if not conn.open(min(2.0, max(0.01, deadline - time.monotonic()))):
                    self.stop.wait(backoff)  # the broker is away: try again soon
                    backoff = min(backoff * 2, 0.5)
                    continue
                self.conn, backoff = conn, 0.02
                self.reconnects += 1
            conn = self.conn
            info = conn.paho.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with conn.changed:
                    conn.changed.wait_for(lambda: info.mid in conn.acks or conn.down,
                                          max(0.0, deadline - time.monotonic()))
                    reason = conn.acks.pop(info.mid, None)
                if reason is not None and not reason.is_failure:
                    return True
            self.conn = None  # gone (or refused): the same bytes again on a new connection
            conn.close()
        return False

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Watcher:
    """An observer with a persistent session (clean start off, QoS 1): whatever its broker
    accepted for it reaches it, across the broker's restarts; paho reconnects it."""

    def __init__(self, port, client_id, filters, on_message):
        self.filters = filters
        self.subscribed = threading.Event()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.paho.reconnect_delay_set(0.05, 0.5)
        self.paho.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.paho.on_subscribe = lambda *_: self.subscribed.set()
        self.paho.on_message = lambda _c, _u, msg: on_message(msg)
        self.paho.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=_connect_props())
        self.paho.loop_start()
        until(self.subscribed.is_set, 10, "subscription of %s" % client_id)

    def close(self):
        self.paho.disconnect()
        self.paho.loop_stop()


class _Proxy:
    """A TCP relay from a port of its own to the center's broker: :meth:`cut` drops every
    connection through it (the agent's link to the center breaks; the broker lives on)."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._pairs = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="center-proxy", daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()  # the center is down: as a refused connection
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in pair:
                _shut(sock)
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)

    def cut(self):
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def close(self):
        self._closed = True
        self.cut()
        self.listener.close()
        self._thread.join(2)


def _shut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Agent:
    """The agent as a child process, as systemd runs it; it dies with the harness."""

    def __init__(self, config_path, log_path):
        self.config_path, self.log_path = config_path, log_path
        self.proc = None
        self.starts = 0
        self.unexpected_exits = []  # (time, exit code): the agent ended without being killed

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "--config",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(os.getpid()))
        self.starts += 1

    def kill9(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def check(self, now):
        """Start it again if it ended by itself (systemd's Restart=always); note the exit."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append((now, self.proc.returncode))
            self.start()

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines=15):
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the report --------------------------------------------------------------------------------


@dataclass
class Happened:
    """A fault as it was carried out: ``at`` seconds after the stream started."""

    at: float
    kind: str
    detail: str = ""
    ended: float = 0.0
    duration: float = 0.0  # as scheduled


@dataclass
class Report:
    seed: object
    duration: float
    rate: float
    bells: int
    faults: list = field(default_factory=list)  # Happened
    sent: int = 0                 # presses PUBACKed by the Pi's broker
    unsent: list = field(default_factory=list)   # presses a bell could not hand over by the end
    received: int = 0             # unique alert ids of those presses at the center
    arrivals: int = 0             # every arrival of those alerts at the center
    lost: list = field(default_factory=list)
    lost_not_stored: list = field(default_factory=list)  # lost and not in the agent's store either
    duplicates: int = 0           # arrivals beyond the first, by alert id
    redelivered: int = 0          # of those, the center broker's redeliveries to its observer (DUP)
    out_of_order: int = 0
    out_of_order_by_device: dict = field(default_factory=dict)
    out_of_order_examples: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)  # press alert ids at the center no bell had sent
    other_alerts: dict = field(default_factory=dict)  # alerts without a counter (device_offline...): type -> n
    escalations: int = 0
    acks_sent: int = 0            # acks PUBACKed by the center's broker
    acks_relayed: int = 0         # of those, a center_ack frame the bell would accept reached it
    acks_not_relayed: list = field(default_factory=list)
    acks_refused: list = field(default_factory=list)  # center_acks a bell refuses (counter not above)
    down_counter_reused: int = 0  # two different frames to one bell with the same counter
    center_ack_frames: int = 0
    agent_starts: int = 0
    agent_exits: list = field(default_factory=list)  # (at, code) exits nobody caused
    attribution: dict = field(default_factory=dict)  # problem -> {fault: count}
    stream_s: float = 0.0
    last_fault_s: float = 0.0
    drain_s: float | None = None  # from the end of the stream or of the last fault, the later, to all in
    drained: bool = False
    total_s: float = 0.0
    workdir: str = ""

    @property
    def ok(self):
        return (self.drained and not self.lost and not self.out_of_order and not self.acks_not_relayed
                and not self.unsent and not self.agent_exits and not self.down_counter_reused)

    def summary(self):
        kinds = {}
        for fault in self.faults:
            kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
        lines = [
            "fault run seed=%s: %.0f s at %.0f presses/s from %d bells; faults: %s" % (
                self.seed, self.duration, self.rate, self.bells,
                ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())) or "none"),
            "  sent (PUBACKed by the Pi's broker): %d%s" % (
                self.sent, "; NOT handed over by the end: %d %s" % (len(self.unsent), _few(self.unsent))
                if self.unsent else ""),
            "  received at the center (unique):    %d" % self.received,
            "  lost:                               %d %s" % (len(self.lost), _few(self.lost)),
        ]
        if self.lost:
            lines.append("    of which never in the agent's store: %d %s" % (len(self.lost_not_stored),
                                                                           _few(self.lost_not_stored)))
        lines += [
            "  duplicates (by alert id):           %d (the center broker's redeliveries: %d)" % (
                self.duplicates, self.redelivered),
            "  out of order (first arrivals):      %d %s" % (self.out_of_order, _few(self.out_of_order_examples)),
        ]
        if self.out_of_order:
            lines.append("    by device: %s" % ", ".join("%s %d" % kv for kv in sorted(self.out_of_order_by_device.items())))
        if self.unexpected:
            lines.append("  at the center but never sent:       %d %s" % (len(self.unexpected), _few(self.unexpected)))
        if self.other_alerts:
            lines.append("  other alerts (not counted above):   %s" % ", ".join(
                "%s %d" % kv for kv in sorted(self.other_alerts.items())))
        lines += [
            "  acks sent (PUBACKed by the center): %d" % self.acks_sent,
            "  acks relayed to the bell:           %d (center_ack frames seen: %d)" % (
                self.acks_relayed, self.center_ack_frames),
            "  acks not relayed:                   %d %s" % (len(self.acks_not_relayed), _few(self.acks_not_relayed)),
        ]
        if self.acks_refused:
            lines.append("  center_acks a bell refuses (stale counter): %d %s" % (len(self.acks_refused),
                                                                                _few(self.acks_refused)))
        if self.down_counter_reused:
            lines.append("  DOWN COUNTER REUSED for different frames: %d" % self.down_counter_reused)
        if self.escalations:
            lines.append("  escalations: %d" % self.escalations)
        lines.append("  agent started %d times; exits nobody caused: %s" % (
            self.agent_starts, ", ".join("code %s at %.1f s" % (c, t) for t, c in self.agent_exits) or "none"))
        for problem, faults in self.attribution.items():
            lines.append("  %s, by the fault nearest before it went wrong: %s" % (
                problem, ", ".join("%s: %d" % kv for kv in sorted(faults.items(), key=lambda kv: -kv[1]))))
        drain = ("%.1f s" % self.drain_s) if self.drain_s is not None else "NOT DRAINED"
        lines.append("  timings: stream %.1f s, last fault over at %.1f s, drain after both %s, total %.1f s" % (
            self.stream_s, self.last_fault_s, drain, self.total_s))
        lines.append("  faults: " + "; ".join("%s@%.1f%s" % (f.kind, f.at, "(%s)" % f.detail if f.detail else "")
                                              for f in self.faults))
        lines.append("  workdir: %s" % self.workdir)
        lines.append("  verdict: %s" % ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _few(items):
    items = list(items)
    if not items:
        return ""
    return "[%s%s]" % (", ".join(str(i) for i in items[:EXAMPLES]), ", ..." if len(items) > EXAMPLES else "")


def _is_press(alert_id):
    """An alert raised by a frame (``{device}-{counter}``), not an availability event."""
    _, _, counter = alert_id.partition("-")
    return counter.isdigit()


def _alert_key(alert_id):
    device, _, counter = alert_id.partition("-")
    return device, int(counter) if counter.isdigit() else -1


# -- the run -----------------------------------------------------------------------------------


class FaultRun:
    """One seeded run; :meth:`run` returns a :class:`Report`.

    ``kills`` ... ``outages``: how many faults of each kind (:func:`draw_schedule`);
    ``outage_s``: the (shortest, longest) center outage. ``ack_status``: what the center's
    acknowledgements say (CENTER_API.md: received, dispatched, resolved or test-ok).
    ``drain_timeout``: how long after the last fault everything may take to arrive.
    ``broker_kill``: SIGKILL the Pi's broker in restarts and reboots (default SIGTERM).
    ``schedule``: these faults instead of drawn ones (:func:`load_schedule` reads a run's
    ``faults.json``, to replay it).
    """

    def __init__(self, seed, duration=30.0, rate=290.0, bells=4, kills=4, broker_restarts=1, reboots=1,
                 drops=1, outages=1, outage_s=(2.0, 6.0), ack_status="received", drain_timeout=90.0,
                 broker_kill=False, workdir=None, escalation_s=3600, log=None, schedule=None):
        self.seed, self.duration, self.rate, self.bells = seed, float(duration), float(rate), int(bells)
        self.schedule = sorted(schedule, key=lambda f: f.at) if schedule is not None else \
            draw_schedule(seed, duration, kills, broker_restarts, reboots, drops, outages, outage_s)
        self.ack_status, self.drain_timeout, self.broker_kill = ack_status, drain_timeout, broker_kill
        self.escalation_s = escalation_s
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ansim-faults-"))
        self.log = log or (lambda message: None)
        self._rng = random.Random("run-%s" % (seed,))
        self._lock = threading.Lock()
        self._stop = threading.Event()        # everything ends
        self._stream_stop = threading.Event()  # the bells stop pressing
        self._sent = {}          # hex -> [(counter, PUBACK time)]
        self._unsent = []        # alert ids a bell could not hand over
        self._arrivals = []      # (alert_id, time, topic, dup)
        self._first = {}         # alert_id -> first arrival time (district topic)
        self._births = []
        self._acks = queue.Queue()
        self._acks_sent = {}     # alert_id -> PUBACK time
        self._downs = {}         # hex -> {counter: (kind, fields, bytes)}
        self._guard = {}         # hex -> last down counter a bell would have accepted
        self._relayed = {}       # alert_id -> time of the first acceptable center_ack
        self._refused = []
        self._reused = 0
        self._ack_frames = 0
        self._down_log = []      # (time, hex, counter, kind, fields, fresh): what the bells' observer saw
        self.happened = []
        self.t0 = None

    def _now(self):
        return time.monotonic() - self.t0 if self.t0 is not None else 0.0

    # observers (paho threads) ---------------------------------------------------------------

    def _on_center(self, msg):
        if msg.topic.endswith("/state"):
            with self._lock:
                self._births.append(json.loads(msg.payload))
            return
        try:
            alert = json.loads(msg.payload)
            alert_id, kind = alert["alert_id"], alert.get("type")
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._arrivals.append((alert_id, self._now(), msg.topic, bool(msg.dup), kind))
            district = "/%s/alerts/" % self.street_district in msg.topic
            first = district and alert_id not in self._first
            if first:
                self._first[alert_id] = self._now()
        if first:
            self._acks.put(alert_id)

    def _on_down(self, msg):
        try:
            _, device_id, _ = topics.parse(msg.topic)
        except FrameError:
            return
        hex_id = "%08x" % device_id
        keys = self._keys.get(hex_id)
        if keys is None:
            return
        try:
            frame = frames.unpack(msg.payload, keys)
        except FrameError:
            return
        payload = bytes(msg.payload)
        with self._lock:
            seen = self._downs.setdefault(hex_id, {})
            if frame.counter in seen:
                if seen[frame.counter][2] != payload:
                    self._reused += 1
                return  # the same frame again (a redelivery): the bell drops it as a replay
            seen[frame.counter] = (frame.kind, frame.fields, payload)
            fresh = frame.counter > self._guard.get(hex_id, 0)
            if fresh:
                self._guard[hex_id] = frame.counter
            self._down_log.append((self._now(), hex_id, frame.counter, frame.kind, frame.fields, fresh))
            if frame.kind != "center_ack":
                return
            self._ack_frames += 1
            alert_id = "%s-%d" % (hex_id, frame.fields["acked_counter"])
            if frame.fields["status"] != self.ack_status:
                return
            if fresh:
                self._relayed.setdefault(alert_id, self._now())
            else:
                self._refused.append(("%s(down %d)" % (alert_id, frame.counter), alert_id, self._now()))

    # bells and the acknowledging desk ----------------------------------------------------------

    def _bell(self, bell, index, port, hard_deadline):
        link = _Link(port, "bell-" + bell.hex_id, self._stop)
        keys = DeviceKeys(bell.key)
        topic = topics.topic(bell.device_id, topics.UP)
        period = self.bells / self.rate
        next_at = time.monotonic() + period * index / self.bells
        counter = 0
        sent = self._sent[bell.hex_id]
        try:
            while not self._stream_stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stream_stop.wait(delay):  # the pace of the presses
                    break
                counter += 1
                frame = frames.build_plain("bell_press", {"button": 1}, keys, bell.device_id, counter)
                if not link.publish(topic, frame, hard_deadline):
                    with self._lock:
                        self._unsent.append("%s-%d" % (bell.hex_id, counter))
                    break
                sent.append((counter, self._now()))
                next_at = max(next_at + period, time.monotonic() - period)
        finally:
            link.close()

    def _desk(self, port, agent_id, hard_deadline):
        link = _Link(port, "center-desk", self._stop)
        try:
            while not self._stop.is_set():
                try:
                    alert_id = self._acks.get(timeout=0.1)
                except queue.Empty:
                    continue
                body = json.dumps({"alert_id": alert_id, "status": self.ack_status})
                if link.publish(ACK_TOPIC % agent_id, body, hard_deadline):
                    with self._lock:
                        self._acks_sent[alert_id] = self._now()
        finally:
            link.close()

    # the faults ------------------------------------------------------------------------------

    def _actions(self):
        """(at, name, fault) steps: a fault that lasts is two steps, its start and its end."""
        steps = []
        for fault in self.schedule:
            steps.append((fault.at, "begin", fault))
            if fault.kind in ("kill9", "reboot", "outage"):
                steps.append((fault.at + fault.duration, "end", fault))
        return sorted(steps, key=lambda s: (s[0], s[1] == "begin"))

    def _do(self, step, fault, local, center, proxy, agent):
        kind, now = fault.kind, self._now()
        if step == "begin":
            record = Happened(round(now, 2), kind, duration=fault.duration)
            self.happened.append(record)
            self._open[fault] = record
            if kind == "kill9":
                agent.kill9()
            elif kind == "broker_restart":
                local.restart(kill=self.broker_kill)
                record.ended = round(self._now(), 2)
            elif kind == "reboot":
                agent.kill9()
                local.stop(kill=self.broker_kill)
            elif kind == "drop":
                record.detail = "%d cut" % proxy.cut()
                record.ended = record.at
            elif kind == "outage":
                center.stop()
                record.detail = "%.1f s" % fault.duration
        else:
            record = self._open.pop(fault)
            if kind == "kill9":
                agent.start()
            elif kind == "reboot":
                local.start()
                agent.start()
                record.detail = "down %.1f s" % fault.duration
            elif kind == "outage":
                center.start()
            record.ended = round(self._now(), 2)
        self.log("%7.2f s  %s %s" % (now, step, fault))

    def run(self):
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._open = {}
        watchers, threads = [], []
        agent = None
        # Brokers save on a clean stop, as Debian's do; after every change only when they are killed.
        with MosquittoBroker(workdir=self.workdir / "pi-broker", persistence=True,
                             save_every_change=self.broker_kill) as local, \
                MosquittoBroker(workdir=self.workdir / "center-broker", persistence=True,
                                save_every_change=False) as center:
            proxy = _Proxy(center.port)
            try:
                street = Street(self.workdir / "street", center_port=proxy.port, local_port=local.port,
                                bells=self.bells, lights=0, wearables=0,
                                overrides={"center": {"escalation_s": str(self.escalation_s)}})
                self.street_district = "jung-gu"
                self._keys = {b.hex_id: DeviceKeys(b.key) for b in street.bells}
                self._sent = {b.hex_id: [] for b in street.bells}
                watchers.append(_Watcher(center.port, "faults-center-observer",
                                         [ALERTS_FILTER, STATE_TOPIC % street.agent_id], self._on_center))
                watchers.append(_Watcher(local.port, "faults-bell-observer", [DOWN_FILTER], self._on_down))
                agent = _Agent(street.config_path, self.workdir / "agent.log")
                agent.start()
                until(lambda: any(b.get("state") == "online" for b in list(self._births)), 30,
                      "the agent's birth certificate at the center")
                hard_deadline = time.monotonic() + self.duration + self.drain_timeout + 60
                self.t0 = time.monotonic()
                for index, bell in enumerate(street.bells):
                    threads.append(threading.Thread(target=self._bell, args=(bell, index, local.port, hard_deadline),
                                                    name="bell-" + bell.hex_id, daemon=True))
                threads.append(threading.Thread(target=self._desk, args=(center.port, street.agent_id,
                                                                          hard_deadline), name="desk", daemon=True))
                for thread in threads:
                    thread.start()
                for at, step, fault in self._actions():
                    self._wait_until(at, agent)
                    self._do(step, fault, local, center, proxy, agent)
                self._wait_until(self.duration, agent)
                self._stream_stop.set()
                for thread in threads[:-1]:
                    thread.join(max(1.0, hard_deadline - time.monotonic()))
                stream_s = self._now()
                last_fault = max([h.ended for h in self.happened] + [0.0])
                drained = self._drain(agent)
                drain_s = round(self._now() - max(stream_s, last_fault), 2) if drained else None
            finally:
                self._stop.set()
                self._stream_stop.set()
                if agent is not None:
                    agent.stop()
                for thread in threads:
                    thread.join(5)
                for watcher in watchers:
                    watcher.close()
                proxy.close()
        report = self._report(street, stream_s, last_fault, drained, drain_s, agent)
        report.total_s = round(time.monotonic() - started, 1)
        return report

    def _wait_until(self, at, agent):
        """Until ``at`` seconds into the stream, keeping the agent running as systemd would."""
        while True:
            agent.check(self._now())
            left = at - self._now()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.05))

    def _complete(self, agent):
        agent.check(self._now())
        with self._lock:
            if self._unsent:
                return True  # a bell gave up: nothing more will come of it
            for hex_id, sent in self._sent.items():
                for counter, _ in sent:
                    if "%s-%d" % (hex_id, counter) not in self._first:
                        return False
            if not self._acks.empty() or len(self._acks_sent) < len(self._first):
                return False
            return all(alert_id in self._relayed for alert_id in self._acks_sent if _is_press(alert_id))

    def _drain(self, agent):
        try:
            until(lambda: self._complete(agent), self.drain_timeout, "every alert at the center and every ack relayed")
            return True
        except AssertionError:
            return False

    # counting --------------------------------------------------------------------------------

    def _report(self, street, stream_s, last_fault, drained, drain_s, agent):
        r = Report(self.seed, self.duration, self.rate, self.bells, faults=list(self.happened),
                   workdir=str(self.workdir), stream_s=round(stream_s, 1), last_fault_s=round(last_fault, 1),
                   drained=drained, drain_s=drain_s, agent_starts=agent.starts,
                   agent_exits=[(round(t, 1), c) for t, c in agent.unexpected_exits])
        with self._lock:
            sent = {"%s-%d" % (h, c): t for h, s in self._sent.items() for c, t in s}
            arrivals = list(self._arrivals)
            first_all = dict(self._first)
            acks_sent = dict(self._acks_sent)
            relayed = dict(self._relayed)
            r.unsent = list(self._unsent)
            r.acks_refused = [text for text, _, _ in self._refused]
            refused_at = {}
            for _, alert_id, t in self._refused:
                refused_at.setdefault(alert_id, t)
            r.down_counter_reused = self._reused
            r.center_ack_frames = self._ack_frames
        district = "/%s/alerts/" % self.street_district
        first = {a: t for a, t in first_all.items() if _is_press(a)}
        for alert_id, _, topic, _, kind in arrivals:
            if district in topic and not _is_press(alert_id) and first_all.get(alert_id) is not None:
                r.other_alerts[kind] = r.other_alerts.get(kind, 0) + 1
                first_all[alert_id] = None  # count each once
        self._dump(sent, arrivals)
        r.sent = len(sent)
        r.received = len(set(first) & set(sent))
        r.lost = sorted(set(sent) - set(first), key=_alert_key)
        r.unexpected = sorted(set(first) - set(sent), key=_alert_key)
        counted = [a for a in arrivals if district in a[2] and _is_press(a[0])]
        r.arrivals = len(counted)
        r.duplicates = len(counted) - len(first)
        seen = set()
        for alert_id, _, _, dup, _ in counted:
            if alert_id in seen and dup:
                r.redelivered += 1
            seen.add(alert_id)
        r.escalations = len([a for a in arrivals if district not in a[2]])
        highest = {}
        late = []
        for alert_id, at in first.items():  # in the order the observer got them
            device, counter = _alert_key(alert_id)
            if counter < highest.get(device, (0, None))[0]:
                late.append((alert_id, at, highest[device]))
                r.out_of_order_by_device[device] = r.out_of_order_by_device.get(device, 0) + 1
            else:
                highest[device] = (counter, alert_id)
        r.out_of_order = len(late)
        r.out_of_order_examples = ["%s after %s" % (a, h[1]) for a, _, h in late[:EXAMPLES]]
        acks_sent = {a: t for a, t in acks_sent.items() if _is_press(a)}
        r.acks_sent = len(acks_sent)
        r.acks_relayed = len(set(acks_sent) & set(relayed))
        r.acks_not_relayed = sorted(set(acks_sent) - set(relayed), key=_alert_key)
        if r.lost:
            stored = _in_store(street.directory / "data" / "agent.db", r.lost)
            r.lost_not_stored = [a for a in r.lost if a not in stored]
        attribution = {}
        if r.lost:
            attribution["lost"] = self._attribute([sent[a] for a in r.lost])
        if late:
            attribution["out of order"] = self._attribute([at for _, at, _ in late])
        never = [a for a in r.acks_not_relayed if a not in refused_at]
        if never:
            attribution["acks never relayed"] = self._attribute([acks_sent[a] for a in never])
        stale = [refused_at[a] for a in r.acks_not_relayed if a in refused_at]
        if stale:
            attribution["acks relayed stale (the bell refuses them)"] = self._attribute(stale, after=False)
        r.attribution = attribution
        return r

    def _dump(self, sent, arrivals):
        """What each observer saw, one JSON object a line, in the workdir: for finding causes."""
        with open(self.workdir / "sent.jsonl", "w") as out:
            for alert_id, t in sorted(sent.items(), key=lambda kv: kv[1]):
                out.write(json.dumps({"t": round(t, 4), "alert_id": alert_id}) + "\n")
        with open(self.workdir / "center.jsonl", "w") as out:
            for alert_id, t, topic, dup, kind in arrivals:
                out.write(json.dumps({"t": round(t, 4), "alert_id": alert_id, "topic": topic, "dup": dup,
                                      "type": kind}) + "\n")
        with open(self.workdir / "down.jsonl", "w") as out:
            with self._lock:
                down = list(self._down_log)
            for t, hex_id, counter, kind, fields, fresh in down:
                out.write(json.dumps({"t": round(t, 4), "device": hex_id, "counter": counter, "kind": kind,
                                      "fields": fields, "fresh": fresh}) + "\n")
        with open(self.workdir / "acks.jsonl", "w") as out:
            with self._lock:
                acks = sorted(self._acks_sent.items(), key=lambda kv: kv[1])
            for alert_id, t in acks:
                out.write(json.dumps({"t": round(t, 4), "alert_id": alert_id}) + "\n")
        (self.workdir / "faults.json").write_text(json.dumps([h.__dict__ for h in self.happened], indent=1))

    def _attribute(self, times, after=True):
        """{fault: count}: for each problem's time (a PUBACK, an arrival), the first fault that
        began after it, within 3 s (the alert was on its way when it struck), else (or with
        ``after`` false: for what was seen going wrong) the last one before it."""
        counts = {}
        window = 3.0 if after else -1.0
        for t in times:
            after = [h for h in self.happened if t <= h.at <= t + window]
            before = [h for h in self.happened if h.at < t]
            if after:
                name = "%s@%.1f (%.2f s after)" % (after[0].kind, after[0].at, after[0].at - t)
            elif before:
                name = "%s@%.1f" % (before[-1].kind, before[-1].at)
            else:
                name = "no fault"
            key = name.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


def _in_store(db_path, alert_ids):
    """The ids among ``alert_ids`` that the agent's store holds (read-only, after the run)."""
    if not Path(db_path).exists():
        return set()
    db = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    try:
        found = set()
        ids = list(alert_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            found.update(row[0] for row in db.execute(
                "SELECT alert_id FROM alerts WHERE alert_id IN (%s)" % ",".join("?" * len(chunk)), chunk))
        return found
    finally:
        db.close()

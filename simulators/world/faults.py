"""A fault run: a stream of bell presses into the Pi's broker while the agent is killed, the
Pi's broker restarted, the Pi rebooted and the center taken away, counted at both ends by
observers of their own (issue 8). The faults come from ``fault_schedule``; what was counted
goes into a ``fault_report.Report``.

What runs, all on 127.0.0.1:

- the Pi's mosquitto (``local``, with persistence, as Debian configures it) and the center's
  (``center``, with persistence); the agent reaches the center through a :class:`TcpRelay`,
  so that a *drop* cuts the agent's connection alone while the center's broker keeps
  everything;
- the real agent as a child process (:class:`AgentProcess`);
- ``bells`` simulated bells, a ``fault_clients.Link`` each: one frame in flight per bell, as
  the firmware does. A press counts as *sent* when the Pi's broker PUBACKed it;
- the center's observer: its own client (persistent session, QoS 1) on every district's
  alert topic; it counts what arrives, and acknowledges every alert once, on its first
  arrival, from a client of its own (an ack counts as *sent* when the center's broker
  PUBACKed it);
- the bells' observer: a client on the Pi's broker (persistent session, QoS 1) on every
  ``ansim/v1/dev/+/down``: each ``center_ack`` frame is verified with the bell's key and
  replay-checked as the bell's guard would (its counter above the last accepted one).

Faults strike on the Pi's lane (``kill9``, ``broker_restart``, ``reboot``) and on the
center's (``drop``, ``outage``), which may overlap. Brokers stop with SIGTERM by default, so
what a broker PUBACKed is in its persistence file (mosquitto answers PUBACK before it saves; a
SIGKILL of a broker can lose what it acknowledged, a loss that is mosquitto's, not the
agent's): ``broker_kill=True`` kills the Pi's broker with SIGKILL instead, and the report then
tells losses that never reached the agent's store apart from the agent's own.

Brokers are (re)started from the thread that calls :meth:`FaultRun.run` only: a broker gets
SIGTERM when the thread that started it ends (``PR_SET_PDEATHSIG``); the agent too.
"""

import json
import queue
import tempfile
import threading
import time
from pathlib import Path

from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError

from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.fixtures.waits import until

from .agent_process import AgentProcess
from .fault_clients import Link, Watcher
from .fault_report import EXAMPLES, Happened, Report, alert_key, in_agent_store, is_press
from .fault_schedule import draw_schedule
from .street import Street
from .tcp_relay import TcpRelay

ALERTS_FILTER = "ansim/center/v1/+/alerts/#"
STATE_TOPIC = "ansim/center/v1/agents/%s/state"
ACK_TOPIC = "ansim/center/v1/agents/%s/ack"
DOWN_FILTER = "ansim/v1/dev/+/down"


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
        link = Link(port, "bell-" + bell.hex_id, self._stop)
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
        link = Link(port, "center-desk", self._stop)
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
            proxy = TcpRelay(center.port)
            try:
                street = Street(self.workdir / "street", center_port=proxy.port, local_port=local.port,
                                bells=self.bells, lights=0, wearables=0,
                                overrides={"center": {"escalation_s": str(self.escalation_s)}})
                self.street_district = "jung-gu"
                self._keys = {b.hex_id: DeviceKeys(b.key) for b in street.bells}
                self._sent = {b.hex_id: [] for b in street.bells}
                watchers.append(Watcher(center.port, "faults-center-observer",
                                        [ALERTS_FILTER, STATE_TOPIC % street.agent_id], self._on_center))
                watchers.append(Watcher(local.port, "faults-bell-observer", [DOWN_FILTER], self._on_down))
                agent = AgentProcess(street.config_path, self.workdir / "agent.log")
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
            return all(alert_id in self._relayed for alert_id in self._acks_sent if is_press(alert_id))

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
        first = {a: t for a, t in first_all.items() if is_press(a)}
        for alert_id, _, topic, _, kind in arrivals:
            if district in topic and not is_press(alert_id) and first_all.get(alert_id) is not None:
                r.other_alerts[kind] = r.other_alerts.get(kind, 0) + 1
                first_all[alert_id] = None  # count each once
        self._dump(sent, arrivals)
        r.sent = len(sent)
        r.received = len(set(first) & set(sent))
        r.lost = sorted(set(sent) - set(first), key=alert_key)
        r.unexpected = sorted(set(first) - set(sent), key=alert_key)
        counted = [a for a in arrivals if district in a[2] and is_press(a[0])]
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
            device, counter = alert_key(alert_id)
            if counter < highest.get(device, (0, None))[0]:
                late.append((alert_id, at, highest[device]))
                r.out_of_order_by_device[device] = r.out_of_order_by_device.get(device, 0) + 1
            else:
                highest[device] = (counter, alert_id)
        r.out_of_order = len(late)
        r.out_of_order_examples = ["%s after %s" % (a, h[1]) for a, _, h in late[:EXAMPLES]]
        acks_sent = {a: t for a, t in acks_sent.items() if is_press(a)}
        r.acks_sent = len(acks_sent)
        r.acks_relayed = len(set(acks_sent) & set(relayed))
        r.acks_not_relayed = sorted(set(acks_sent) - set(relayed), key=alert_key)
        if r.lost:
            stored = in_agent_store(street.directory / "data" / "agent.db", r.lost)
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

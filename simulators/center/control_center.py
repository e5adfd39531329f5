"""A control-center simulator: the far end of the agent's uplink, for tests, the demo and testers.

Why: the agent's contract with the CCTV control center (edge_agent/CENTER_API.md) has rules
that only show from the center's side: deduplicate alerts by ``alert_id`` (the same event
arrives through several radios, several agents, and again after a crash), alerts of one device
arrive in counter order, birth and death certificates tell which agents are alive (the latest
``session`` wins over a stale retained one), and acknowledgements must go back to the agent in
time or the alert escalates to the citywide center. Tests that subscribe with a bare MQTT client
re-implement a little of this each time, and none of it is checked the way a center would.
:class:`ControlCenter` does it once, against a real broker, over the same MQTT v5 / QoS 1 (and
TLS with a client certificate) that a center uses.

Threads: paho's network thread only records what arrives (under one condition); a dispatcher
thread runs the ``on_alert`` / ``on_state`` hooks and sends acknowledgements, so a hook may call
:meth:`ControlCenter.ack` (which waits for the broker's PUBACK) without deadlocking paho. Every
``wait_for*`` waits on that condition with a deadline.

Example::

    with ControlCenter("127.0.0.1", port, auto_ack="received") as center:
        center.wait_for(1)                      # one distinct alert arrived
        center.wait_for_ack("00020001-1")       # ... and its ack was PUBACKed
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.reasoncodes import ReasonCode

from ansim_simulators.fixtures.broker import BrokerError, SyncClient, connect_client
from ansim_simulators.fixtures.pki import TlsFiles

log = logging.getLogger("ansim.simulators.center")

ROOT = "ansim/center/v1/"
ALERTS_FILTER = ROOT + "+/alerts/#"
STATE_FILTER = ROOT + "agents/+/state"
ACK_STATUSES = ("received", "dispatched", "resolved", "test-ok")

# The mosquitto ACL of CENTER_API.md for agents (username = certificate CN = agent id). The
# alerts rule is a ``pattern``: a ``topic`` line before any ``user`` line binds anonymous
# clients only, and every agent has a username.
AGENT_ACL: tuple[str, ...] = (
    "pattern write ansim/center/v1/agents/%u/state",
    "pattern read ansim/center/v1/agents/%u/ack",
    "pattern read ansim/center/v1/agents/%u/monitor",
    "pattern write ansim/center/v1/+/alerts/#",
    "pattern readwrite ansim/center/v1/+/accepted/#",
    "pattern write ansim/center/v1/+/lights/#",
    "pattern write ansim/center/v1/+/heard/#",
)


def center_acl(center_cn: str) -> list[str]:
    """:data:`AGENT_ACL` plus what the center's own identity ``center_cn`` needs: read every
    alert and certificate, write acknowledgements and walk-home monitoring requests, and read
    those too (every center client, e.g. each operator's console, follows what the others sent;
    an agent still reads only its own)."""
    return [*AGENT_ACL, "user %s" % center_cn,
            "topic read %s" % ALERTS_FILTER, "topic read %s" % STATE_FILTER, "topic read %s+/lights/#" % ROOT,
            "topic read %s+/heard/#" % ROOT,
            "topic write %sagents/+/ack" % ROOT, "topic write %sagents/+/monitor" % ROOT,
            "topic read %sagents/+/ack" % ROOT, "topic read %sagents/+/monitor" % ROOT]


def ack_topic(agent_id: str) -> str:
    return "%sagents/%s/ack" % (ROOT, agent_id)


def monitor_topic(agent_id: str) -> str:
    return "%sagents/%s/monitor" % (ROOT, agent_id)


@dataclass
class CenterAlert:
    """One alert id as the center knows it. ``body`` is the first copy that arrived; ``copies``
    counts arrivals per center segment (the district, the fallback, ...); ``agents`` lists the
    agents that delivered a copy, first first; ``acks`` the acknowledgements sent as
    ``(status, agent_id, PUBACK reason code)``."""

    alert_id: str
    body: dict
    topic: str
    center: str
    first_seen: float
    copies: dict[str, int] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    escalation: dict | None = None
    acks: list[tuple[str, str, ReasonCode]] = field(default_factory=list)
    status: str | None = None  # the latest status the center gave, relayed to late agents

    @property
    def device_id(self) -> str:
        return self.alert_id.split("-", 1)[0]

    @property
    def type(self) -> str:
        return self.body.get("type")

    @property
    def agent_id(self) -> str | None:
        return self.agents[0] if self.agents else None

    @property
    def duplicates(self) -> int:
        """Arrivals beyond the first on each center's topic (a re-send, another agent, ...)."""
        return sum(n - 1 for n in self.copies.values())

    @property
    def escalated(self) -> bool:
        return self.escalation is not None

    @property
    def acked(self) -> bool:
        """True once the broker PUBACKed an acknowledgement of this alert."""
        return any(not rc.is_failure for _, _, rc in self.acks)


@dataclass
class AgentState:
    """An agent's latest birth or death certificate (``state`` is "online" or "offline")."""

    agent_id: str
    state: str
    session: int
    site: str | None
    at: float | None
    certificate: dict


@dataclass(frozen=True)
class Arrival:
    """One alert message as it arrived, for the ``on_alert`` hook."""

    topic: str
    center: str        # the topic's center segment: the district, the fallback or another
    body: dict
    duplicate: bool    # this alert id had arrived on this center's topic before
    alert: CenterAlert


class CenterDisconnected(BrokerError):
    """The simulator lost its connection to the broker (it does not reconnect)."""


class ControlCenter:
    """A control center on the center's broker at ``host:port``; also a context manager.

    ``tls``: the center's own client certificate (:class:`~ansim_simulators.fixtures.pki.TlsFiles`) for
    a TLS broker. ``district`` / ``fallback``: the center segments it answers for and sees
    escalations on. ``auto_ack``: None, a status (e.g. "received") for every alert arriving on
    the district's topic, or ``callable(body) -> status or None``; sent ``ack_delay_s`` after
    the alert's first arrival. ``on_alert(Arrival)`` and ``on_state(AgentState)`` run on the
    simulator's dispatcher thread, in arrival order.

    Once an alert was acknowledged, a copy from an agent that has not had the acknowledgement
    (two agents heard one press) gets the latest status too: otherwise that agent escalates an
    alert the center already handles.
    """

    def __init__(self, host: str, port: int, tls: TlsFiles | None = None, district: str = "jung-gu",
                 fallback: str = "citywide", auto_ack: str | Callable[[dict], str | None] | None = None,
                 ack_delay_s: float = 0, *, client_id: str | None = None,
                 on_alert: Callable[[Arrival], None] | None = None,
                 on_state: Callable[[AgentState], None] | None = None,
                 timeout: float = 5.0) -> None:
        if isinstance(auto_ack, str) and auto_ack not in ACK_STATUSES:
            raise ValueError("auto_ack %r: the statuses are %s" % (auto_ack, ", ".join(ACK_STATUSES)))
        self.host, self.port, self.tls = host, port, tls
        self.district, self.fallback = district, fallback
        self.auto_ack, self.ack_delay_s = auto_ack, ack_delay_s
        self.client_id = client_id or "ansim-center-sim-%s" % district
        self.on_alert, self.on_state = on_alert, on_state
        self.timeout = timeout
        self._cond = threading.Condition(threading.RLock())
        self._alerts: dict[str, CenterAlert] = {}   # insertion order = first arrival
        self._agents: dict[str, AgentState] = {}
        self._certificates: list[AgentState] = []   # every certificate, in arrival order
        self._escalations: list[str] = []
        self._last_counter: dict[str, tuple[int, str]] = {}
        self._order_violations: list[tuple[str, str, str]] = []
        self._malformed: list[tuple[str, bytes]] = []
        self._errors: list[str] = []
        self._events: deque[Callable[[], None]] = deque()
        self._due: list[tuple[float, int, Callable[[], None]]] = []  # (monotonic time, tiebreak, work)
        self._tiebreak = itertools.count()
        self._stopping = False
        self._client: SyncClient | None = None
        self._dispatcher = threading.Thread(target=self._dispatch, name="center-sim", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ControlCenter:
        """Connect, subscribe (QoS 1) to every center's alerts and every agent's state, and
        return once the broker granted both subscriptions."""
        client = connect_client(self.host, self.port, client_id=self.client_id, tls=self.tls,
                                timeout=self.timeout)
        client.paho.on_message = self._on_message  # before subscribing: nothing arrives earlier
        sync_disconnect = client.paho.on_disconnect

        def on_disconnect(*args):
            sync_disconnect(*args)
            with self._cond:
                self._cond.notify_all()
            if not self._stopping:
                log.warning("the center simulator lost its broker %s:%d (%s)", self.host, self.port, args[3])

        client.paho.on_disconnect = on_disconnect
        self._client = client
        self._dispatcher.start()
        try:
            for topic in (ALERTS_FILTER, STATE_FILTER):
                codes = client.subscribe(topic, qos=1, timeout=self.timeout)
                if any(rc.is_failure for rc in codes):
                    raise BrokerError("the broker refused the center's subscription to %s: %s" % (topic, codes))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the dispatcher (acknowledgements not yet due are dropped) and disconnect."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._dispatcher.is_alive() and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(self.timeout)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ControlCenter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.disconnected.is_set()

    # -- what the center knows (snapshots, safe from any thread) ----------------------------

    @property
    def alerts(self) -> list[CenterAlert]:
        """Distinct alerts in order of first arrival."""
        with self._cond:
            return list(self._alerts.values())

    @property
    def alert_ids(self) -> list[str]:
        with self._cond:
            return list(self._alerts)

    def alert(self, alert_id: str) -> CenterAlert | None:
        with self._cond:
            return self._alerts.get(alert_id)

    @property
    def duplicates(self) -> int:
        """All arrivals beyond the first of each alert id on each center's topic."""
        with self._cond:
            return sum(a.duplicates for a in self._alerts.values())

    @property
    def escalations(self) -> list[str]:
        """Alert ids that arrived on the fallback center's topic, in order."""
        with self._cond:
            return list(self._escalations)

    @property
    def order_violations(self) -> list[tuple[str, str, str]]:
        """``(device, earlier alert id, later alert id)`` where a device's counter went down."""
        with self._cond:
            return list(self._order_violations)

    @property
    def agents(self) -> dict[str, AgentState]:
        """Each agent's live state: its latest session's latest certificate."""
        with self._cond:
            return dict(self._agents)

    @property
    def certificates(self) -> list[AgentState]:
        """Every birth/death certificate received, stale ones included, in arrival order."""
        with self._cond:
            return list(self._certificates)

    def agent_state(self, agent_id: str) -> str | None:
        """"online", "offline", or None for an agent never heard of."""
        with self._cond:
            state = self._agents.get(agent_id)
            return state.state if state is not None else None

    @property
    def malformed(self) -> list[tuple[str, bytes]]:
        """Messages that were not a valid alert or certificate: ``(topic, payload)``."""
        with self._cond:
            return list(self._malformed)

    @property
    def errors(self) -> list[str]:
        """Failures of automatic acknowledgements and hooks (the dispatcher keeps running)."""
        with self._cond:
            return list(self._errors)

    # -- acknowledgements --------------------------------------------------------------------

    def ack(self, alert_id: str, status: str, agent_id: str | None = None,
            timeout: float | None = None) -> dict[str, ReasonCode]:
        """Publish ``{"alert_id", "status"}`` (QoS 1) to an agent's ack topic and return the
        PUBACK reason codes by agent. ``agent_id`` None: every agent that delivered the alert
        (the one in its body for an alert the center never saw). Not from paho's thread; the
        hooks are fine."""
        with self._cond:
            record = self._alerts.get(alert_id)
            if agent_id is not None:
                targets = [agent_id]
            elif record is not None and record.agents:
                targets = list(record.agents)
            else:
                raise KeyError("alert %s never arrived here: pass agent_id" % alert_id)
            if record is not None:  # set now: a copy from another agent arriving meanwhile gets it too
                record.status = status
        payload = json.dumps({"alert_id": alert_id, "status": status})
        results = {}
        for target in targets:
            rc = self._connected_client().publish(ack_topic(target), payload, qos=1,
                                                  timeout=timeout or self.timeout)
            results[target] = rc
            with self._cond:
                if record is not None:
                    record.acks.append((status, target, rc))
                self._cond.notify_all()
            if rc.is_failure:
                log.warning("the broker refused the ack of %s to %s: %s", alert_id, target, rc)
        return results

    def monitor(self, agent_id: str, request: dict, timeout: float | None = None) -> ReasonCode:
        """Send a walk-home monitoring request (CENTER_API.md) to an agent; the PUBACK code."""
        return self._connected_client().publish(monitor_topic(agent_id), json.dumps(request), qos=1,
                                                timeout=timeout or self.timeout)

    # -- waiting -----------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], object] | int, timeout: float = 10.0, what: str | None = None):
        """Block until ``predicate()`` is true (evaluated under the simulator's lock, after
        every change) or, given an int, until that many distinct alerts arrived. Returns the
        predicate's value; TimeoutError at the deadline, CenterDisconnected if the connection
        is lost first."""
        if isinstance(predicate, int):
            count = predicate
            predicate = lambda: len(self._alerts) >= count  # noqa: E731
            what = what or "%d distinct alerts" % count
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                if self._client is not None and self._client.disconnected.is_set():
                    raise CenterDisconnected("the center simulator lost its broker while waiting for %s"
                                             % (what or predicate))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("not within %s s: %s; the center has %s"
                                       % (timeout, what or predicate, self._summary()))
                self._cond.wait(remaining)

    def wait_for_alert(self, alert_id: str, timeout: float = 10.0) -> CenterAlert:
        return self.wait_for(lambda: self._alerts.get(alert_id), timeout, "alert %s" % alert_id)

    def wait_for_ack(self, alert_id: str, timeout: float = 10.0) -> CenterAlert:
        """Until an acknowledgement of the alert (auto or not) has been PUBACKed."""
        return self.wait_for(lambda: (a := self._alerts.get(alert_id)) is not None and a.acked and a,
                             timeout, "a PUBACKed ack of %s" % alert_id)

    def wait_for_escalation(self, alert_id: str, timeout: float = 10.0) -> CenterAlert:
        return self.wait_for(lambda: alert_id in self._escalations and self._alerts[alert_id],
                             timeout, "the escalation of %s" % alert_id)

    def wait_for_agent(self, agent_id: str, state: str = "online", session: int | None = None,
                       timeout: float = 10.0) -> AgentState:
        """Until the agent's live state is ``state`` (in ``session`` if given)."""
        def reached():
            s = self._agents.get(agent_id)
            return s is not None and s.state == state and (session is None or s.session == session) and s
        return self.wait_for(reached, timeout, "agent %s %s%s" % (
            agent_id, state, "" if session is None else " in session %d" % session))

    # -- paho's network thread: record only ------------------------------------------------

    def _on_message(self, _client, _userdata, msg) -> None:
        parts = msg.topic[len(ROOT):].split("/") if msg.topic.startswith(ROOT) else []
        try:
            if len(parts) == 3 and parts[0] == "agents" and parts[2] == "state":
                self._certificate(parts[1], msg)
            elif len(parts) == 3 and parts[1] == "alerts":
                self._alert(parts[0], msg)
            else:
                raise ValueError("unexpected topic")
        except (ValueError, KeyError, TypeError) as err:
            with self._cond:
                self._malformed.append((msg.topic, bytes(msg.payload)))
                self._cond.notify_all()
            log.warning("malformed message on %s (%s): %r", msg.topic, err, bytes(msg.payload)[:200])

    def _alert(self, center: str, msg) -> None:
        body = json.loads(msg.payload)
        alert_id = body["alert_id"]
        if not isinstance(alert_id, str) or not alert_id:
            raise ValueError("alert_id must be a non-empty string")
        agent = (body.get("agent") or {}).get("id")
        with self._cond:
            record = self._alerts.get(alert_id)
            new = record is None
            if new:
                record = self._alerts[alert_id] = CenterAlert(alert_id, body, msg.topic, center, time.time())
            duplicate = center in record.copies
            record.copies[center] = record.copies.get(center, 0) + 1
            new_agent = agent is not None and agent not in record.agents
            if new_agent:
                record.agents.append(agent)
            if center == self.fallback and not duplicate:
                record.escalation = body
                self._escalations.append(alert_id)
            if center == self.district and not duplicate:
                self._check_order(record.device_id, alert_id)
            arrival = Arrival(msg.topic, center, body, duplicate, record)
            if self.on_alert is not None:
                self._events.append(lambda: self.on_alert(arrival))
            if center == self.district and new and self.auto_ack is not None:
                self._schedule(self.ack_delay_s, lambda: self._auto_ack(record))
            elif new_agent and not new and record.status is not None:
                self._schedule(0, lambda: self.ack(alert_id, record.status, agent))
            self._cond.notify_all()

    def _check_order(self, device: str, alert_id: str) -> None:
        counter = alert_id.split("-", 1)[1] if "-" in alert_id else ""
        if not counter.isdigit():  # e.g. device_offline events: no counter
            return
        previous = self._last_counter.get(device)
        if previous is not None and int(counter) < previous[0]:
            self._order_violations.append((device, previous[1], alert_id))
            log.warning("device %s: alert %s arrived after %s", device, alert_id, previous[1])
        if previous is None or int(counter) > previous[0]:
            self._last_counter[device] = (int(counter), alert_id)

    def _certificate(self, agent_id: str, msg) -> None:
        cert = json.loads(msg.payload)
        if cert["state"] not in ("online", "offline") or not isinstance(cert["session"], int):
            raise ValueError("state must be online/offline and session an integer")
        state = AgentState(agent_id, cert["state"], cert["session"], cert.get("site"), cert.get("at"), cert)
        with self._cond:
            self._certificates.append(state)
            current = self._agents.get(agent_id)
            if current is not None and state.session < current.session:
                log.info("ignored a stale certificate of %s (session %d < %d)", agent_id,
                         state.session, current.session)
            else:
                self._agents[agent_id] = state
                if self.on_state is not None:
                    self._events.append(lambda: self.on_state(state))
            self._cond.notify_all()

    def _schedule(self, delay_s: float, work: Callable[[], None]) -> None:
        if delay_s <= 0:
            self._events.append(work)
        else:
            heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._tiebreak), work))

    # -- dispatcher thread: hooks and acknowledgements ---------------------------------------

    def _auto_ack(self, record: CenterAlert) -> None:
        status = self.auto_ack(record.body) if callable(self.auto_ack) else self.auto_ack
        if status is not None:
            self.ack(record.alert_id, status)

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._events:
                        work = self._events.popleft()
                        break
                    if self._due and self._due[0][0] <= time.monotonic():
                        work = heapq.heappop(self._due)[2]
                        break
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
            try:
                work()
            except Exception as err:  # a hook or an ack failed: note it, keep serving
                log.exception("center simulator: %s", err)
                with self._cond:
                    self._errors.append("%s: %s" % (type(err).__name__, err))
                    self._cond.notify_all()

    def _connected_client(self) -> SyncClient:
        if self._client is None:
            raise BrokerError("the center simulator is not started")
        if self._client.disconnected.is_set():
            raise CenterDisconnected("the center simulator lost its broker %s:%d" % (self.host, self.port))
        return self._client

    def _summary(self) -> str:
        return "%d alerts (%d duplicates, %d escalations), agents %s" % (
            len(self._alerts), sum(a.duplicates for a in self._alerts.values()), len(self._escalations),
            {a: (s.state, s.session) for a, s in self._agents.items()} or "none")

"""What the control-center console knows, built only from the messages on the center's broker
(edge_agent/CENTER_API.md) and what the operator sent. No I/O: :mod:`.broker` feeds it, the
web page and the terminal read it.

- Alerts are merged by ``alert_id``: the same event reported by several agents (or resent
  after a crash, or escalated to the fallback center) is one alert, which keeps every agent
  that reported it with that agent's path (rssi) and location. Its state: ``new``, then
  ``acknowledged`` / ``dispatched`` / ``resolved`` as the operator, or another center client,
  sends those acks (a state never goes back); ``escalated`` while a new alert's escalated copy
  has been seen.
- Agents from their birth and death certificates (a stale session never overrides a newer one).
- Reception reports (``heard``): agents that heard an alert's frame off the air after another
  agent raised it. With the alerts' own receivers, an alert without a fix is placed at the
  receivers' centroid weighted by signal strength (:func:`estimate`).
- Offline devices from ``device_offline`` / ``device_online`` alerts.
- Streetlights from the retained ``ansim/center/v1/{district}/lights/{device}`` states.
- Walk-home sessions the operator (or another center client) started.
- What the other center clients (another console, the simulated center) send the agents: their
  acks (``agents/+/ack``) move an alert's state as the operator's own do, their monitoring
  requests (``agents/+/monitor``) start, move and end walks, so every console shows every action.

Every message comes from the network: anything malformed is counted per channel and ignored
(:meth:`Console.handle` never raises). Each change is published as an event
``{"seq": n, "kind": ..., "data": ...}`` to the listeners (the terminal log, the page's
server-sent events) in the order it happened.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

# What the agent accepts from the center is checked by the agent's own code: an ack for an id
# it would refuse, or a walk it would refuse, is refused here already, with the same reason.
from ansim_agent.center_messages import ALERT_ID, DEVICE_HEX, Refused, parse_monitor
from ansim_agent.geo import distance_m, model_distance_m, radius_from_rssi, weighted_centroid

ROOT = "ansim/center/v1/"
ALERTS_FILTER = ROOT + "+/alerts/#"
STATE_FILTER = ROOT + "agents/+/state"
LIGHTS_FILTER = ROOT + "+/lights/+"
HEARD_FILTER = ROOT + "+/heard/+"
ACK_FILTER = ROOT + "agents/+/ack"
MONITOR_FILTER = ROOT + "agents/+/monitor"
EARLY_HEARD = 1000  # reception reports (and others' acks) kept for alerts not (yet) seen
BY_OTHER = "sent by another center client"  # an ack result: seen on the broker, not sent by this console
MAX_ALERTS = 2000   # then the oldest resolved alerts (else the oldest) are forgotten

DEVICE_ID = DEVICE_HEX
SEGMENT = re.compile(r"^[^/+#\s]{1,64}$")
AGENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,58}$")

STATES = ("new", "acknowledged", "dispatched", "resolved")
# What the operator's actions send (CENTER_API.md's statuses), and the state each reaches.
ACTIONS = {"ack": "received", "dispatch": "dispatched", "resolve": "resolved"}
STATUS_STATE = {"received": "acknowledged", "test-ok": "acknowledged", "dispatched": "dispatched",
                "resolved": "resolved"}
LIGHT_MODES = ("schedule", "blink", "brighten", "fallback", "off")


class Malformed(ValueError):
    """A message the console cannot use, or an operator's request it cannot send; the text says why."""


def _number(value, low=-math.inf, high=math.inf):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _location(value):
    if value is None:
        return None
    if not isinstance(value, dict) or not _number(value.get("lat"), -90, 90) or not _number(value.get("lon"), -180, 180):
        raise Malformed("location must have lat and lon on the globe")
    accuracy = value.get("accuracy_m")
    return {"lat": float(value["lat"]), "lon": float(value["lon"]),
            "accuracy_m": float(accuracy) if _number(accuracy, 0) else None,
            "source": value.get("source") if isinstance(value.get("source"), str) else None}


def _position(value):
    """[lat, lon] of a certificate's optional ``position`` (agents before 2026-12 send none), or None."""
    if isinstance(value, dict) and _number(value.get("lat"), -90, 90) and _number(value.get("lon"), -180, 180):
        return [float(value["lat"]), float(value["lon"])]
    return None


def _places(value, with_kind=False):
    if not isinstance(value, list):
        return []
    places = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            place = {"id": item["id"], "name": str(item.get("name", item["id"])),
                     "distance_m": item["distance_m"] if _number(item.get("distance_m"), 0) else None}
            if with_kind:
                place["kind"] = str(item.get("kind", ""))
            places.append(place)
    return places


def _object(payload) -> dict:
    try:
        body = json.loads(payload)
    except (ValueError, TypeError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Malformed("not JSON: %s" % err) from None
    if not isinstance(body, dict):
        raise Malformed("not a JSON object")
    return body


class Console:
    """The console's state; thread-safe (paho's thread writes, HTTP threads read)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self.alerts: dict[str, dict] = {}     # insertion order = first arrival
        self.agents: dict[str, dict] = {}
        self.offline: dict[str, dict] = {}    # device id -> the device_offline alert's gist
        self.lights: dict[str, dict] = {}
        self.walks: dict[str, dict] = {}
        self.site: dict | None = None         # the registry's static layer (see .site)
        self.malformed: Counter[str] = Counter()
        self._early_heard: OrderedDict[str, dict] = OrderedDict()  # alert id -> {agent: report}
        self._early_acks: OrderedDict[str, list] = OrderedDict()   # alert id -> [(status, agent)] by others
        self.connection = {"state": "starting", "detail": ""}
        self._seq = 0
        self._listeners: list[Callable[[dict], None]] = []

    # -- listeners -----------------------------------------------------------------------------

    def listen(self, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every change from now on (under the model's lock, so
        events come in order: keep it short). Returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove():
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return remove

    def _emit(self, kind: str, data) -> dict:
        self._seq += 1
        event = {"seq": self._seq, "kind": kind, "data": data}
        for listener in list(self._listeners):
            listener(event)
        return event

    def snapshot(self) -> dict:
        """Everything, as JSON-ready data; ``seq`` is the last event it includes."""
        with self._lock:
            return json.loads(json.dumps({
                "seq": self._seq, "alerts": [self._alert_view(a) for a in self.alerts.values()],
                "agents": list(self.agents.values()), "offline": list(self.offline.values()),
                "lights": list(self.lights.values()), "walks": list(self.walks.values()),
                "site": self.site, "malformed": dict(self.malformed), "connection": self.connection}))

    def set_connection(self, state: str, detail: str = "") -> None:
        with self._lock:
            if self.connection == {"state": state, "detail": detail}:
                return
            self.connection = {"state": state, "detail": detail}
            self._emit("connection", dict(self.connection))

    # -- messages from the broker ----------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> dict | None:
        """One message from the center's broker. Returns what it changed (``{"alert": view,
        "new_agent": id or None}`` for alerts) or None; malformed messages are counted under
        their channel (``alerts``, ``state``, ``lights``, ``heard``, ``ack``, ``monitor``, ``topic``) and ignored."""
        parts = topic[len(ROOT):].split("/") if topic.startswith(ROOT) else []
        channel = "topic"
        try:
            if len(parts) == 3 and parts[0] == "agents" and parts[2] == "state":
                channel = "state"
                return self._certificate(parts[1], _object(payload))
            if len(parts) == 3 and parts[1] == "alerts":
                channel = "alerts"
                return self._alert(parts[0], parts[2], _object(payload))
            if len(parts) == 3 and parts[1] == "lights":
                channel = "lights"
                return self._light(parts[2], _object(payload))
            if len(parts) == 3 and parts[1] == "heard":
                channel = "heard"
                return self._heard(parts[2], _object(payload))
            if len(parts) == 3 and parts[0] == "agents" and parts[2] == "ack":
                channel = "ack"
                return self._ack_seen(parts[1], _object(payload))
            if len(parts) == 3 and parts[0] == "agents" and parts[2] == "monitor":
                channel = "monitor"
                return self._monitor_seen(parts[1], payload)
            raise Malformed("not a console topic")
        except Exception as err:  # noqa: BLE001 - whatever a message does, the console goes on
            with self._lock:
                self.malformed[channel] += 1
                self._emit("malformed", {"channel": channel, "topic": topic[:200], "reason": str(err)[:200],
                                         "count": self.malformed[channel]})
            return None

    def _alert(self, center: str, device: str, body: dict) -> dict:
        alert_id = body.get("alert_id")
        if not isinstance(alert_id, str) or not ALERT_ID.match(alert_id):
            raise Malformed("alert_id must be <8 hex digits>-<counter>, got %r" % (alert_id,))
        if not SEGMENT.match(center) or device != alert_id.split("-", 1)[0]:
            raise Malformed("topic %s/alerts/%s does not match alert %s" % (center, device, alert_id))
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            raise Malformed("type missing")
        dev = body.get("device") if isinstance(body.get("device"), dict) else {}
        agent = body.get("agent") if isinstance(body.get("agent"), dict) else {}
        agent_id = agent.get("id")
        if not isinstance(agent_id, str) or not AGENT_ID.match(agent_id):
            raise Malformed("agent.id must be an agent id, got %r" % (agent_id,))
        location = _location(body.get("location"))
        path = body.get("path") if isinstance(body.get("path"), dict) else {}
        rssi = path.get("rssi") if _number(path.get("rssi")) else None
        escalated_from = body.get("escalated_from")
        escalated = isinstance(escalated_from, str)
        now = self.clock()
        with self._lock:
            alert = self.alerts.get(alert_id)
            new = alert is None
            if new:
                alert = self.alerts[alert_id] = {
                    "alert_id": alert_id, "type": kind, "test": body.get("test") is True,
                    "device": {"id": device, "role": str(dev.get("role", "")), "name": str(dev.get("name", device))},
                    "location": location, "cameras": _places(body.get("cameras")),
                    "facilities": _places(body.get("facilities"), with_kind=True),
                    "received_at": body.get("received_at") if isinstance(body.get("received_at"), str) else None,
                    "fields": body.get("fields") if isinstance(body.get("fields"), dict) else {},
                    "cancels": body.get("cancels") if isinstance(body.get("cancels"), str) else None,
                    "first_seen": now, "status": None, "escalated": False, "escalated_from": None,
                    "reports": {}, "heard": self._early_heard.pop(alert_id, {}), "estimate": None,
                    "acks": [], "copies": 0}
                for status, ack_agent in self._early_acks.pop(alert_id, []):
                    self._record_ack(alert, status, ack_agent, BY_OTHER)
                self._forget_old()
            alert["copies"] += 1
            changed = new
            if alert["location"] is None and location is not None:
                alert["location"], changed = location, True
            if escalated and not alert["escalated"]:
                alert["escalated"], alert["escalated_from"], changed = True, escalated_from, True
            new_agent = agent_id not in alert["reports"]
            report = alert["reports"].setdefault(agent_id, {"agent": agent_id, "first_seen": now, "centers": []})
            report.update({"site": agent.get("site") if isinstance(agent.get("site"), str) else None,
                           "rssi": rssi, "location": location,
                           "transport": path.get("transport") if isinstance(path.get("transport"), str) else None})
            if center not in report["centers"]:
                report["centers"].append(center)
            if location is not None and location.get("source") == "receiver":
                self._agent_position(agent_id, location)
            estimate = self._estimate(alert)
            if estimate != alert["estimate"]:
                alert["estimate"], changed = estimate, True
            self._offline_from(kind, device, alert_id, body, agent_id)
            view = self._alert_view(alert)
            if changed or new_agent:
                self._emit("alert", view)
            return {"alert": view, "new": new, "new_agent": agent_id if new_agent else None}

    def _forget_old(self):
        """A console runs for months: past MAX_ALERTS, the oldest resolved alert goes (the
        oldest of all when none is resolved), and the page is told."""
        while len(self.alerts) > MAX_ALERTS:
            gone = next((i for i, a in self.alerts.items() if a["status"] == "resolved"), next(iter(self.alerts)))
            del self.alerts[gone]
            self._emit("forget", {"alert_id": gone})

    def _offline_from(self, kind, device, alert_id, body, agent_id):
        if kind == "device_offline":
            since = body.get("last_heard") if isinstance(body.get("last_heard"), str) else None
            reason = body.get("reason") if isinstance(body.get("reason"), str) else None
            entry = {"device": device, "alert_id": alert_id, "last_heard": since, "reason": reason,
                     "agent": agent_id}
            if self.offline.get(device) != entry:
                self.offline[device] = entry
                self._emit("offline", entry)
        elif kind == "device_online" and device in self.offline:
            del self.offline[device]
            self._emit("online", {"device": device, "alert_id": alert_id, "agent": agent_id})

    def _heard(self, device: str, body: dict) -> dict | None:
        alert_id, agent_id, rssi = body.get("alert_id"), body.get("agent"), body.get("rssi")
        if not isinstance(alert_id, str) or not ALERT_ID.match(alert_id) or device != alert_id.split("-", 1)[0]:
            raise Malformed("alert_id %r on the topic of %s" % (alert_id, device))
        if not isinstance(agent_id, str) or not AGENT_ID.match(agent_id):
            raise Malformed("agent must be an agent id, got %r" % (agent_id,))
        position = _location(dict(body.get("position"), accuracy_m=None) if isinstance(body.get("position"), dict)
                             else "missing")
        if rssi is not None and not _number(rssi, -200, 20):
            raise Malformed("rssi must be dBm or null")
        report = {"agent": agent_id, "lat": position["lat"], "lon": position["lon"], "rssi": rssi,
                  "at": body.get("at") if _number(body.get("at")) else None}
        with self._lock:
            self._agent_position(agent_id, position)
            alert = self.alerts.get(alert_id)
            if alert is None:  # the report came before the alert: kept a while
                self._early_heard.setdefault(alert_id, {})[agent_id] = report
                self._early_heard.move_to_end(alert_id)
                while len(self._early_heard) > EARLY_HEARD:
                    self._early_heard.popitem(last=False)
                return None
            if alert["heard"].get(agent_id) == report:
                return None
            alert["heard"][agent_id] = report
            alert["estimate"] = self._estimate(alert)
            view = self._alert_view(alert)
            self._emit("alert", view)
            return {"alert": view, "new": False, "new_agent": None}

    def _agent_position(self, agent_id, location):
        agent = self.agents.get(agent_id)
        if agent is not None and agent.get("position") != [location["lat"], location["lon"]]:
            agent["position"] = [location["lat"], location["lon"]]
            self._emit("agent", dict(agent))

    @staticmethod
    def _estimate(alert: dict) -> dict | None:
        """Every receiver of an alert without its own fix: the agents that raised it (located at
        the receiver) and those that reported hearing it; see :func:`estimate`."""
        receivers = {}
        for agent_id, report in alert["reports"].items():
            location = report["location"]
            if location is not None and location["source"] == "receiver":
                receivers[agent_id] = (location["lat"], location["lon"], report["rssi"])
        if not receivers and alert["location"] is not None and alert["location"]["source"] != "receiver":
            return None  # a fix or a registered position: nothing to improve
        for agent_id, report in alert["heard"].items():
            receivers[agent_id] = (report["lat"], report["lon"], report["rssi"])
        return estimate(list(receivers.values())) if len(receivers) >= 2 else None

    def _certificate(self, agent_id: str, body: dict) -> dict:
        if not AGENT_ID.match(agent_id):
            raise Malformed("agent id %r in the topic" % agent_id)
        state, session = body.get("state"), body.get("session")
        if state not in ("online", "offline") or not isinstance(session, int) or isinstance(session, bool):
            raise Malformed("state must be online/offline and session an integer")
        with self._lock:
            current = self.agents.get(agent_id)
            if current is not None and session < current["session"]:
                return current  # a stale retained certificate
            entry = {"agent": agent_id, "state": state, "session": session,
                     "site": body.get("site") if isinstance(body.get("site"), str) else None,
                     "at": body.get("at") if _number(body.get("at")) else None,
                     "position": _position(body.get("position")) or (current.get("position") if current else None)}
            if entry != current:
                self.agents[agent_id] = entry
                self._emit("agent", entry)
            return entry

    def _light(self, device: str, body: dict) -> dict | None:
        if not DEVICE_ID.match(device) or body.get("device") != device:
            raise Malformed("light state of %r on the topic of %s" % (body.get("device"), device))
        if body.get("mode") not in LIGHT_MODES:
            raise Malformed("mode must be one of %s" % ", ".join(LIGHT_MODES))
        for key in ("commanded_pct", "actual_pct"):
            if not (isinstance(body.get(key), int) and _number(body[key], 0, 100)):
                raise Malformed("%s must be an integer 0..100" % key)
        faults = body.get("faults", 0)
        if not (isinstance(faults, int) and _number(faults, 0)):
            raise Malformed("faults must be a count")
        entry = {"device": device, "agent": body.get("agent") if isinstance(body.get("agent"), str) else None,
                 "mode": body["mode"], "blinking": body["mode"] == "blink", "commanded_pct": body["commanded_pct"],
                 "actual_pct": body["actual_pct"], "faults": faults,
                 "at": body.get("at") if _number(body.get("at")) else None}
        with self._lock:
            if self.lights.get(device) == entry:
                return None
            self.lights[device] = entry
            self._emit("light", entry)
            return entry

    # -- what the operator did -------------------------------------------------------------------

    def ack_targets(self, alert_id: str) -> list[str]:
        """The agents an ack of ``alert_id`` must go to: every one that reported it."""
        with self._lock:
            alert = self.alerts.get(alert_id)
            return list(alert["reports"]) if alert else []

    def status_for(self, alert_id: str, action: str) -> str:
        """The ack status an operator's ``action`` (ack, dispatch, resolve) sends; KeyError for an
        unknown alert, Malformed for an unknown action."""
        if action not in ACTIONS:
            raise Malformed("action must be one of %s" % ", ".join(ACTIONS))
        with self._lock:
            alert = self.alerts[alert_id]
            return "test-ok" if action == "ack" and alert["test"] else ACTIONS[action]

    def ack_sent(self, alert_id: str, status: str, agent_id: str) -> dict | None:
        """An ack was published toward ``agent_id``; the alert's state moves forward (never back)."""
        with self._lock:
            alert = self.alerts.get(alert_id)
            if alert is None:
                return None
            self._record_ack(alert, status, agent_id, "sent")
            view = self._alert_view(alert)
            self._emit("alert", view)
            return view

    def _record_ack(self, alert, status, agent_id, result):
        alert["acks"].append({"status": status, "agent": agent_id, "at": self.clock(), "result": result})
        if alert["status"] is None or STATES.index(STATUS_STATE[status]) >= STATES.index(STATUS_STATE[alert["status"]]):
            alert["status"] = status

    def _ack_seen(self, agent_id: str, body: dict) -> dict | None:
        """An ack another center client sent to ``agent_id`` (CENTER_API.md's ``{"alert_id",
        "status"}``): applied as the operator's own, its result :data:`BY_OTHER`. One for an
        alert not seen yet waits (a while) for it."""
        alert_id, status = body.get("alert_id"), body.get("status")
        if not AGENT_ID.match(agent_id):
            raise Malformed("agent id %r in the topic" % agent_id)
        if not isinstance(alert_id, str) or not ALERT_ID.match(alert_id):
            raise Malformed("alert_id must be <8 hex digits>-<counter>, got %r" % (alert_id,))
        if status not in STATUS_STATE:
            raise Malformed("status must be one of %s" % ", ".join(STATUS_STATE))
        with self._lock:
            alert = self.alerts.get(alert_id)
            if alert is None:
                self._early_acks.setdefault(alert_id, []).append((status, agent_id))
                self._early_acks.move_to_end(alert_id)
                while len(self._early_acks) > EARLY_HEARD:
                    self._early_acks.popitem(last=False)
                return None
            self._record_ack(alert, status, agent_id, BY_OTHER)
            view = self._alert_view(alert)
            self._emit("alert", view)
            return {"alert": view, "new": False, "new_agent": None}

    def _monitor_seen(self, agent_id: str, payload: bytes) -> dict | None:
        """A walk-home request another center client sent to ``agent_id``, checked as the agent
        checks it; an update or end of a walk this console never saw start is ignored."""
        if not AGENT_ID.match(agent_id):
            raise Malformed("agent id %r in the topic" % agent_id)
        try:
            checked = parse_monitor(payload)
        except Refused as err:
            raise Malformed(str(err)) from None
        request = {"session": checked["session"], "action": checked["action"]}
        if checked["route"] is not None:
            request["route"] = [list(p) for p in checked["route"]]
        if checked["position"] is not None:
            request["position"] = list(checked["position"])
        if request["action"] == "update" and "position" not in request:
            raise Malformed("an update needs the walker's position")
        with self._lock:
            if request["action"] != "start" and request["session"] not in self.walks:
                return None
            return self.walk(agent_id, request)

    def ack_result(self, alert_id: str, status: str, agent_id: str, result: str) -> None:
        """The broker answered the ack (``sent (broker took it)``: a PUBACK, the agent may be offline; or a refusal)."""
        with self._lock:
            alert = self.alerts.get(alert_id)
            if alert is None:
                return
            for ack in reversed(alert["acks"]):
                if ack["status"] == status and ack["agent"] == agent_id and ack["result"] == "sent":
                    ack["result"] = result
                    break
            self._emit("alert", self._alert_view(alert))

    def walk(self, agent_id: str, request: dict) -> dict:
        """A monitoring request the operator sent to ``agent_id`` (already checked)."""
        with self._lock:
            session = request["session"]
            walk = self.walks.get(session)
            if request["action"] == "start":
                walk = self.walks[session] = {"session": session, "agent": agent_id, "route": request["route"],
                                              "position": request.get("position") or request["route"][0],
                                              "state": "active", "at": self.clock()}
            elif walk is None:
                raise KeyError(session)
            elif request["action"] == "update":
                walk["position"] = request["position"]
            else:
                walk["state"] = request["action"]  # stop, arrived
            walk["at"] = self.clock()
            self._emit("walk", dict(walk))
            return dict(walk)

    def monitor_request(self, body: dict) -> tuple[str, dict]:
        """Check an operator's monitoring request ``{"agent", "session", "action", "route",
        "position"}`` as the agent will (CENTER_API.md), and that an update, stop or arrived
        names an active session; returns (agent id, the request to publish)."""
        if not isinstance(body, dict):
            raise Malformed("a JSON object is needed")
        try:
            checked = parse_monitor(json.dumps({k: body.get(k) for k in ("session", "action", "route", "position")}))
        except Refused as err:
            raise Malformed(str(err)) from None
        session, action = checked["session"], checked["action"]
        with self._lock:
            walk = self.walks.get(session)
        agent_id = body.get("agent") or (walk or {}).get("agent")
        if not isinstance(agent_id, str) or not AGENT_ID.match(agent_id):
            raise Malformed("agent must be an agent id, got %r" % (agent_id,))
        if action != "start" and (walk is None or walk["state"] != "active"):
            raise Malformed("no active walk-home session %r" % session)
        if action == "update" and checked["position"] is None:
            raise Malformed("an update needs the walker's position")
        request = {"session": session, "action": action}
        if checked["route"] is not None:
            request["route"] = [list(p) for p in checked["route"]]
        if checked["position"] is not None and action in ("start", "update"):
            request["position"] = list(checked["position"])
        return agent_id, request

    @staticmethod
    def _alert_view(alert: dict) -> dict:
        view = dict(alert)
        view["reports"] = list(alert["reports"].values())
        view["heard"] = list(alert["heard"].values())
        view["agents"] = list(alert["reports"])
        view["state"] = alert_state(alert)
        return view


def estimate(receivers) -> dict:
    """Where the receivers ``[(lat, lon, rssi or None)]`` place a transmitter: their centroid,
    each weighted 1/d^2 with d the distance the agent's path-loss model (edge_agent/geo.py)
    gives for that RSSI (stronger = nearer = heavier; no RSSI: as far as BLE reaches).
    ``accuracy_m`` is conservative: the circle around the estimate that holds the strongest
    receiver's whole accuracy circle."""
    lat, lon = weighted_centroid(receivers)
    best = min(receivers, key=lambda r: model_distance_m(r[2]))
    accuracy = distance_m((lat, lon), best[:2]) + radius_from_rssi(best[2])
    return {"lat": lat, "lon": lon, "accuracy_m": round(accuracy, 1), "source": "rssi", "receivers": len(receivers)}


def alert_state(alert: dict) -> str:
    """new, acknowledged, dispatched or resolved; ``escalated`` while an escalated alert is new."""
    if alert["status"] is None:
        return "escalated" if alert["escalated"] else "new"
    return STATUS_STATE[alert["status"]]

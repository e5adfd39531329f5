"""Scenario files (TOML): read, check, and turn into plain objects for the runner.

Why: a tester writes these by hand, from simulators/scenarios/README.md alone. Every mistake
is one ``ScenarioError`` line naming the file, the line of the table and the key, what is
wrong and what to write instead, before anything starts.
"""

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ansim_agent import config as agent_config

from .place import Place

SEOUL_CITY_HALL = (37.5663, 126.9779)
ROLES = {"wearable": 0x00010000, "bell": 0x00020000, "streetlight": 0x00030000}
BUTTONS = {"wearable": ("sos", "triple", "cancel", "test"), "bell": ("sos",)}
OUTAGES = ("uplink", "center_broker", "local_broker", "wifi", "power", "agent")
EXPECTS = ("alert", "no_alert", "light", "no_light", "ack", "heard", "position")
LIGHT_ACTIONS = ("blink", "brighten", "restore")
ACK_STATUSES = ("received", "dispatched", "resolved", "test-ok")
ALERT_TYPES = ("sos", "test_sos", "bell_press", "cancel", "tamper", "low_battery", "monitor", "lamp_fault",
               "device_offline", "device_online")
LOCATION_SOURCES = ("gnss", "registered", "receiver")  # an alert's location.source (edge_agent/alert.schema.json)
AGENT_SECTIONS = ("agent", "local_mqtt", "center", "lights", "supervision", "ble", "serial", "metrics")
# agent.toml keys the runner writes itself (runner.World._write_site): a scenario's settings may not give them.
# Each with what the runner sets and where a scenario says it instead, if it can.
RUNNER_SETS = {
    "agent": {"id": ("the [[agent]]'s id", 'write id = "..." in the [[agent]] table'),
              "site": ("[place] district", 'write district = "..." under [place]'),
              "position": ("the [[agent]]'s at", "write at = { east = .., north = .. } in the [[agent]] table"),
              "registry": ("a registry of the scenario's devices, cameras and facilities", ""),
              "data_dir": ("a folder of the run's own (--keep keeps it)", "")},
    "local_mqtt": {"enabled": ("true, the agent's own local broker", ""),
                   "host": ("127.0.0.1, the agent's own local broker", ""),
                   "port": ("the agent's own local broker's port", ""),
                   "username": ("[place] logins", "write logins = true under [place]"),
                   "password_file": ("[place] logins", "write logins = true under [place]")},
    "center": {"host": ("127.0.0.1, the agent's relay to the center's broker", ""),
               "port": ("the agent's relay to the center's broker", ""),
               "tls": ("false, the center's broker being on this machine", ""),
               "district": ("[place] district", 'write district = "..." under [place]'),
               "fallback": ("[place] fallback", 'write fallback = "..." under [place]')},
    "ble": {"enabled": ("true, the agent's radio on the virtual air", ""),
            "virtual_air": ("the agent's place on the virtual air (its at)", ""),
            "virtual_air_tx": ("an agent process's controller of the virtual air", ""),
            "company_id": ("0xFFFF, the id the scenario's wearables advertise under", "")},
    "metrics": {"port": ("0 (off): several agents share this machine", "")},
}


class ScenarioError(ValueError):
    pass


# -- the objects the runner gets ----------------------------------------------------------------

@dataclass
class AgentSpec:
    id: str
    position: tuple
    process: bool = False
    settings: dict = field(default_factory=dict)
    line: int = 0


@dataclass
class DeviceSpec:
    name: str
    role: str
    device_id: int
    position: tuple
    agent: str
    heartbeat_s: float = 30.0
    fix: bool = True
    board: bool = False
    group: int | None = None   # the table entry of a row (count > 1): its devices may share a connection

    @property
    def hex_id(self):
        return "%08x" % self.device_id


@dataclass
class Event:
    at_s: float
    do: str
    name: str | None = None
    device: str | None = None
    agent: str | None = None
    button: str | None = None
    status: str | None = None
    of: str | None = None
    for_s: float | None = None
    path: list = field(default_factory=list)   # (lat, lon) points of a walk
    speed_mps: float = 1.4
    update_s: float = 2.0
    monitor: bool = True
    line: int = 0


@dataclass
class Expect:
    what: str
    line: int
    type: str | None = None
    device: str | None = None
    devices: list = field(default_factory=list)
    agent: str | None = None
    center: str = "district"
    after: str | None = None
    within_s: float | None = None
    count: int | None = None
    action: str | None = None
    status: str | None = None
    max_error_m: float | None = None
    location: str | None = None  # the alert's location.source
    cameras: list = field(default_factory=list)  # camera ids that must be among the alert's cameras
    narrate: str | None = None   # a story line for ``ansim demo``; the runner does not judge it

    def describe(self):
        parts = [self.what]
        for key in ("type", "device", "action", "status", "agent", "location"):
            if getattr(self, key):
                parts.append("%s=%s" % (key, getattr(self, key)))
        if self.devices and not self.device:
            more = len(self.devices) - 6
            parts.append("devices=%s%s" % (",".join(self.devices[:6]), " (+%d)" % more if more > 0 else ""))
        if self.cameras:
            parts.append("cameras=%s" % ",".join(self.cameras))
        if self.what in ("alert", "no_alert") and self.center != "district":
            parts.append("center=%s" % self.center)
        if self.count is not None:
            parts.append("count=%d" % self.count)
        if self.max_error_m is not None:
            parts.append("max_error_m=%g" % self.max_error_m)
        if self.within_s is not None:
            parts.append("within %gs of %s" % (self.within_s, self.after or "the start"))
        return " ".join(parts)


@dataclass
class Scenario:
    path: Path
    name: str
    description: str
    seed: int
    duration_s: float
    place: Place
    district: str
    fallback: str
    logins: bool
    ack: str | None
    ack_delay_s: float
    agents: list
    devices: dict          # name -> DeviceSpec, in file order
    cameras: list          # (id, (lat, lon))
    facilities: list       # (id, kind, name, (lat, lon))
    events: list
    expects: list

    def by_role(self, role):
        return [d for d in self.devices.values() if d.role == role]


# -- reading ------------------------------------------------------------------------------------

class _Reader:
    """Checks one file, remembering where each table starts so errors can name its line."""

    def __init__(self, path, text):
        self.path, self.text = path, text
        self.lines = text.splitlines()

    def fail(self, where, message):
        raise ScenarioError("%s:%s: %s" % (self.path, where, message))

    def line_of(self, table, index=None):
        """The line of ``[table]`` or of the index-th ``[[table]]`` (1-based), 0 if absent."""
        pattern = re.compile(r"^\s*\[\[\s*%s\s*\]\]" % re.escape(table) if index is not None
                             else r"^\s*\[\s*%s\s*\]" % re.escape(table))
        seen = 0
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                if index is None or seen == index:
                    return number
                seen += 1
        return 0

    def line_of_key(self, table, index, key):
        """The line of ``key = ..`` (or ``key.sub = ..``) under that table's header, 0 if the
        table does not give it (then errors name the header's line)."""
        start = self.line_of(table, index)
        if not start:
            return 0
        assignment = re.compile(r"""^\s*(%s|"%s"|'%s')\s*[.=]""" % ((re.escape(key),) * 3))
        for number, line in enumerate(self.lines[start:], start + 1):
            if _HEADER.match(line):
                return 0
            if assignment.match(line):
                return number
        return 0

    def where(self, table, index=None, key=None):
        line = (key and self.line_of_key(table, index, key)) or self.line_of(table, index)
        label = "[[%s]] #%d" % (table, index + 1) if index is not None else "[%s]" % table
        return "%d: %s%s" % (line, label, " %s" % key if key else "")

    def keys(self, table, index, given, allowed):
        if not isinstance(given, dict):
            self.fail(self.where(table, index), "must be a table of key = value lines")
        for key in given:
            if key not in allowed:
                self.fail(self.where(table, index, key), "unknown key%s: %s; the keys here are %s"
                          % (_did_you_mean(key, allowed), "rename it" if _did_you_mean(key, allowed) else "remove it",
                             ", ".join(allowed)))

    def keys_for(self, table, index, given, selector, chosen, common, by_choice):
        """Each key of ``given`` is one the ``selector`` value ``chosen`` takes (``common`` or
        ``by_choice[chosen]``): a key that only another value takes is an error naming them."""
        allowed = common + by_choice[chosen]
        for key in given:
            if key not in allowed:
                takers = [c for c, keys in by_choice.items() if key in keys]
                self.fail(self.where(table, index, key), "does not apply to %s = \"%s\"%s%s: remove it; the keys "
                          "of %s = \"%s\" are %s" % (
                              selector, chosen, _did_you_mean(key, by_choice[chosen]),
                              " (it is for %s = %s)" % (selector, ", ".join('"%s"' % c for c in takers))
                              if takers else "", selector, chosen, ", ".join(allowed)))

    def value(self, table, index, given, key, kind, default=None, required=False, choices=None, low=None,
              whose=""):
        """``given[key]`` checked: its kind, one of ``choices`` (``whose``: whose choices they
        are, for the message), at least ``low``."""
        if key not in given:
            if required:
                self.fail(self.where(table, index, key), "missing: write %s = %s" % (key, _example(kind, choices)))
            return default
        value = given[key]
        if not _is(value, kind):
            self.fail(self.where(table, index, key), "%r is not a %s: %s"
                      % (value, _KIND_NAMES[kind], _type_fix(key, value, kind, choices)))
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            self.fail(self.where(table, index, key), "%r is not one of %s%s%s: %s%s = %s" % (
                value, ", ".join(map(str, choices)), " (%s)" % whose if whose else "",
                " (did you mean %s?)" % close[0] if close else "",
                "write " if close or len(choices) == 1 else "write one of them, e.g. ", key,
                _toml_value(close[0]) if close else _example(kind, choices)))
        if low is not None and value < low:
            self.fail(self.where(table, index, key), "%r is below %s: write %s = %s or more"
                      % (value, low, key, _toml_value(low)))
        return float(value) if kind is float else value

    def point(self, table, index, given, key, place, required=True):
        """A position: { east = m, north = m } or { lat = .., lon = .. }."""
        if key not in given:
            if required:
                self.fail(self.where(table, index, key), "missing: write %s = { east = 0, north = 0 } (metres from "
                          "[place] origin) or %s = { lat = 37.5663, lon = 126.9779 }" % (key, key))
            return None
        return self._point(self.where(table, index, key), given[key], place)

    def _point(self, where, value, place):
        if isinstance(value, dict) and set(value) <= {"east", "north"} and value:
            east, north = value.get("east", 0), value.get("north", 0)
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (east, north)):
                return place.latlon(east, north)
        if isinstance(value, dict) and set(value) == {"lat", "lon"}:
            lat, lon = value["lat"], value["lon"]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lat, lon)) \
                    and -90 <= lat <= 90 and -180 <= lon <= 180:
                return (float(lat), float(lon))
        self.fail(where, "%r is not a position: write { east = 30, north = 5 } (metres from [place] origin) or "
                  "{ lat = 37.5663, lon = 126.9779 }" % (value,))


_KIND_NAMES = {bool: "boolean (true or false)", float: "number", int: "whole number", str: "string in quotes",
               list: "list [..]", dict: "table { .. }"}
_HEADER = re.compile(r"^\s*\[\[?\s*[A-Za-z0-9_.\s-]+\]\]?\s*(#.*)?$")  # a table's header line


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return " (did you mean %s?)" % close[0] if close else ""


def _is(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"%s"' % value
    return "%g" % value if isinstance(value, float) else str(value)


def _type_fix(key, value, kind, choices):
    """What to write for a value of the wrong kind: the same value, right, when it is plain
    (count = "6": write count = 6, a number without quotes), else an example."""
    if isinstance(value, str) and kind in (int, float, bool):
        try:
            parsed = tomllib.loads("v = %s" % value.strip())["v"] if re.fullmatch(
                r"\s*([+-]?[0-9_.eE+-]+|true|false)\s*", value) else None
        except tomllib.TOMLDecodeError:
            parsed = None
        if parsed is not None and _is(parsed, kind):
            return "write %s = %s (%s without quotes)" % (key, value.strip(), "a number" if kind is not bool
                                                           else "true or false")
    if kind is float and isinstance(value, str) and re.fullmatch(r"\s*[0-9.]+\s*s\s*", value):
        return "write %s = %s (seconds, a number without quotes)" % (key, value.strip().rstrip("s").strip())
    if kind is str and _is(value, float):
        return 'write %s = "%s" (in quotes)' % (key, value)
    return "write %s = %s" % (key, _example(kind, choices))


def _example(kind, choices):
    if choices:
        return '"%s"' % choices[0] if isinstance(choices[0], str) else str(choices[0])
    return {bool: "true", float: "1.0", int: "1", str: '"..."', list: "[ .. ]", dict: "{ .. }"}[kind]


TOP = ("scenario", "place", "center", "agent", "wearable", "bell", "streetlight", "camera", "facility",
       "event", "expect")


def load(path):
    """The ``Scenario`` in ``path``, or ScenarioError saying what to fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ScenarioError("%s: cannot read it: %s" % (path, err.strerror or err)) from None
    except UnicodeDecodeError:
        raise ScenarioError("%s: not UTF-8 text: save it as UTF-8" % path) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError("%s: not valid TOML: %s: strings go in quotes, tables as [name] or [[name]], one "
                            "key = value per line" % (path, err)) from None
    r = _Reader(path, text)
    for key in raw:
        if key not in TOP:
            r.fail("%d: [%s]" % (r.line_of(key) or r.line_of(key, 0), key), "unknown table%s; the tables are %s"
                   % (_did_you_mean(key, TOP), ", ".join(TOP)))
    for table in ("scenario", "place", "center"):
        if table in raw and not isinstance(raw[table], dict):
            r.fail("%d: %s" % (r.line_of(table, 0), table), "write [%s] once, not [[%s]]" % (table, table))
    for table in ("agent", "wearable", "bell", "streetlight", "camera", "facility", "event", "expect"):
        if table in raw and not isinstance(raw[table], list):
            r.fail("%d: [%s]" % (r.line_of(table), table), "write [[%s]] (double brackets): there may be several"
                   % table)

    head = raw.get("scenario", {})
    r.keys("scenario", None, head, ("name", "description", "seed", "duration_s"))
    name = r.value("scenario", None, head, "name", str, default=path.stem)
    description = r.value("scenario", None, head, "description", str, default="")
    seed = r.value("scenario", None, head, "seed", int, default=1)
    duration_s = r.value("scenario", None, head, "duration_s", float, default=30.0, low=1)

    place_raw = raw.get("place", {})
    r.keys("place", None, place_raw, ("origin", "district", "fallback", "logins"))
    origin = SEOUL_CITY_HALL
    if "origin" in place_raw:
        origin = r._point(r.where("place", None, "origin"), place_raw["origin"], Place(SEOUL_CITY_HALL))
    place = Place(origin)
    district = r.value("place", None, place_raw, "district", str, default="jung-gu")
    fallback = r.value("place", None, place_raw, "fallback", str, default="citywide")
    logins = r.value("place", None, place_raw, "logins", bool, default=False)

    center_raw = raw.get("center", {})
    r.keys("center", None, center_raw, ("ack", "ack_delay_s"))
    ack = r.value("center", None, center_raw, "ack", str, default="received", choices=ACK_STATUSES + ("none",))
    ack_delay_s = r.value("center", None, center_raw, "ack_delay_s", float, default=0.0, low=0)

    agents = []
    for i, a in enumerate(raw.get("agent", [])):
        r.keys("agent", i, a, ("id", "at", "process", "settings"))
        ident = r.value("agent", i, a, "id", str, required=True)
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,58}", ident):
            fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", ident).strip("-")[:58] or "edge-a"
            r.fail(r.where("agent", i, "id"), "%r: letters, digits, '.', '_', '-', at most 58 characters: write "
                   "e.g. id = \"%s\"" % (ident, fixed))
        if any(x.id == ident for x in agents):
            r.fail(r.where("agent", i, "id"), "%r is used twice: give each agent its own id" % ident)
        settings = r.value("agent", i, a, "settings", dict, default={})
        for section, values in settings.items():
            if section not in AGENT_SECTIONS or not isinstance(values, dict):
                r.fail(r.where("agent", i, "settings"), "%r: settings hold agent.toml sections as tables, e.g. "
                       "settings = { center = { escalation_s = 3 } }; the sections are %s"
                       % (section, ", ".join(AGENT_SECTIONS)))
            for key in values:
                if key in RUNNER_SETS.get(section, {}):
                    what, how = RUNNER_SETS[section][key]
                    r.fail(r.where("agent", i, "settings"), "[%s] %s: the runner sets it itself (to %s): remove it "
                           "from settings%s" % (section, key, what, " and " + how if how else ""))
        agents.append(AgentSpec(ident, r.point("agent", i, a, "at", place, required=False) or place.origin,
                                r.value("agent", i, a, "process", bool, default=False), settings,
                                r.line_of("agent", i)))
        _check_settings(r, i, agents[-1], district, fallback)
    if not agents:
        r.fail("0: [[agent]]", "no agent: add [[agent]] with id = \"edge-a\" and at = { east = 0, north = 0 }")
    agent_ids = [a.id for a in agents]

    devices = {}
    for role in ("wearable", "bell", "streetlight"):
        numbering = ROLES[role] + 1
        for i, d in enumerate(raw.get(role, [])):
            allowed = ("id", "name", "at", "count", "step", "agent", "board") + \
                (("fix",) if role == "wearable" else ("heartbeat_s",))
            r.keys(role, i, d, allowed)
            count = r.value(role, i, d, "count", int, default=1, low=1)
            first = d.get("id")
            if first is not None:
                if not (isinstance(first, str) and re.fullmatch(r"[0-9a-f]{8}", first)):
                    r.fail(r.where(role, i, "id"), "%r: write 8 lowercase hex digits, e.g. id = \"%08x\""
                           % (first, numbering))
                numbering = int(first, 16)
            label = r.value(role, i, d, "name", str, default=None)
            start = r.point(role, i, d, "at", place)
            step = d.get("step", {"east": 0, "north": 0})
            step_m = r._point(r.where(role, i, "step"), step, Place((0.0, 0.0)))  # validated shape
            step_m = (step.get("east", 0), step.get("north", 0)) if "lat" not in step else None
            if step_m is None:
                r.fail(r.where(role, i, "step"), "a step is in metres: write step = { east = 20, north = 0 }")
            agent = r.value(role, i, d, "agent", str, default=agent_ids[0], choices=agent_ids)
            board = r.value(role, i, d, "board", bool, default=False)
            if board and count > 1:
                r.fail(r.where(role, i, "board"), "a board runs one device (each is a MicroPython VM): set count = 1 "
                       "or board = false")
            east0, north0 = place.metres(*start)
            for n in range(count):
                device_id = numbering + n
                label_n = (label if count == 1 else "%s%d" % (label, n + 1)) if label else "%08x" % device_id
                if label_n in devices or any(x.device_id == device_id for x in devices.values()):
                    r.fail(r.where(role, i, "id" if first else "name"), "%s %s is given twice: each device needs its "
                           "own id and name" % (role, label_n))
                devices[label_n] = DeviceSpec(
                    label_n, role, device_id, place.latlon(east0 + n * step_m[0], north0 + n * step_m[1]), agent,
                    heartbeat_s=r.value(role, i, d, "heartbeat_s", float, default=30.0, low=1),
                    fix=r.value(role, i, d, "fix", bool, default=True), board=board,
                    group=r.line_of(role, i) if count > 1 else None)
            numbering += count
    cameras = []
    for i, c in enumerate(raw.get("camera", [])):
        r.keys("camera", i, c, ("id", "at"))
        cameras.append((r.value("camera", i, c, "id", str, required=True), r.point("camera", i, c, "at", place)))
    facilities = []
    for i, f in enumerate(raw.get("facility", [])):
        r.keys("facility", i, f, ("id", "kind", "name", "at"))
        facilities.append((r.value("facility", i, f, "id", str, required=True),
                           r.value("facility", i, f, "kind", str, default="police_box"),
                           r.value("facility", i, f, "name", str, default=f.get("id", "")),
                           r.point("facility", i, f, "at", place)))

    events = [_event(r, i, e, place, devices, agent_ids) for i, e in enumerate(raw.get("event", []))]
    names = [e.name for e in events if e.name]
    expects = [_expect(r, i, x, place, devices, cameras, agent_ids, names) for i, x in enumerate(raw.get("expect", []))]
    if not expects:
        r.fail("0: [[expect]]", "no expectation: a scenario states its outcome; add [[expect]] what = \"alert\" ...")
    return Scenario(path, name, description, seed, duration_s, place, district, fallback, logins,
                    None if ack == "none" else ack, ack_delay_s, agents, devices, cameras, facilities,
                    sorted(events, key=lambda e: e.at_s), expects)


def _check_settings(r, i, agent, district, fallback):
    """The agent's own config check (edge_agent/config.py) on what the runner will give it,
    before anything starts: first without the scenario's settings (a problem there is [place]'s),
    then with them."""
    sections = {"agent": {"id": agent.id, "site": district, "registry": "registry.toml",
                          "position": {"lat": agent.position[0], "lon": agent.position[1]}},
                "center": {"host": "127.0.0.1", "tls": False, "district": district, "fallback": fallback}}
    for table, given in (("place", {}), ("agent", agent.settings)):
        for section, values in given.items():
            sections[section] = {**sections.get(section, {}), **values}
        try:
            agent_config.validate(sections, r.path)
        except agent_config.ConfigError as err:
            problem = _with_fix(str(err).split(": ", 1)[-1])
            named = re.fullmatch(r"\[\w+\] (site|district|fallback): (.*)", problem, re.S)
            if table == "place" and named:  # "[center] fallback: 'jung-gu' is also the district.."
                r.fail(r.where("place", None, "fallback" if named[1] == "fallback" else "district"), named[2])
            if table == "place":
                r.fail(r.where("agent", i), problem)
            r.fail(r.where("agent", i, "settings"), problem)


def _with_fix(problem):
    """The agent's config error, with what to write when it names a range but no fix
    ("[supervision] mains_s: must be at least 10, got 5": write mains_s = 10 or more)."""
    m = re.match(r"\[\w+\] (\w+): must be (at least|at most|between) (\S+?)(?: and (\S+?))?, got ", problem)
    if not m:
        return problem
    key, how, low, high = m.groups()
    fix = {"at least": "%s = %s or more" % (key, low), "at most": "%s = %s or less" % (key, low),
           "between": "%s = %s to %s" % (key, low, high)}[how]
    return "%s: write %s in settings" % (problem, fix)


DOS = ("press", "walk", "ack", "outage")
EVENT_KEYS = ("at_s", "do", "name")  # every event's; then each do's own:
DO_KEYS = {"press": ("device", "button"), "walk": ("device", "path", "speed_mps", "update_s", "monitor", "agent"),
           "ack": ("device", "status"), "outage": ("of", "for_s", "agent", "device")}
OUTAGE_KEYS = {"uplink": ("agent",), "center_broker": (), "local_broker": ("agent",), "agent": ("agent",),
               "wifi": ("device",), "power": ("device",)}  # an outage's, besides of and for_s
EXPECT_KEYS = ("what", "after", "within_s", "narrate")  # every expectation's; then each what's own:
WHAT_KEYS = {"alert": ("type", "device", "agent", "center", "count", "location", "cameras"),
             "light": ("action", "device", "devices", "near", "radius_m"),
             "ack": ("device", "status"), "heard": ("device", "agent"), "position": ("device", "max_error_m", "type")}
WHAT_KEYS.update(no_alert=WHAT_KEYS["alert"], no_light=WHAT_KEYS["light"])


def _device(r, table, i, given, devices, roles, required=True, key="device"):
    name = given.get(key)
    if name is None:
        if required:
            r.fail(r.where(table, i, key), "missing: write device = \"<a device's name or id>\"")
        return None
    if name not in devices:
        by_id = [d for d in devices.values() if d.hex_id == name]
        if not by_id:
            known = [n for n, d in devices.items() if not roles or d.role in roles] or list(devices)
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.4)
            if not devices:
                r.fail(r.where(table, i, key), "%r: the scenario has no device: add [[wearable]], [[bell]] or "
                       "[[streetlight]] with name = %s and at = { east = .., north = .. }" % (name, _toml_value(str(name))))
            kinds = " and ".join(x + "s" for x in roles) if len(known) < len(devices) else "devices"
            more = " (+%d)" % (len(known) - 12) if len(known) > 12 else ""
            r.fail(r.where(table, i, key), "%r is no device of this scenario%s; the %s are %s%s: write %s = %s" % (
                name, " (did you mean %s?)" % close[0] if close else "", kinds, ", ".join(known[:12]), more, key,
                _toml_value(close[0] if close else known[0])))
        name = by_id[0].name
    if roles and devices[name].role not in roles:
        fitting = [n for n, d in devices.items() if d.role in roles]
        r.fail(r.where(table, i, key), "%s is a %s; here it must be a %s: %s" % (
            name, devices[name].role, " or ".join(roles), "write %s = %s (one of %s)" % (
                key, _toml_value(fitting[0]), ", ".join(fitting[:12])) if fitting else "add a [[%s]]" % roles[0]))
    return name


def _event(r, i, e, place, devices, agent_ids):
    r.keys("event", i, e, EVENT_KEYS + tuple(dict.fromkeys(k for keys in DO_KEYS.values() for k in keys)))
    do = r.value("event", i, e, "do", str, required=True, choices=DOS)
    r.keys_for("event", i, e, "do", do, EVENT_KEYS, DO_KEYS)
    ev = Event(r.value("event", i, e, "at_s", float, required=True, low=0), do,
               name=r.value("event", i, e, "name", str), line=r.line_of("event", i))
    ev.agent = r.value("event", i, e, "agent", str, default=agent_ids[0], choices=agent_ids)
    if do == "press":
        ev.device = _device(r, "event", i, e, devices, ("wearable", "bell"))
        role = devices[ev.device].role
        ev.button = r.value("event", i, e, "button", str, default="sos", choices=BUTTONS[role],
                            whose="a %s's buttons" % role)
    elif do == "ack":
        ev.device = _device(r, "event", i, e, devices, ("wearable", "bell"))
        ev.status = r.value("event", i, e, "status", str, required=True, choices=ACK_STATUSES)
    elif do == "walk":
        ev.device = _device(r, "event", i, e, devices, ("wearable",))
        points = r.value("event", i, e, "path", list, required=True)
        ev.path = [r._point(r.where("event", i, "path"), p, place) for p in points]
        if len(ev.path) < 1:
            r.fail(r.where("event", i, "path"), "give at least the end: path = [{ east = 200, north = 0 }]")
        ev.path.insert(0, devices[ev.device].position)
        ev.speed_mps = r.value("event", i, e, "speed_mps", float, default=1.4, low=0.1)
        ev.update_s = r.value("event", i, e, "update_s", float, default=2.0, low=0.1)
        ev.monitor = r.value("event", i, e, "monitor", bool, default=True)
    elif do == "outage":
        ev.of = r.value("event", i, e, "of", str, required=True, choices=OUTAGES)
        r.keys_for("event", i, e, "of", ev.of, EVENT_KEYS + ("of", "for_s"), OUTAGE_KEYS)
        ev.for_s = r.value("event", i, e, "for_s", float, default=None, low=0)
        if "agent" in OUTAGE_KEYS[ev.of] and "agent" not in e and len(agent_ids) > 1:
            r.fail(r.where("event", i, "agent"), "missing: an outage of %s is one agent's and there are %d: write "
                   "agent = \"%s\" (one of %s)" % (ev.of, len(agent_ids), agent_ids[0], ", ".join(agent_ids)))
        if ev.of in ("wifi", "power"):
            ev.device = _device(r, "event", i, e, devices, ("bell", "streetlight") if ev.of == "wifi" else ())
    return ev


def _expect(r, i, x, place, devices, cameras, agent_ids, names):
    r.keys("expect", i, x, EXPECT_KEYS + tuple(dict.fromkeys(k for keys in WHAT_KEYS.values() for k in keys)))
    what = r.value("expect", i, x, "what", str, required=True, choices=EXPECTS)
    r.keys_for("expect", i, x, "what", what, EXPECT_KEYS, WHAT_KEYS)
    ex = Expect(what, r.line_of("expect", i))
    ex.narrate = r.value("expect", i, x, "narrate", str)
    ex.after = r.value("expect", i, x, "after", str, choices=names or None)
    if ex.after is not None and not names:
        r.fail(r.where("expect", i, "after"), "no event has a name: add name = \"%s\" to the event" % ex.after)
    ex.within_s = r.value("expect", i, x, "within_s", float, low=0)
    ex.agent = r.value("expect", i, x, "agent", str, choices=agent_ids)  # alert, no_alert and heard take it
    if what in ("alert", "no_alert"):
        ex.type = r.value("expect", i, x, "type", str, choices=ALERT_TYPES)
        ex.device = _device(r, "expect", i, x, devices, (), required=False)
        ex.center = r.value("expect", i, x, "center", str, default="district", choices=("district", "fallback"))
        ex.count = r.value("expect", i, x, "count", int, low=1 if what == "alert" else 0)
        ex.location = r.value("expect", i, x, "location", str, choices=LOCATION_SOURCES)
        ex.cameras = r.value("expect", i, x, "cameras", list, default=[])
        known = [ident for ident, _ in cameras]
        for ident in ex.cameras:
            if ident not in known:
                r.fail(r.where("expect", i, "cameras"), "%r is no [[camera]] of this scenario%s; they are %s" % (
                    ident, _did_you_mean(ident, known), ", ".join(known) or "none"))
    elif what in ("light", "no_light"):
        ex.action = r.value("expect", i, x, "action", str, required=True, choices=LIGHT_ACTIONS)
        if "device" in x:
            ex.devices = [_device(r, "expect", i, x, devices, ("streetlight",))]
        for name in r.value("expect", i, x, "devices", list, default=[]):
            ex.devices.append(_device(r, "expect", i, {"devices": name}, devices, ("streetlight",), key="devices"))
        if "radius_m" in x and "near" not in x:
            r.fail(r.where("expect", i, "radius_m"), "radius_m is the radius around near, which is missing: add near = "
                   "{ east = .., north = .. } (the circle's centre), or remove radius_m and name the lights with "
                   "device = \"..\" or devices = [..]")
        if "near" in x:
            centre = r.point("expect", i, x, "near", place)
            radius = r.value("expect", i, x, "radius_m", float, required=True, low=0)
            ex.devices += [d.name for d in devices.values()
                           if d.role == "streetlight" and place.distance_m(centre, d.position) <= radius]
        if not ex.devices:
            r.fail(r.where("expect", i), "which lights? write device = \"..\", devices = [..] or near = { east = 0, "
                   "north = 0 } with radius_m = 50 (that one selected no light)")
    elif what == "ack":
        ex.device = _device(r, "expect", i, x, devices, ("wearable", "bell"))
        ex.status = r.value("expect", i, x, "status", str, choices=ACK_STATUSES)
    elif what == "heard":
        ex.device = _device(r, "expect", i, x, devices, ("wearable",))
    elif what == "position":
        ex.device = _device(r, "expect", i, x, devices, ("wearable",))
        ex.type = r.value("expect", i, x, "type", str, default="sos", choices=ALERT_TYPES)
        ex.max_error_m = r.value("expect", i, x, "max_error_m", float, required=True, low=0)
    return ex

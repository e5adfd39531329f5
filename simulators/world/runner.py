"""``ansim sim run``: a scenario on real brokers with real agents, lightweight devices, a few
devices running their real firmware on virtual boards (``boards``) and the virtual air, its
events on a timeline, its expectations judged.

Why each part is real: the agents are ``edge_agent.service.Agent`` (in this process, or a
child process as systemd runs it when the scenario kills one), the brokers are mosquitto, the
air is bumble's (each agent's scanner at its own position hears each wearable, on a board
too, through the path-loss model of ``radio_model``). Each agent's link to the center passes
a TCP relay of its own, so one agent's uplink can fail while the rest of the district works.
The observers are independent of the agents: a subscriber of its own on the center's broker
(alerts, ``heard`` reports, light states) and one on each local broker decoding every
downlink with the device's key.
"""

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from ansim_agent import config as config_module
from ansim_agent import logs
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.hardware.ble_radio import ThreadedAir
from ansim_simulators.fixtures.broker import MosquittoBroker, free_port
from ansim_simulators.center.control_center import ControlCenter
from ansim_simulators.world.agent_process import AgentProcess
from ansim_simulators.world.tcp_relay import TcpRelay

from . import devices as dev
from .boards import Board, BoardDevice, WearableBoard
from . import place as place_module
from .expect import Judge, Record
from .radio_model import PathLoss
from .scenario import ScenarioError, load

STEP_S = 0.02
SETUP_WAIT_S = 30
ROOT = "ansim/center/v1/"
SHARED_PER_LINK = 50
OBSERVER_USER = "scenario-observer"  # with [place] logins: reads every down topic, nothing else


def run_files(paths, keep=False):
    """Run each scenario file (a folder: its *.toml); 0 if every one held, 1 if one did not, 2 if
    a file is not a valid scenario. A summary line per file at the end."""
    status = 0
    expanded = []
    for path in map(Path, paths):  # a folder: every scenario in it
        expanded += sorted(path.glob("*.toml")) if path.is_dir() else [path]
    outcomes = []
    for path in expanded:
        started = time.monotonic()
        try:
            held = World(load(path)).run(keep=keep)
        except ScenarioError as err:
            print("ERROR %s" % err, flush=True)
            outcomes.append((path, "INVALID", time.monotonic() - started))
            status = max(status, 2)
            continue
        outcomes.append((path, "HELD" if held else "DID NOT HOLD", time.monotonic() - started))
        if not held:
            status = max(status, 1)
    if len(outcomes) > 1:
        print("\n".join(["", "%d scenarios:" % len(outcomes)] +
                         ["  %-13s %5.1f s  %s" % (what, took, path) for path, what, took in outcomes]), flush=True)
    return status


class Uplink(TcpRelay):
    """An agent's TCP path to the center's broker; ``down()`` breaks it and refuses new
    connections until ``up()``."""

    def down(self):
        self._real, self.upstream_port = self.upstream_port, free_port()  # nothing listens there
        self.cut()

    def up(self):
        self.upstream_port = getattr(self, "_real", self.upstream_port)


class CenterObserver:
    """The scenario's own subscriber on the center's broker: every alert (district and
    fallback), heard report and light state, with arrival times. Reconnects after a broker
    restart."""

    def __init__(self, port, record, lock):
        self.record, self.lock = record, lock
        self.births = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scenario-observer",
                                  protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = lambda c, *a: c.subscribe(ROOT + "#", qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _c, _u, msg):
        now = time.time()
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if len(parts) == 6 and parts[4] == "alerts":
                self.record.alerts.append((now, parts[3], body))
            elif len(parts) == 6 and parts[4] == "heard":
                self.record.heard.append((now, body))
            elif len(parts) == 6 and parts[3] == "agents" and parts[5] == "state" and isinstance(body, dict):
                self.births[parts[4]] = body.get("state")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class DownlinkObserver:
    """A subscriber on one local broker decoding each downlink with its device's key."""

    def __init__(self, port, devices, record, lock, name, login=(None, None)):
        self.devices, self.record, self.lock = devices, record, lock  # device_id -> (name, DeviceKeys)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scenario-downlinks-" + name,
                                  protocol=mqtt.MQTTv311)
        if login[0]:
            self.client.username_pw_set(*login)
        self.client.reconnect_delay_set(0.1, 1)
        self.ready = threading.Event()
        self.client.on_connect = lambda c, *a: (c.subscribe(topics.ROOT + "dev/+/down", qos=1), self.ready.set())
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _c, _u, msg):
        try:
            _, device_id, _ = topics.parse(msg.topic)
            name, keys = self.devices[device_id]
            frame = frames.unpack(msg.payload, keys)
        except (KeyError, frames.FrameError):
            return
        with self.lock:
            self.record.commands.append((time.time(), name, frame))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return "{ %s }" % ", ".join("%s = %s" % (k, _toml(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(_toml(v) for v in value)
    raise TypeError(value)


class World:
    def __init__(self, scenario):
        self.s = scenario
        self.record = Record()
        self.lock = threading.Lock()
        self.keys = {name: os.urandom(16) for name in scenario.devices}
        self.model = PathLoss(seed=scenario.seed)
        self.event_times = {}
        self.agents = {}          # id -> Agent or AgentProcess
        self.walks = []
        self.restores = []        # (monotonic due, callable)

    def say(self, text):
        print(text, flush=True)

    # -- setup ----------------------------------------------------------------------------
    def run(self, keep=False):
        logs.setup("critical")
        started = time.monotonic()
        self.say("scenario %s (%s): %s" % (self.s.name, self.s.path, self.s.description))
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="ansim-scenario-")) if keep else \
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ansim-scenario-")))
            try:
                self._setup(stack, workdir)
                ok = self._timeline()
            except (TimeoutError, RuntimeError, OSError) as err:
                self.say("FAIL  the scenario could not run: %s" % err)
                ok = False
            self._summary()
        self.say("%s %s in %.1f s%s" % ("HELD" if ok else "DID NOT HOLD", self.s.name, time.monotonic() - started,
                                        " (files kept in %s)" % workdir if keep else ""))
        return ok

    def _setup(self, stack, workdir):
        self.workdir = workdir
        self.center_broker = stack.enter_context(MosquittoBroker(workdir=workdir / "center"))
        self.air = ThreadedAir()
        stack.callback(self.air.close)
        self.advertisers = {}  # Advertiser -> Wearable
        self.air.air.rssi_model = self._rssi
        self.passwords = {}
        self.locals = {a.id: stack.enter_context(self._local_broker(workdir / ("local-" + a.id)))
                       for a in self.s.agents}
        self.uplinks = {}
        for a in self.s.agents:
            self.uplinks[a.id] = Uplink(self.center_broker.port)
            stack.callback(self.uplinks[a.id].close)
        self.observer = CenterObserver(self.center_broker.port, self.record, self.lock)
        stack.callback(lambda: self.observer.close())
        self.center = self._center()
        stack.callback(lambda: self.center.stop())
        self._write_site(workdir)
        self.say("  center broker 127.0.0.1:%d; watch it with: ansim center --port %d --registry %s --http-port 0"
                 % (self.center_broker.port, self.center_broker.port, workdir / "registry.toml"))
        for a in self.s.agents:
            self._start_agent(a.id)
        stack.callback(self._stop_agents)
        self._wait(lambda: all(self.observer.births.get(a.id) == "online" for a in self.s.agents),
                   "every agent's birth certificate at the center")
        self.counters = dev.Counters(workdir / "counters.json")
        self.devices = {}
        downlink_keys = {}
        # Devices of a row (count > 1) share MQTT connections, SHARED_PER_LINK each (a mosquitto
        # under the default 1,024 open files takes about 1,000); those a WiFi or power event
        # targets have their own, with their own will, and so does every device under [place]
        # logins (a login and its ACL are one device's).
        alone = {ev.device for ev in self.s.events if ev.do == "outage" and ev.of in ("wifi", "power")}
        shared = {}
        for name, spec in self.s.devices.items():
            key = self.keys[name]
            if spec.role == "wearable" and spec.board:
                self.devices[name] = WearableBoard(spec, key, workdir / "boards", "240ac4%06x" % spec.device_id,
                                                   self.air, self.advertisers.__setitem__, self._sent, self._heard_ack)
                continue
            if spec.role == "wearable":
                self.devices[name] = dev.Wearable(spec, key, self.counters, self.air, on_air=self.advertisers.__setitem__)
                continue
            downlink_keys.setdefault(spec.agent, {})[spec.device_id] = (name, DeviceKeys(key))
            if spec.board:
                self.devices[name] = BoardDevice(spec, key, self.locals[spec.agent].port, workdir / "boards",
                                                 "240ac4%06x" % spec.device_id, login=self._login(spec.hex_id))
                continue
            cls = dev.Bell if spec.role == "bell" else dev.Light
            device = self.devices[name] = cls(spec, key, self.counters)
            if spec.group is None or name in alone or self.s.logins:  # a login is one device's
                dev.Link("127.0.0.1", self.locals[spec.agent].port, [device], "dev-%s" % spec.hex_id,
                         *self._login(spec.hex_id))
            else:
                shared.setdefault((spec.group, spec.agent), []).append(device)
        for (group, agent_id), members in shared.items():
            for i in range(0, len(members), SHARED_PER_LINK):
                dev.Link("127.0.0.1", self.locals[agent_id].port, members[i:i + SHARED_PER_LINK],
                         "devs-%d-%d" % (group, i))
        for agent_id, port in ((a.id, self.locals[a.id].port) for a in self.s.agents):
            watcher = DownlinkObserver(port, downlink_keys.get(agent_id, {}), self.record, self.lock, agent_id,
                                       self._login(OBSERVER_USER))
            stack.callback(watcher.close)
            self._wait(watcher.ready.is_set, "the downlink observer on %s's broker" % agent_id)
        links = {id(d.link): d.link for d in self.devices.values() if isinstance(d, dev.Fixed)}
        for link in links.values():
            link.power_on()
            stack.callback(link.close)
            for device in link.devices.values():
                device.powered = True
        boards = [d for d in self.devices.values() if isinstance(d, Board)]
        for board in boards:
            stack.callback(board.close)
            board.power_on()
        self._wait(lambda: all(d.link.connected.is_set() for d in self.devices.values()
                               if isinstance(d, dev.Fixed)), "every bell and streetlight on its broker")
        for board in boards:
            board.online()
        if self.s.by_role("wearable"):
            self._listen_for_acks()
        counts = [(len(self.s.agents), "agent")] + [(len(self.s.by_role(r)), r) for r in ("wearable", "bell",
                                                                                          "streetlight")]
        self.say("  %s; %s on %s with the real firmware; all up" % (
            ", ".join(_count(n, what) for n, what in counts + [(len(self.s.cameras), "camera")]),
            _count(len(boards), "device"), "a virtual board" if len(boards) == 1 else "virtual boards"))

    def _local_broker(self, directory):
        """An agent's local broker; with ``[place] logins``, as ``ansim provision`` sets a site's:
        every bell and light logs in with its own id and password, the agent as ansim-agent,
        and the ACL of SPEC.md 6.2 confines each (plus a user for this run's downlink observer)."""
        if not self.s.logins:
            return MosquittoBroker(workdir=directory)
        from ansim_tools import provision
        if not self.passwords:
            self.passwords = {name: provision._new_password() for name in
                              [provision.AGENT_USER, OBSERVER_USER] + [d.hex_id for d in self.s.devices.values()]}
        directory.mkdir(parents=True, exist_ok=True)
        passwd = directory / "passwd"
        passwd.write_text("".join("%s:%s\n" % (user, provision._mosquitto_hash(pw))
                                  for user, pw in self.passwords.items()))
        secret = directory / "agent.password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.passwords[provision.AGENT_USER] + "\n")
        acl = provision.ACL.splitlines() + ["user %s" % OBSERVER_USER, "topic read %sdev/+/down" % topics.ROOT]
        return MosquittoBroker(workdir=directory, password_file=passwd, acl=acl)

    def _login(self, user):
        return (user, self.passwords[user]) if self.s.logins else (None, None)

    def _center(self):
        status = self.s.ack
        auto = None if status is None else (lambda body: "test-ok" if body.get("type") == "test_sos" else status)
        return ControlCenter("127.0.0.1", self.center_broker.port, district=self.s.district,
                             fallback=self.s.fallback, auto_ack=auto, ack_delay_s=self.s.ack_delay_s,
                             client_id="scenario-center-%d" % time.monotonic_ns()).start()

    def _write_site(self, workdir):
        lines = []
        for name, spec in self.s.devices.items():
            key_path = workdir / "keys" / (spec.hex_id + ".key")
            key_path.parent.mkdir(exist_ok=True)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.keys[name].hex() + "\n")
            lines += ["[[device]]", 'id = "%s"' % spec.hex_id, 'role = "%s"' % spec.role,
                      "key_file = %s" % _toml(key_path)]
            if spec.role != "wearable":
                lines.append("position = { lat = %r, lon = %r }" % spec.position)
            lines.append("")
        for ident, position in self.s.cameras:
            lines += ["[[camera]]", "id = %s" % _toml(ident), "position = { lat = %r, lon = %r }" % position, ""]
        for ident, kind, name, position in self.s.facilities:
            lines += ["[[facility]]", "id = %s" % _toml(ident), "kind = %s" % _toml(kind), "name = %s" % _toml(name),
                      "position = { lat = %r, lon = %r }" % position, ""]
        (workdir / "registry.toml").write_text("\n".join(lines))
        self.configs = {}
        for a in self.s.agents:
            spec = self.air.call(self.air.air.serve(where=a.position))
            sections = {
                "agent": {"id": a.id, "site": self.s.district, "position": {"lat": a.position[0], "lon": a.position[1]},
                          "data_dir": workdir / ("data-" + a.id), "registry": workdir / "registry.toml",
                          "log_level": "error"},
                "local_mqtt": {"enabled": True, "port": self.locals[a.id].port},
                "center": {"host": "127.0.0.1", "port": self.uplinks[a.id].port, "tls": False,
                           "district": self.s.district, "fallback": self.s.fallback},
                "ble": {"enabled": True, "virtual_air": spec},
                "metrics": {"port": 0},
            }
            if a.process:  # an agent process advertises its acks through a controller of its own
                sections["ble"]["virtual_air_tx"] = self.air.call(self.air.air.serve())
            if self.s.logins:
                sections["local_mqtt"].update(username="ansim-agent",
                                              password_file=workdir / ("local-" + a.id) / "agent.password")
            for section, values in a.settings.items():
                sections.setdefault(section, {}).update(values)
            path = workdir / ("agent-%s.toml" % a.id)
            path.write_text("".join("[%s]\n%s\n" % (n, "".join("%s = %s\n" % (k, _toml(v)) for k, v in vals.items()))
                                    for n, vals in sections.items()))
            try:
                config_module.load(path)  # a bad settings value fails here, naming the key
            except config_module.ConfigError as err:
                raise ScenarioError("%s:%d: [[agent]] %s settings: %s" % (
                    self.s.path, a.line, a.id, str(err).split(": ", 1)[-1])) from None
            self.configs[a.id] = path

    def _start_agent(self, agent_id):
        spec = next(a for a in self.s.agents if a.id == agent_id)
        if spec.process:
            agent = AgentProcess(self.configs[agent_id], self.workdir / ("agent-%s.log" % agent_id))
            agent.start()
        else:
            agent = Agent(config_module.load(self.configs[agent_id]), virtual_air=self.air).start()
        self.agents[agent_id] = agent

    def _stop_agent(self, agent_id, kill=True):
        agent = self.agents.pop(agent_id, None)
        if isinstance(agent, AgentProcess):
            agent.kill9() if kill else agent.stop()
        elif agent is not None:
            agent.stop()

    def _stop_agents(self):
        for agent_id in list(self.agents):
            self._stop_agent(agent_id, kill=False)

    def _rssi(self, advertiser, where):
        wearable = self.advertisers.get(advertiser)
        if wearable is None:
            return advertiser.rssi  # the agents' own acks: heard by all
        return self.model.rssi(place_module.Place(where).distance_m(where, wearable.position))

    def _listen_for_acks(self):
        wearables = [d for d in self.devices.values() if isinstance(d, dev.Wearable)]

        def heard(advertisement):
            if advertisement.is_scan_response:
                return
            try:
                frame = ble.frame_from_advertisement(bytes(advertisement.data))
            except Exception:
                return
            for w in wearables:
                before = len(w.acks)
                if w.heard(frame, time.time()) and len(w.acks) > before:
                    with self.lock:
                        self.record.wearable_acks.append((w.acks[-1][0], w.spec.name, w.acks[-1][1].fields["status"]))

        async def open_():
            scanner = await self.air.air.open_scanner()
            scanner.on("advertisement", heard)
            await scanner.start_scanning(active=False, scan_interval=60, scan_window=60, filter_duplicates=False)
        self.air.call(open_())

    def _sent(self, name, alert_id, position):
        """A wearable board's firmware sent an SOS or test SOS (its own counter) from ``position``."""
        with self.lock:
            self.record.presses[alert_id] = position

    def _heard_ack(self, name, status):
        """A wearable board's firmware heard a center_ack over the air."""
        with self.lock:
            self.record.wearable_acks.append((time.time(), name, status))

    def _wait(self, predicate, what, timeout=SETUP_WAIT_S):
        try:
            waits.until(predicate, timeout, what)
        except AssertionError as err:
            raise TimeoutError(str(err)) from None

    # -- the timeline ---------------------------------------------------------------------
    def _timeline(self):
        start_wall, start = time.time(), time.monotonic()
        self.start_wall = start_wall
        agent_positions = {a.id: a.position for a in self.s.agents}
        judge = Judge(self.s, self.record, self.event_times, agent_positions, start_wall)
        pending = list(self.s.events)
        waiting = []  # acks of alerts not at the center yet: done as soon as the alert is
        # a bell or light says something as it starts (as the firmware's first heartbeat), then every heartbeat_s
        beats = {name: start for name, d in self.devices.items() if isinstance(d, dev.Fixed)}
        while True:
            now = time.monotonic()
            elapsed = now - start
            while pending and pending[0].at_s <= elapsed:
                ev = pending.pop(0)
                if not self._do(ev):
                    waiting.append(ev)
            waiting = [ev for ev in waiting if not self._ack(ev, again=True)]
            for due, work in [r for r in self.restores if r[0] <= now]:
                self.restores.remove((due, work))
                work()
            for name, due in beats.items():
                if due <= now:
                    self.devices[name].heartbeat()
                    beats[name] = now + self.devices[name].spec.heartbeat_s
            for walk in list(self.walks):
                if walk.step(now):
                    self.walks.remove(walk)
            for d in self.devices.values():
                if isinstance(d, dev.Wearable):
                    d.tick()
            with self.lock:
                judge.step(time.time())
            busy = pending or waiting or self.restores or self.walks
            if (judge.decided() and not busy) or elapsed > self.s.duration_s:
                break
            time.sleep(STEP_S)
        with self.lock:
            judge.step(time.time(), final=True)
        self.judge = judge
        return not judge.failed()

    def _do(self, ev):
        """Carry out ``ev``; False for an ack whose alert has not reached the center yet."""
        self.event_times[ev.name or "#%d" % id(ev)] = time.time()
        self.say("  %5.1f s  %s%s" % (ev.at_s, ev.name + ": " if ev.name else "", self._describe(ev)))
        if ev.do == "press":
            device = self.devices[ev.device]
            if not getattr(device, "powered", True):
                self.say("           (%s has no power: the press does nothing)" % ev.device)
            elif isinstance(device, dev.Wearable):
                counter = device.press(ev.button)
                self.record.presses["%s-%d" % (device.spec.hex_id, counter)] = device.position
            elif isinstance(device, WearableBoard):
                device.press(ev.button)  # its firmware says which counter it sent (_sent)
            else:
                device.press()
        elif ev.do == "ack":
            return self._ack(ev)
        elif ev.do == "walk":
            self.walks.append(Walk(self, ev))
        elif ev.do == "outage":
            undo = self._outage(ev)
            if ev.for_s is not None:
                self.restores.append((time.monotonic() + ev.for_s, undo))
        return True

    def _ack(self, ev, again=False):
        """The center acknowledges the device's newest alert; one not there yet (an uplink
        outage) is acknowledged when it arrives, as an operator would. False until then."""
        hex_id = self.s.devices[ev.device].hex_id
        with self.lock:
            ids = [b["alert_id"] for _, c, b in self.record.alerts
                   if c == self.s.district and b.get("device", {}).get("id") == hex_id
                   and b.get("type") in ("sos", "bell_press", "test_sos")]
        if not ids:
            if not again:
                self.say("           (no alert of %s yet: acknowledged when it comes)" % ev.device)
            return False
        if again:
            self.event_times[ev.name or "#%d" % id(ev)] = time.time()
            self.say("  %5.1f s  %s's alert came: the center acknowledges it (%s)"
                     % (time.time() - self.start_wall, ev.device, ev.status))
        self.center.ack(ids[-1], ev.status)
        return True

    def _describe(self, ev):
        if ev.do == "press":
            return "%s presses %s" % (ev.device, ev.button)
        if ev.do == "ack":
            return "the center acknowledges %s's alert: %s" % (ev.device, ev.status)
        if ev.do == "walk":
            return "%s walks %.0f m%s" % (ev.device, _length(self.s.place, _route(self, ev)),
                                          " under walk-home monitoring" if ev.monitor else "")
        target = ev.device or ev.agent
        return "outage of %s (%s)%s" % (ev.of, target if ev.of not in ("center_broker",) else "all",
                                        " for %g s" % ev.for_s if ev.for_s is not None else "")

    def _outage(self, ev):
        """Start the outage; returns what ends it."""
        def say_back(what):
            self.say("  %5.1f s  back: %s" % (time.time() - self.start_wall, what))
        if ev.of == "uplink":
            link = self.uplinks[ev.agent]
            link.down()
            return lambda: (link.up(), say_back("%s's uplink" % ev.agent))
        if ev.of == "center_broker":
            self.center.stop()
            self.center_broker.stop()

            def back():
                self.center_broker.start()
                self.center = self._center()
                say_back("the center's broker")
            return back
        if ev.of == "local_broker":
            broker = self.locals[ev.agent]
            broker.stop()
            return lambda: (broker.start(), say_back("%s's local broker" % ev.agent))
        if ev.of == "agent":
            self._stop_agent(ev.agent, kill=True)
            return lambda: (self._start_agent(ev.agent), say_back("agent %s restarted" % ev.agent))
        device = self.devices[ev.device]
        if isinstance(device, dev.Wearable):
            device.stop()
            device.powered = False

            def powered():
                device.powered = True
                say_back("%s powered" % ev.device)
            return powered
        if isinstance(device, Board):
            if ev.of == "wifi":
                device.wifi(False)
                return lambda: (device.wifi(True), say_back("%s's wifi" % ev.device))
            device.power_off()
            return lambda: (device.power_on(), say_back("%s's power" % ev.device))
        device.link.power_off()
        device.powered = ev.of == "wifi"  # on WiFi loss it keeps running, frames wait

        def restore():
            device.link.power_on()
            device.powered = True
            say_back("%s's %s" % (ev.device, ev.of))
        return restore

    def _summary(self):
        with self.lock:
            alerts = list(self.record.alerts)
        start = getattr(self, "start_wall", None)
        ids = {}
        for t, center, body in alerts:
            entry = ids.setdefault((center, body.get("alert_id")), [body.get("type"), t, []])
            entry[2].append(body.get("agent", {}).get("id"))
        self.say("  at the center: %s" % ("; ".join(
            "%s %s %s via %s%s" % (c, kind, i, ",".join(a), " at +%.2f s" % (t - start) if start else "")
            for (c, i), (kind, t, a) in ids.items()) or "no alert"))


class Walk:
    """A wearable walking a path at ``speed_mps``; with ``monitor`` the center runs walk-home
    monitoring for it (start with the route, position updates every ``update_s``, arrived)."""

    def __init__(self, world, ev):
        self.world, self.ev = world, ev
        self.wearable = world.devices[ev.device]
        self.route = _route(world, ev)
        self.metres = [world.s.place.metres(*p) for p in self.route]
        self.length = place_module.path_length(self.metres)
        self.start = time.monotonic()
        self.next_update = self.start + ev.update_s
        self.session = "walk-%s" % self.wearable.spec.hex_id
        if ev.monitor:
            world.center.monitor(ev.agent, {"session": self.session, "action": "start",
                                            "route": [list(p) for p in self.route]})

    def step(self, now):
        """Move on; True once arrived."""
        fraction = min(1.0, (now - self.start) * self.ev.speed_mps / max(self.length, 1e-9))
        east, north = place_module.along(self.metres, fraction)
        self.wearable.position = self.world.s.place.latlon(east, north)
        if fraction >= 1.0:
            if self.ev.monitor:
                self.world.center.monitor(self.ev.agent, {"session": self.session, "action": "arrived"})
            return True
        if self.ev.monitor and now >= self.next_update:
            self.next_update = now + self.ev.update_s
            self.world.center.monitor(self.ev.agent, {"session": self.session, "action": "update",
                                                      "position": list(self.wearable.position)})
        return False


def _count(n, what):
    """"1 wearable", "2 wearables", "0 bells"."""
    return "%d %s%s" % (n, what, "" if n == 1 else "s")


def _route(world, ev):
    """A walk's route: from where its wearable is now (a second walk goes on from where the
    first ended) through the event's points."""
    return [world.devices[ev.device].position] + ev.path[1:]


def _length(place, path):
    return place_module.path_length([place.metres(*p) for p in path])

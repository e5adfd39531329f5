"""``ansim sim load``: thousands of lightweight bells pressing against one real agent.

Why: a district has thousands of devices; what matters is whether the agent keeps up and
loses nothing, and how long a press takes to reach the center under load. The bells are
``devices.Bell`` (real keys, counters and frames) sharing MQTT connections
(``--per-connection``; thousands of sockets and paho threads would measure this process, not
the agent: so there is no per-device last will, and per-device broker logins do not apply).
The agent runs as its own process, as systemd runs it, so it does not share this process's
interpreter with the generator. The center's own subscriber counts every alert; latency is
press (the publish call) to arrival at that subscriber, on one clock. The baseline, in the
same run on the same brokers: a raw paho relay (tools/bench_agent's) republishing the same
presses to the center, timed the same way.
"""

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.agent_process import AgentProcess

from . import devices as dev
from .place import Place
from .scenario import SEOUL_CITY_HALL, DeviceSpec

SPACING_M = 15.0


def say(text):
    print(text, flush=True)


class Arrivals:
    """The center's own subscriber: first arrival time of each alert id, and copies."""

    def __init__(self, port, topic_filter, client_id):
        self.first, self.copies = {}, 0
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *a: (c.subscribe(topic_filter, qos=1), self.ready.set())
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _c, _u, msg):
        now = time.monotonic()
        key = _alert_id(msg)
        if key is None:
            return
        with self._lock:
            self.copies += 1
            self.first.setdefault(key, now)

    def count(self):
        with self._lock:
            return len(self.first)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alert_id(msg):
    if msg.topic.startswith("ansim/center/v1/agents/"):
        return msg.topic if b'"online"' in msg.payload else None
    if msg.topic.startswith("raw/"):  # the baseline relays the frame: its topic and counter name it
        device = msg.topic.split("/")[4]
        return "%s-%d" % (device, int.from_bytes(msg.payload[5:9], "big") & 0x0FFFFFFF)
    return json.loads(msg.payload)["alert_id"]


def _site(directory, n):
    """N bells on a grid around the origin, their keys, a registry and an agent config."""
    place = Place(SEOUL_CITY_HALL)
    side = max(1, int(n ** 0.5))
    bells, lines = [], []
    keys_dir = directory / "keys"
    keys_dir.mkdir(parents=True)
    for i in range(n):
        spec = DeviceSpec("bell%d" % i, "bell", 0x00020001 + i,
                          place.latlon((i % side) * SPACING_M, (i // side) * SPACING_M), "edge-load")
        key = os.urandom(16)
        key_path = keys_dir / (spec.hex_id + ".key")
        key_path.write_text(key.hex() + "\n")
        key_path.chmod(0o600)
        bells.append((spec, key))
        lines += ["[[device]]", 'id = "%s"' % spec.hex_id, 'role = "bell"', 'key_file = "keys/%s.key"' % spec.hex_id,
                  "position = { lat = %r, lon = %r }" % spec.position, ""]
    (directory / "registry.toml").write_text("\n".join(lines))
    return bells


def _config(directory, local_port, center_port):
    path = directory / "agent.toml"
    path.write_text("\n".join([
        "[agent]", 'id = "edge-load"', 'site = "jung-gu"',
        "position = { lat = %r, lon = %r }" % SEOUL_CITY_HALL, 'data_dir = "data"', 'registry = "registry.toml"',
        'log_level = "warning"',
        "[local_mqtt]", "port = %d" % local_port,
        "[center]", 'host = "127.0.0.1"', "port = %d" % center_port, "tls = false", 'district = "jung-gu"',
        "escalation_s = 3600",
        "[metrics]", "port = 0", ""]))
    return path


def _press_loop(bells, rate, duration, pressed, topic_prefix=None):
    """Presses at ``rate`` per second for ``duration`` s, round-robin over the bells; records
    each alert id's press time in ``pressed``. Returns (presses, seconds it took)."""
    count = int(rate * duration)
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        bell = bells[i % len(bells)]
        at = time.monotonic()
        pressed["%s-%d" % (bell.spec.hex_id, bell.press())] = at
    return count, time.monotonic() - start


def _links(bells, port, per_connection, prefix):
    links = [dev.Link("127.0.0.1", port, bells[i:i + per_connection], "%s-%d" % (prefix, i))
             for i in range(0, len(bells), per_connection)]
    for link in links:
        link.power_on()
    deadline = time.monotonic() + 60
    while not all(link.connected.is_set() for link in links):
        if time.monotonic() > deadline:
            raise SystemExit("sim load: the bells' connections did not all come up within 60 s")
        time.sleep(0.05)
    return links


def _drain(arrivals, expected, drain_s):
    """Until every press arrived, or nothing new for ``drain_s`` seconds."""
    last, changed = -1, time.monotonic()
    while True:
        got = arrivals.count()
        if got >= expected:
            return
        if got != last:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > drain_s:
            return
        time.sleep(0.05)


def _measure(label, bells, port, per_connection, rate, duration, arrivals, drain_s, settle=False):
    connected = time.monotonic()
    links = _links(bells, port, per_connection, label)
    pressed = {}
    settled = None
    if settle:
        # the agent answers each bell's "online" with a time frame: 5,000 at once. Pressing
        # starts once every bell has its own, so the run measures the steady state.
        if _wait_for(lambda: all(b.received for b in bells), 120):
            settled = time.monotonic() - connected
    try:
        sent, took = _press_loop(bells, rate, duration, pressed)
        _drain(arrivals, len(pressed), drain_s)
    finally:
        for link in links:
            link.close()
    with arrivals._lock:
        first, copies = dict(arrivals.first), arrivals.copies
    start = min(pressed.values()) if pressed else 0.0
    timed = sorted(((first[a] - t) * 1e3, t - start) for a, t in pressed.items() if a in first)
    latencies = [ms for ms, _ in timed]
    # when, in the run, the presses over p99 were made: periodic stalls show as regular times
    slow_at = sorted({round(at, 1) for ms, at in timed[int(0.99 * len(timed)):]})
    received = len(latencies)
    span = (max(first.values()) - min(pressed.values())) if first else 0.0
    result = {"what": label, "offered_per_s": rate, "sent": sent, "send_rate_per_s": sent / took if took else 0.0,
              "received": received, "lost": sent - received, "duplicates": copies - len(first),
              "unexpected": len(set(first) - set(pressed)),
              "delivered_per_s": received / span if span else 0.0, "over_p99_at_s": slow_at,
              "online_to_time_frames_s": settled}
    if latencies:
        result.update({"p50_ms": _pct(latencies, 0.50), "p95_ms": _pct(latencies, 0.95),
                       "p99_ms": _pct(latencies, 0.99), "max_ms": latencies[-1],
                       "mean_ms": statistics.fmean(latencies)})
    return result


def _spans(times):
    """0.1, 0.2, 0.3, 5.1 -> "0.1-0.3, 5.1": the moments of a run, compactly."""
    spans = []
    for t in times:
        if spans and t - spans[-1][1] <= 0.15:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return ", ".join("%.1f" % a if a == b else "%.1f-%.1f" % (a, b) for a, b in spans[:12])


def _pct(ordered, q):
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _print(r):
    lat = ("p50 %7.1f ms  p95 %7.1f ms  p99 %7.1f ms  max %7.1f ms" % (r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"])
           if "p50_ms" in r else "no latency: nothing arrived")
    say("   %-22s offered %6.0f/s  sent %6.0f/s  delivered %6.0f/s" % (r["what"], r["offered_per_s"],
                                                                       r["send_rate_per_s"], r["delivered_per_s"]))
    say("   %-22s %s" % ("", lat))
    if r.get("online_to_time_frames_s"):
        say("   %-22s before pressing: every bell connected and had the agent's time frame after %.1f s"
            % ("", r["online_to_time_frames_s"]))
    if r["over_p99_at_s"]:
        say("   %-22s the presses slower than p99 were made at %s s" % ("", _spans(r["over_p99_at_s"])))
    say("   %-22s sent %d, received %d, lost %d, duplicates %d%s" % (
        "", r["sent"], r["received"], r["lost"], r["duplicates"],
        ", %d not sent by this run" % r["unexpected"] if r["unexpected"] else ""))


def run(args):
    from ansim_tools.bench_agent import _RawRelay  # the bench's baseline relay, reused
    if args.devices < 1 or args.rate <= 0 or args.duration <= 0 or args.per_connection < 1:
        say("sim load: --devices, --rate, --duration and --per-connection must be positive")
        return 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="ansim-load-") as tmp:
        tmp = Path(tmp)
        say("ansim sim load: %d bells (%d per MQTT connection, %d connections), %.0f presses/s for %.0f s, "
            "against one agent process (%d cores)" % (args.devices, args.per_connection,
                                                      -(-args.devices // args.per_connection), args.rate,
                                                      args.duration, os.cpu_count()))
        with MosquittoBroker(workdir=tmp / "local") as local, MosquittoBroker(workdir=tmp / "center") as center:
            made = time.monotonic()
            site = _site(tmp, args.devices)
            counters = dev.Counters(tmp / "counters.json")
            bells = [dev.Bell(spec, key, counters) for spec, key in site]
            agent = AgentProcess(_config(tmp, local.port, center.port), tmp / "agent.log")
            arrivals = Arrivals(center.port, "ansim/center/v1/+/alerts/#", "load-center")
            births = Arrivals(center.port, "ansim/center/v1/agents/+/state", "load-births")
            arrivals.ready.wait(10)
            births.ready.wait(10)
            agent.start()
            try:
                # the birth certificate: the agent listens on the local broker (it subscribes first)
                if not _wait_for(lambda: births.count() > 0, 60):
                    say("the agent did not come up within 60 s:\n" + agent.log_tail())
                    return 1
                say("   site: %d bells with their own keys, agent up, %.1f s" % (args.devices, time.monotonic() - made))
                results["agent"] = _measure("agent", bells, local.port, args.per_connection, args.rate,
                                            args.duration, arrivals, args.drain, settle=True)
            finally:
                agent.stop()
                arrivals.close()
                births.close()
            say("")
            _print(results["agent"])
            if not args.no_baseline:
                relay = _RawRelay(local, center)
                raw = Arrivals(center.port, "raw/#", "load-raw")
                try:
                    raw.ready.wait(10)
                    results["baseline"] = _measure("raw paho relay", bells, local.port, args.per_connection,
                                                   args.rate, args.duration, raw, args.drain)
                finally:
                    raw.close()
                    relay.close()
                _print(results["baseline"])
                say("   (baseline: the same bells and brokers; paho republishes each press to the center, no "
                    "verification, storage or alert)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    agent_result = results["agent"]
    return 0 if agent_result["lost"] == 0 and agent_result["duplicates"] == 0 else 1

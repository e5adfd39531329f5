"""The benchmark behind ``ansim bench agent``: the agent's speed and memory, printed next to a baseline measured in
the same run on the same brokers (raw paho relaying the same messages), because these
machines are shared and noisy: compare columns, not runs.

1. latency: bell presses at a fixed rate (default 100/s); time from intake (the agent's MQTT
   client hands over the message) to the center broker's PUBACK of the alert.
2. durable alerts/s: a backlog queued on the local broker while the agent is stopped, then
   drained: stored (fsynced) and delivered.
3. intake of heartbeats and duplicates: frames/s through the core (verify, dedup, commit).
4. memory: RSS of an agent process supervising 10,000 devices.
5. outage (``--outage N``, off by default: about a minute per 100,000): N alerts raised while
   the center is away wait on disk, then arrive, all and in order per device.
6. center ack -> bell: from the center publishing its ack to the bell receiving the signed
   center_ack frame, one at a time with idle gaps; baseline: paho relaying the same message.
7. BLE advert -> center: from putting a wearable's SOS on the virtual air (bumble) to the
   center's subscriber receiving the alert; baseline: a bare bleak scanner on the same air
   whose callback publishes the frame to the center.
"""

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ansim_agent import config as config_module
from ansim_agent.intake import Reception
from ansim_agent.metrics import Metrics
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.fixtures.broker import MosquittoBroker, connect_client
from ansim_simulators.world.street import Street

TARGETS = {"p99_added_ms": 3.0, "durable_per_s": 1000, "intake_per_s": 20000, "rss_mb_10k": 150}
ACKS = 40     # center acks timed one by one (section 6)
ADVERTS = 30  # SOS advertisements timed one by one (section 7)


def say(text):
    print(text, flush=True)


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args):
    results = {}
    with tempfile.TemporaryDirectory(prefix="ansim-bench-") as tmp:
        tmp = Path(tmp)
        say("ansim bench agent (%d cores, Python %s)" % (os.cpu_count(), sys.version.split()[0]))
        results["latency"] = bench_latency(tmp / "latency", args.rate, args.seconds)
        results["durable"] = bench_durable(tmp / "durable", args.backlog)
        results["intake"] = bench_intake(tmp / "intake", args.frames)
        results["memory"] = bench_memory(tmp / "memory", args.devices)
        if args.outage:
            results["outage"] = bench_outage(tmp / "outage", args.outage)
        results["center_ack"] = bench_center_ack(tmp / "ack", getattr(args, "acks", ACKS))
        results["ble"] = bench_ble(tmp / "ble", getattr(args, "adverts", ADVERTS))
    verdicts = [
        ("p99 added latency at %d/s" % args.rate, results["latency"]["added_p99_ms"], "<=", TARGETS["p99_added_ms"], "ms"),
        ("durable alerts/s (stored)", results["durable"]["agent_stored_per_s"], ">=", TARGETS["durable_per_s"], "/s"),
        ("heartbeats/s at intake", results["intake"]["heartbeat_per_s"], ">=", TARGETS["intake_per_s"], "/s"),
        ("duplicates/s at intake", results["intake"]["duplicate_per_s"], ">=", TARGETS["intake_per_s"], "/s"),
        ("RSS with %d devices" % args.devices, results["memory"]["agent_rss_mb"], "<=", TARGETS["rss_mb_10k"], "MB"),
    ]
    say("\nsummary against the targets")
    for name, value, op, target, unit in verdicts:
        ok = value <= target if op == "<=" else value >= target
        say("  %-34s %10.1f %-3s (target %s %s)  %s" % (name, value, unit, op, target, "ok" if ok else "MISSED"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


# -- 1. latency ------------------------------------------------------------------------------

def _site(directory, bells=20, lights=10, wearables=0):
    local = MosquittoBroker(workdir=directory / "local").start()
    center = MosquittoBroker(workdir=directory / "center").start()
    street = Street(directory / "street", center_port=center.port, local_port=local.port, bells=bells,
                    lights=lights, wearables=wearables,
                    overrides={"center": {"escalation_s": "3600"}, "agent": {"log_level": '"warning"'}})
    return local, center, street


def _presses(street, count):
    """``count`` bell presses spread over the street's bells, each with a fresh counter."""
    out = []
    for i in range(count):
        bell = street.bells[i % len(street.bells)]
        counter = i // len(street.bells) + 1
        out.append((topics.topic(bell.device_id, topics.UP),
                    frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)))
    return out


def _paced(client, messages, rate):
    start = time.perf_counter()
    for i, (topic, payload) in enumerate(messages):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.paho.publish(topic, payload, qos=1)


def bench_latency(directory, rate, seconds):
    say("\n1. latency, intake -> center broker PUBACK, %d alerts/s for %.0f s" % (rate, seconds))
    local, center, street = _site(directory)
    count = int(rate * seconds)
    try:
        metrics = Metrics(keep_latencies=True)
        devices = connect_client("127.0.0.1", local.port, client_id="bench-devices")
        with Agent(config_module.load(street.config_path), metrics=metrics) as agent:
            agent.uplink.connected.wait(10)
            _paced(devices, _presses(street, count), rate)
            _wait(lambda: len(metrics.latencies) >= count, 60, "agent deliveries")
        agent_ms = [s * 1e3 for s in metrics.latencies[:count]]
        raw_ms = _raw_relay_latency(local, center, street, count, rate)
        devices.close()
    finally:
        local.stop()
        center.stop()
    result = {"rate": rate, "count": count,
              "agent_p50_ms": statistics.median(agent_ms), "agent_p99_ms": percentile(agent_ms, 0.99),
              "raw_p50_ms": statistics.median(raw_ms), "raw_p99_ms": percentile(raw_ms, 0.99)}
    result["added_p99_ms"] = result["agent_p99_ms"] - result["raw_p99_ms"]
    say("   %-28s p50 %7.2f ms   p99 %7.2f ms" % ("raw paho relay (baseline)", result["raw_p50_ms"], result["raw_p99_ms"]))
    say("   %-28s p50 %7.2f ms   p99 %7.2f ms" % ("ansim agent", result["agent_p50_ms"], result["agent_p99_ms"]))
    say("   added by the agent at p99: %.2f ms (verify, store with fsync, enrich, command lights)"
        % result["added_p99_ms"])
    return result


class _RawRelay:
    """The baseline: paho receives on the local broker and republishes to the center at QoS 1,
    measuring from on_message to the center's PUBACK, as the agent's latency is measured."""

    def __init__(self, local, center):
        self.samples = []
        self.pending = {}
        self._lock = threading.Lock()
        self.out = connect_client("127.0.0.1", center.port, client_id="raw-relay-out")
        self.out.paho.on_publish = self._on_publish
        self.inp = connect_client("127.0.0.1", local.port, client_id="raw-relay-in")
        self.inp.paho.on_message = self._on_message
        self.inp.subscribe(topics.UPLINK_FILTER)

    def _on_message(self, client, userdata, msg):
        received = time.perf_counter()
        info = self.out.paho.publish("raw/" + msg.topic, msg.payload, qos=1)
        with self._lock:
            if info.mid in self.pending and self.pending[info.mid] is None:
                del self.pending[info.mid]
                self.samples.append(time.perf_counter() - received)
            else:
                self.pending[info.mid] = received

    def _on_publish(self, client, userdata, mid, reason, props):
        now = time.perf_counter()
        with self._lock:
            received = self.pending.pop(mid, None)
            if received is None:
                self.pending[mid] = None
            else:
                self.samples.append(now - received)

    def close(self):
        self.inp.close()
        self.out.close()


def _raw_relay_latency(local, center, street, count, rate):
    relay = _RawRelay(local, center)
    devices = connect_client("127.0.0.1", local.port, client_id="bench-devices-raw")
    try:
        _paced(devices, _presses(street, count), rate)
        _wait(lambda: len(relay.samples) >= count, 60, "raw relay")
        return [s * 1e3 for s in relay.samples[:count]]
    finally:
        devices.close()
        relay.close()


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("bench: %s did not finish within %d s" % (what, timeout))
        time.sleep(0.005)


# -- 2. durable throughput --------------------------------------------------------------------

def bench_durable(directory, backlog):
    say("\n2. durable alerts/s: a backlog of %d presses queued while the agent is stopped" % backlog)
    local, center, street = _site(directory, bells=50)
    try:
        config = config_module.load(street.config_path)
        with Agent(config) as agent:  # creates the agent's persistent session
            agent.uplink.connected.wait(10)
        devices = connect_client("127.0.0.1", local.port, client_id="bench-backlog")
        for topic, payload in _presses(street, backlog):
            devices.paho.publish(topic, payload, qos=1)
        devices.paho.publish("bench/end", b"", qos=1).wait_for_publish(30)
        start = time.perf_counter()
        with Agent(config) as agent:
            _wait(lambda: agent.store.state_counts().get("pending", 0) + agent.store.state_counts().get(
                "delivered", 0) >= backlog, 120, "storing the backlog")
            stored_s = time.perf_counter() - start
            _wait(lambda: agent.store.state_counts().get("delivered", 0) >= backlog, 120, "delivering the backlog")
            delivered_s = time.perf_counter() - start
        raw_s = _raw_relay_throughput(local, center, street, backlog)
        devices.close()
    finally:
        local.stop()
        center.stop()
    result = {"backlog": backlog, "agent_stored_per_s": backlog / stored_s,
              "agent_delivered_per_s": backlog / delivered_s, "raw_relay_per_s": backlog / raw_s}
    say("   %-28s %8.0f alerts/s relayed" % ("raw paho relay (baseline)", result["raw_relay_per_s"]))
    say("   %-28s %8.0f alerts/s stored (fsynced), %.0f/s delivered to the center"
        % ("ansim agent", result["agent_stored_per_s"], result["agent_delivered_per_s"]))
    return result


def _raw_relay_throughput(local, center, street, backlog):
    relay = _RawRelay(local, center)
    devices = connect_client("127.0.0.1", local.port, client_id="bench-devices-raw2")
    start = time.perf_counter()
    try:
        for topic, payload in _presses(street, backlog):
            devices.paho.publish(topic, payload, qos=1)
        _wait(lambda: len(relay.samples) >= backlog, 120, "raw relay backlog")
        return time.perf_counter() - start
    finally:
        devices.close()
        relay.close()


# -- 5. outage ---------------------------------------------------------------------------------

def bench_outage(directory, count):
    say("\n5. outage: %d alerts raised while the center's broker is down" % count)
    local, center, street = _site(directory, bells=100)
    center.stop()
    try:
        devices = connect_client("127.0.0.1", local.port, client_id="bench-outage")
        with Agent(config_module.load(street.config_path)) as agent:
            start = time.perf_counter()
            for i, (topic, payload) in enumerate(_presses(street, count)):
                devices.paho.publish(topic, payload, qos=1)
                if i % 1000 == 999:  # keep paho's own queue short
                    _wait(lambda: agent.store.queue_depth() >= i - 5000, 120, "storing")
            _wait(lambda: agent.store.queue_depth() >= count, 300, "storing the outage backlog")
            stored_s = time.perf_counter() - start
            db_mb = sum(p.stat().st_size for p in agent.store.path.parent.glob("agent.db*")) / 1e6
            center.start()
            view = connect_client("127.0.0.1", center.port, client_id="bench-center")
            arrived = []
            view.paho.on_message = lambda c, u, m: arrived.append(json.loads(m.payload)["alert_id"])
            view.subscribe("ansim/center/v1/jung-gu/alerts/#")
            start = time.perf_counter()
            _wait(lambda: len(set(arrived)) >= count, 600, "delivering after the outage")
            delivered_s = time.perf_counter() - start
            view.close()
        devices.close()
    finally:
        local.stop()
        center.stop()
    in_order = all(_in_order([a for a in arrived if a.startswith(b.hex_id)]) for b in street.bells)
    result = {"alerts": count, "stored_per_s": count / stored_s, "db_mb": db_mb,
              "delivered_per_s": count / delivered_s, "all_arrived": len(set(arrived)) == count,
              "in_order_per_device": in_order}
    say("   stored %d alerts at %.0f/s (%.1f MB on disk); after the outage delivered at %.0f/s; "
        "all arrived: %s; in order per device: %s" % (count, result["stored_per_s"], db_mb,
                                                       result["delivered_per_s"], result["all_arrived"], in_order))
    return result


def _in_order(alert_ids):
    firsts, seen = [], set()
    for alert_id in alert_ids:
        if alert_id not in seen:
            seen.add(alert_id)
            firsts.append(int(alert_id.split("-")[1]))
    return firsts == sorted(firsts)


# -- 3. intake of heartbeats and duplicates ------------------------------------------------------

def bench_intake(directory, count):
    say("\n3. intake: %d heartbeat frames through the core (verify, replay check, dedup, commit)" % count)
    street = Street(directory / "street", center_port=1, bells=100, lights=0, wearables=100)
    config = config_module.load(street.config_path)
    from ansim_agent import registry as registry_module
    from ansim_agent.core import Core
    from ansim_agent.store import Store
    registry = registry_module.load(config.agent["registry"], config.supervision)
    store = Store(config.agent["data_dir"] / "agent.db")
    now = time.time()
    core = Core(config, registry, store)
    beats = []
    for i in range(count):
        if i % 2:
            bell = street.bells[i % len(street.bells)]
            frame = frames.build_plain("heartbeat", {"battery_pct": 255, "uptime_min": i, "faults": 0},
                                       DeviceKeys(bell.key), bell.device_id, i // 2 + 1)
        else:
            wearable = street.wearables[i % len(street.wearables)]
            frame = frames.build_sealed("heartbeat", {"battery_pct": 80, "uptime_min": i, "faults": 0},
                                        DeviceKeys(wearable.key), i // 2 + 1, epoch_of(now))
        beats.append(frame)
    receptions = [Reception(f, "ble", "ble0", rssi=-70) for f in beats]
    heartbeat_s = _through(core, receptions)
    duplicates = [Reception(f, "serial", "uart0") for f in beats]
    duplicate_s = _through(core, duplicates)
    store.close()
    raw_s = _raw_decode(beats, street)
    result = {"frames": count, "heartbeat_per_s": count / heartbeat_s, "duplicate_per_s": count / duplicate_s,
              "raw_unpack_per_s": count / raw_s}
    say("   %-28s %8.0f frames/s (frames.unpack alone, no state)" % ("codec only (baseline)", result["raw_unpack_per_s"]))
    say("   %-28s %8.0f heartbeats/s, %.0f duplicates/s (batches of 500, one commit each)"
        % ("ansim core", result["heartbeat_per_s"], result["duplicate_per_s"]))
    return result


def _through(core, receptions):
    start = time.perf_counter()
    for i in range(0, len(receptions), 500):
        outcomes, _ = core.process_batch(receptions[i:i + 500])
    return time.perf_counter() - start


def _raw_decode(beats, street):
    keys = {d.device_id: DeviceKeys(d.key) for d in street.bells}
    sealed_keys = DeviceKeys(street.wearables[0].key)
    start = time.perf_counter()
    for frame in beats:
        header = frames.peek(frame)
        try:
            frames.unpack(frame, keys.get(header.device_id, sealed_keys))
        except frames.FrameError:
            pass
    return time.perf_counter() - start


# -- 4. memory -----------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's.
PEAK_RSS = """
def peak_rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""

MEMORY_PROBE = PEAK_RSS + """
import json, sys, time
from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_agent.intake import Reception
from ansim_protocol import frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
config = config_module.load(sys.argv[1])
agent = Agent(config)
keys = json.loads(open(sys.argv[2]).read())
now = time.time()
batch = []
for hex_id, role, key in keys:
    k = DeviceKeys(bytes.fromhex(key))
    if role == "wearable":
        f = frames.build_sealed("heartbeat", {"battery_pct": 80, "uptime_min": 1, "faults": 0}, k, 1, epoch_of(now))
    else:
        f = frames.build_plain("heartbeat", {"battery_pct": 255, "uptime_min": 1, "faults": 0}, k, int(hex_id, 16), 1)
    batch.append(Reception(f, "ble", "ble0"))
for i in range(0, len(batch), 500):
    agent.core.process_batch(batch[i:i + 500])
agent._supervise(now)
del batch, keys
print(json.dumps({"heard": len(agent.store.last_heard()), "rss_kb": peak_rss_kb()}))
"""

BASELINE_PROBE = PEAK_RSS + """
import json
import paho.mqtt.client, sqlite3, prometheus_client
print(json.dumps({"rss_kb": peak_rss_kb()}))
"""


def bench_memory(directory, devices):
    say("\n4. memory: an agent with %d registered devices, each heard once (peak RSS)" % devices)
    wearables = devices // 2
    street = Street(directory / "street", center_port=1, bells=devices - wearables, lights=0, wearables=wearables)
    keys_file = directory / "keys.json"
    keys_file.write_text(json.dumps([(d.hex_id, d.role, d.key.hex()) for d in street.devices]))
    agent = json.loads(subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(street.config_path), str(keys_file)],
                                      capture_output=True, text=True, check=True, timeout=600).stdout)
    base = json.loads(subprocess.run([sys.executable, "-c", BASELINE_PROBE], capture_output=True, text=True,
                                     check=True, timeout=60).stdout)
    result = {"devices": devices, "heard": agent["heard"], "agent_rss_mb": agent["rss_kb"] / 1024,
              "baseline_rss_mb": base["rss_kb"] / 1024}
    say("   %-28s %8.1f MB (Python with paho, sqlite3, prometheus-client imported)"
        % ("baseline", result["baseline_rss_mb"]))
    say("   %-28s %8.1f MB peak with %d devices supervised" % ("ansim agent", result["agent_rss_mb"], agent["heard"]))
    return result


# -- 6. center ack -> device ------------------------------------------------------------------------

def _one_by_one(label, samples_ms):
    say("   %-28s p50 %7.2f ms   p90 %7.2f ms   max %7.2f ms" % (label, statistics.median(samples_ms),
                                                                 percentile(samples_ms, 0.9), max(samples_ms)))
    return {"p50_ms": statistics.median(samples_ms), "p90_ms": percentile(samples_ms, 0.9), "max_ms": max(samples_ms)}


def _timed_sends(send, receive, count, seed=7):
    """``count`` sends one at a time after random idle gaps of 0-100 ms; each sample from just
    before ``send(i)`` to paho's arrival time of ``receive(i)``. A reply that waits for a periodic
    timer instead of being woken shows up as most of a period (the sends fall just after it)."""
    gaps = random.Random(seed)
    samples = []
    for i in range(count):
        time.sleep(gaps.uniform(0.0, 0.1))
        sent = time.monotonic()
        send(i)
        samples.append((receive(i).timestamp - sent) * 1e3)  # paho stamps arrivals with time.monotonic
    return samples


def bench_center_ack(directory, count):
    say("\n6. center ack -> bell: %d acks one at a time, idle between them" % count)
    local, center, street = _site(directory)
    bells = street.bells
    try:
        devices = connect_client("127.0.0.1", local.port, client_id="bench-ack-devices")
        bell_view = connect_client("127.0.0.1", local.port, client_id="bench-ack-bells")
        for bell in bells:
            bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
        desk = connect_client("127.0.0.1", center.port, client_id="bench-ack-desk")
        metrics = Metrics(keep_latencies=True)
        with Agent(config_module.load(street.config_path), metrics=metrics) as agent:
            agent.uplink.connected.wait(10)
            for topic, payload in _presses(street, count):
                devices.paho.publish(topic, payload, qos=1)
            _wait(lambda: len(metrics.latencies) >= count, 60, "alerts for the acks")
            ack_topic = "ansim/center/v1/agents/%s/ack" % street.agent_id

            def ack(i):
                alert_id = "%s-%d" % (bells[i % len(bells)].hex_id, i // len(bells) + 1)
                desk.paho.publish(ack_topic, json.dumps({"alert_id": alert_id, "status": "received"}), qos=1)
            agent_ms = _timed_sends(ack, lambda i: bell_view.next_message(10), count)
        raw_ms = _raw_ack_relay(local, center, count)
        for client in (devices, bell_view, desk):
            client.close()
    finally:
        local.stop()
        center.stop()
    result = {"acks": count, "raw": _one_by_one("raw paho relay (baseline)", raw_ms),
              "agent": _one_by_one("ansim agent", agent_ms)}
    say("   added by the agent at p50: %.2f ms (store the ack, sign the frame, commit)"
        % (result["agent"]["p50_ms"] - result["raw"]["p50_ms"]))
    return result


def _raw_ack_relay(local, center, count):
    out = connect_client("127.0.0.1", local.port, client_id="raw-ack-out")
    inp = connect_client("127.0.0.1", center.port, client_id="raw-ack-in")
    inp.paho.on_message = lambda c, u, msg: out.paho.publish("raw/bell/down", msg.payload, qos=1)
    inp.subscribe("raw/ack")
    bell = connect_client("127.0.0.1", local.port, client_id="raw-ack-bell")
    bell.subscribe("raw/bell/down")
    desk = connect_client("127.0.0.1", center.port, client_id="raw-ack-desk")
    try:
        return _timed_sends(lambda i: desk.paho.publish("raw/ack", b"ack %d" % i, qos=1),
                            lambda i: bell.next_message(10), count)
    finally:
        for client in (desk, bell, inp, out):
            client.close()


# -- 7. BLE advert -> center ------------------------------------------------------------------------

def bench_ble(directory, count):
    from ansim_simulators.hardware.ble_radio import ThreadedAir
    say("\n7. BLE advert -> center: %d SOS advertisements on the virtual air, one at a time" % count)
    air = ThreadedAir()
    center = MosquittoBroker(workdir=directory / "center").start()
    try:
        street = Street(directory / "street", center_port=center.port, bells=0, lights=0, wearables=1,
                        overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec},
                                   "center": {"escalation_s": "3600"}, "agent": {"log_level": '"warning"'}})
        wearable = street.wearables[0]
        keys = DeviceKeys(wearable.key)
        sos = [frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, i + 1,
                                   epoch_of(time.time())) for i in range(count)]
        view = connect_client("127.0.0.1", center.port, client_id="bench-ble-center")
        view.subscribe("ansim/center/v1/+/alerts/#")
        view.subscribe("raw/ble")
        with Agent(config_module.load(street.config_path)) as agent:
            agent.uplink.connected.wait(10)
            wanted = ["%s-%d" % (wearable.hex_id, i + 1) for i in range(count)]
            agent_ms = _on_air(air, sos, view, lambda msg, i: json.loads(msg.payload)["alert_id"] == wanted[i])
        raw_ms = _raw_ble_relay(air, center, sos, view)
        view.close()
    finally:
        center.stop()
        air.close()
    result = {"adverts": count, "raw": _one_by_one("bleak -> paho (baseline)", raw_ms),
              "agent": _one_by_one("ansim agent", agent_ms)}
    say("   added by the agent at p50: %.2f ms (verify, store with fsync, enrich, uplink)"
        % (result["agent"]["p50_ms"] - result["raw"]["p50_ms"]))
    return result


def _on_air(air, adverts, view, matches):
    """Advertise each frame until ``view`` gets the message it ``matches``; the advertiser
    starts right after the sample's start, its first advertising event at once (bumble)."""
    from ansim_protocol import ble
    current = {}

    def send(i):
        current["adv"] = air.call(air.air.add_advertiser(ble.advertisement(adverts[i]), interval_ms=100))

    def receive(i):
        deadline = time.monotonic() + 10
        while True:
            msg = view.next_message(max(0.0, deadline - time.monotonic()))
            if msg.topic.startswith(("raw/", "ansim/center/v1/jung-gu/alerts/")) and matches(msg, i):
                air.call(air.air.remove_advertiser(current.pop("adv")))
                return msg
    return _timed_sends(send, receive, len(adverts))


def _raw_ble_relay(air, center, adverts, view):
    from bleak import BleakScanner
    from ansim_protocol.ble import COMPANY_ID
    from ansim_simulators.hardware.ble_radio import bleak_backend_for
    out = connect_client("127.0.0.1", center.port, client_id="raw-ble-out")

    def heard(device, adv):
        frame = adv.manufacturer_data.get(COMPANY_ID)
        if frame is not None:
            out.paho.publish("raw/ble", frame, qos=1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raw-ble", daemon=True)
    thread.start()
    scanner = BleakScanner(heard, backend=bleak_backend_for(air.spec))
    asyncio.run_coroutine_threadsafe(scanner.start(), loop).result(10)
    try:
        return _on_air(air, adverts, view, lambda msg, i: msg.payload == adverts[i])
    finally:
        asyncio.run_coroutine_threadsafe(scanner.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        out.close()

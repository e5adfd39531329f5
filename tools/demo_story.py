"""The story that ``ansim demo`` tells, end to end on this machine, with every part that exists.

A street is provisioned; the device code on the real MicroPython VM builds a wearable's SOS
and a bell press; the wearable's advertisement crosses a virtual BLE radio to the real edge
agent (through bleak), the bell's frame crosses the Pi's mosquitto; the agent verifies and
stores them, blinks the streetlights around the spot and alerts a simulated control center
with the location and the nearest cameras; the center acknowledges (the bell announces it),
resolves (the lights go back), and watches someone walk home (the lights ahead brighten).
Every step is checked; the exit status says whether the story held.
"""

import json
import os
import queue
import tempfile
import time
from pathlib import Path

from ansim_agent import config as config_module
from ansim_agent import logs
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators import micropython_vm
from ansim_simulators.ble_radio import ThreadedAir
from ansim_simulators.broker import MosquittoBroker, connect_client
from ansim_simulators.center import ControlCenter
from ansim_simulators.street import ORIGIN, Street, offset

from . import decode

DEVICE_SCRIPT = micropython_vm.REPO / "simulators" / "device_scripts" / "demo_frames.py"
FIX = {"lat": round(ORIGIN[0] + 0.00005, 6), "lon": round(ORIGIN[1] + 0.0003, 6), "accuracy_m": 6}
ANNOUNCEMENT = "긴급신고가 접수되었습니다. 경찰관을 연결 중입니다"
WAIT_S = 10


def say(text=""):
    print(text, flush=True)


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def run(args):
    logs.setup("critical")  # the story prints what matters; the agent's own log stays quiet
    with tempfile.TemporaryDirectory(prefix="ansim-demo-") as workdir:
        try:
            Story(Path(workdir)).tell()
        except Failed as err:
            say("\nTHE STORY DID NOT HOLD: %s" % err)
            return 1
    return 0


class Story:
    def __init__(self, workdir):
        self.workdir = workdir
        self.commands = queue.Queue()

    def tell(self):
        say("ansim demo: a child's SOS button, a street bell and the streetlights of one street")
        with MosquittoBroker(workdir=self.workdir / "local") as local, \
                MosquittoBroker(workdir=self.workdir / "center") as center_broker:
            air = ThreadedAir()
            try:
                self.street = Street(self.workdir / "street", center_port=center_broker.port,
                                     local_port=local.port,
                                     overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec},
                                                "agent": {"log_level": '"error"'}})
                say("1. Provisioned: %d wearables, %d bells, %d streetlights (every 20 m), %d CCTV "
                    "cameras; keys in files readable only by the agent." % (
                        len(self.street.wearables), len(self.street.bells), len(self.street.lights),
                        len(self.street.cameras)))
                built = self.build_on_device()
                with ControlCenter("127.0.0.1", center_broker.port) as center:
                    lights = connect_client("127.0.0.1", local.port, client_id="demo-lights")
                    lights.paho.on_message = lambda c, u, m: self.commands.put((m.topic, bytes(m.payload)))
                    lights.subscribe(topics.topic(0, topics.DOWN).replace("00000000", "+"))
                    try:
                        with Agent(config_module.load(self.street.config_path)) as agent:
                            center.wait_for_agent(self.street.agent_id, timeout=WAIT_S)
                            say("3. Edge agent %s is up: BLE (bleak over a virtual radio), the Pi's "
                                "mosquitto, the control center (birth certificate seen)." % self.street.agent_id)
                            self.wearable_sos(air, center, built)
                            self.attacks(air, agent, center)
                            self.bell(local, center, built)
                            self.resolve(center)
                            self.walk_home(center_broker)
                    finally:
                        lights.close()
            finally:
                air.close()
        say("\nThe story held: every alert verified, stored, located, forwarded and acknowledged; "
            "the lights followed.")

    def build_on_device(self):
        wearable, bell = self.street.wearables[0], self.street.bells[0]
        config = {"wearable_key": wearable.key.hex(), "bell_key": bell.key.hex(), "bell_id": bell.device_id,
                  "fix": FIX, "unix_time": int(time.time()), "wearable_counter": 1, "bell_counter": 1}
        (self.workdir / "demo_devices.json").write_text(json.dumps(config))
        started = time.perf_counter()
        result = micropython_vm.run(DEVICE_SCRIPT, self.workdir)
        check(result.returncode == 0, "device code failed on the MicroPython VM: " + result.stderr.strip())
        built = {k: bytes.fromhex(v) for k, v in json.loads(result.stdout).items() if k != "implementation"}
        say("2. The device code ran on the MicroPython VM (%.0f ms with start-up): a sealed %d-byte SOS "
            "in a %d-byte BLE advertisement, and an %d-byte bell press."
            % ((time.perf_counter() - started) * 1e3, len(built["sos"]), len(built["sos_adv"]),
               len(built["bell_press"])))
        return built

    def light_commands(self, count, action, also=None):
        """The next commands to streetlights, decoded with each light's key: ``count`` of
        ``action`` (and ``also``: {action: count} arriving in any order). Returns the lights
        that got ``action``."""
        wanted = dict(also or {}, **{action: count})
        seen = {name: {} for name in wanted}
        deadline = time.monotonic() + WAIT_S
        while any(len(seen[name]) < n for name, n in wanted.items()):
            try:
                topic, payload = self.commands.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Failed("expected %s commands to streetlights, saw %s"
                             % (wanted, {name: len(got) for name, got in seen.items()}))
            light = next((l for l in self.street.lights if topics.topic(l.device_id, topics.DOWN) == topic), None)
            if light is None:
                continue
            command = frames.unpack(payload, DeviceKeys(light.key))
            got = command.fields["action"]
            check(got in wanted, "light %s got %s, expected %s" % (light.hex_id, got, " or ".join(wanted)))
            seen[got][light.hex_id] = command
        return seen[action]

    def wearable_sos(self, air, center, built):
        wearable = self.street.wearables[0]
        started = time.perf_counter()
        self.advertiser = air.call(air.air.add_advertiser(built["sos_adv"], interval_ms=50, rssi=-67))
        alert = center.wait_for_alert("%s-1" % wearable.hex_id, WAIT_S).body
        elapsed = (time.perf_counter() - started) * 1e3
        check(alert["location"]["source"] == "gnss", "the SOS was not located by its GNSS fix")
        loc = alert["location"]
        say("4. The child presses SOS. The control center has the alert %.0f ms after the wearable starts advertising:"
            % elapsed)
        say("   %s from %s, at %.6f, %.6f within %d m (%s), heard at %d dBm"
            % (alert["type"].upper(), alert["device"]["name"], loc["lat"], loc["lon"], loc["accuracy_m"],
               loc["source"], alert["path"]["rssi"]))
        say("   nearest CCTV: " + ", ".join("%s (%.0f m)" % (c["id"], c["distance_m"]) for c in alert["cameras"]))
        blinking = self.light_commands(4, "blink")
        say("   streetlights within 50 m blink: %s" % ", ".join(sorted(blinking)))
        passive = decode.decode(built["sos_adv"], None)
        say("   a passive scanner nearby learns only the rotating id %s: no identity, no position, no event."
            % passive["rid"])
        air.call(self.advertiser.stop())

    def attacks(self, air, agent, center):
        forged = frames.build_sealed("sos", FIX, DeviceKeys(os.urandom(16)), 1, epoch_of(time.time()))
        bell = self.street.bells[1]
        press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, 5)
        agent.intake.put(_reception(press[:-1] + bytes([press[-1] ^ 1])))  # one bit changed on a serial line
        air.call(air.air.add_advertiser(ble.advertisement(forged), interval_ms=50))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not (_count(agent, "unknown") and _count(agent, "tag")):
            time.sleep(0.02)
        check(_count(agent, "unknown") and _count(agent, "tag"), "forged frames were not refused")
        check(center.alert_ids == ["%s-1" % self.street.wearables[0].hex_id], "a forgery reached the center")
        say("5. Forgeries are refused: an SOS advertised under an unknown key ('unknown') and a bell "
            "frame with one bit changed on a serial line ('tag'); nothing reaches the center.")

    def bell(self, local, center, built):
        bell = self.street.bells[0]
        listener = connect_client("127.0.0.1", local.port, client_id="demo-bell")
        try:
            listener.subscribe(topics.topic(bell.device_id, topics.DOWN))
            device = connect_client("127.0.0.1", local.port, client_id="bell-%s" % bell.hex_id)
            device.publish(topics.topic(bell.device_id, topics.UP), built["bell_press"])
            device.close()
            alert = center.wait_for_alert("%s-1" % bell.hex_id, WAIT_S).body
            say("6. A citizen presses street bell %s: alert at its registered position, cameras %s."
                % (bell.hex_id, ", ".join(c["id"] for c in alert["cameras"][:2])))
            self.light_commands(4, "blink")
            center.ack(alert["alert_id"], "received")
            ack = frames.unpack(listener.next_message(WAIT_S).payload, DeviceKeys(bell.key))
            check(ack.kind == "center_ack" and ack.fields["acked_counter"] == 1, "the bell got no center ack")
            say("   The center acknowledges; the bell receives a signed center_ack and announces:")
            say("   \"%s\"" % ANNOUNCEMENT)
        finally:
            listener.close()

    def resolve(self, center):
        wearable = self.street.wearables[0]
        center.ack("%s-1" % wearable.hex_id, "resolved")
        restored = self.light_commands(4, "restore")
        say("7. Police reach the child; the center resolves the SOS and its %d lights return to "
            "their schedule." % len(restored))

    def walk_home(self, center_broker):
        route = [list(ORIGIN), list(offset(ORIGIN, 180))]
        center = connect_client("127.0.0.1", center_broker.port, client_id="demo-monitor")
        try:
            topic = "ansim/center/v1/agents/%s/monitor" % self.street.agent_id
            center.publish(topic, json.dumps({"session": "walk-1", "action": "start", "route": route}))
            ahead = self.light_commands(6, "brighten")
            say("8. Walk-home monitoring: the center sends the route home; the 6 lights of the next "
                "100 m brighten: %s" % ", ".join(sorted(ahead)))
            center.publish(topic, json.dumps({"session": "walk-1", "action": "update",
                                              "position": list(offset(ORIGIN, 80, 2))}))
            behind = self.light_commands(4, "restore", also={"brighten": 4})
            say("   80 m on: the %d lights behind go back, 4 more ahead brighten." % len(behind))
            center.publish(topic, json.dumps({"session": "walk-1", "action": "arrived"}))
            done = self.light_commands(6, "restore")
            say("   Home: the last %d lights return to their schedule." % len(done))
        finally:
            center.close()


def _reception(frame):
    from ansim_agent.intake import Reception
    return Reception(frame, "serial", "demo-line")


def _count(agent, verdict):
    return agent.metrics.frames_by_verdict().get(verdict, 0)

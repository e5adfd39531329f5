"""``ansim demo``: the main story with the parts that exist today.

A wearable SOS and a bell press are built by the device code on the real MicroPython VM,
travel through a private mosquitto broker as the radios will carry them, and are verified on
the edge side: rotating id resolved, tag checked, replay and forgery refused. The edge
agent (issue 3) and the firmware on virtual boards (issue 4) will take over these roles.
"""

import json
import os
import tempfile
import time

from ansim_protocol import ble, frames, topics
from ansim_agent.resolver import RotatingIdResolver
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_protocol.errors import UNKNOWN, FrameError
from ansim_simulators import micropython_vm
from ansim_simulators.broker import MosquittoBroker

from . import decode

WEARABLE_NAME = "wearable W-0001 (child, Jung-gu)"
BELL_ID = 0x00020001
RELAY_ID = 0x00000001
FIX = {"lat": 37.5663, "lon": 126.9779, "accuracy_m": 6}  # Seoul City Hall plaza
DEVICE_SCRIPT = micropython_vm.REPO / "simulators" / "device_scripts" / "demo_frames.py"
WAIT_S = 5.0


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="run the main story end to end on this machine")
    p.set_defaults(run=run)


def say(text=""):
    print(text, flush=True)


class EdgeVerifier:
    """The verifying half of the edge, as small as the story needs (issue 3 makes it the agent)."""

    def __init__(self, wearable_key, bell_key, now):
        self.wearables = RotatingIdResolver()
        self.wearables.add(WEARABLE_NAME, DeviceKeys(wearable_key), now)
        self.bell = DeviceKeys(bell_key)
        self.last_counter = {}

    def verify(self, topic, payload):
        scope, _, _ = topics.parse(topic)
        header = frames.peek(payload)
        if header.sealed:
            found = self.wearables.candidates(header.rid)
            if not found:
                raise FrameError(UNKNOWN, "rotating id %s belongs to no registered wearable" % header.rid.hex())
            who, keys, _ = found[0]
        else:
            who, keys = "bell %s" % frames.device_id_hex(header.device_id), self.bell
        frame = frames.unpack(payload, keys)
        frames.check_fresh(frame.counter, self.last_counter.get(who))
        self.last_counter[who] = frame.counter
        return who, scope, frame


def build_on_device(workdir, wearable_key, bell_key, now):
    config = {"wearable_key": wearable_key.hex(), "bell_key": bell_key.hex(), "bell_id": BELL_ID,
              "fix": FIX, "unix_time": now, "wearable_counter": 1, "bell_counter": 1}
    with open(os.path.join(workdir, "demo_devices.json"), "w") as f:
        json.dump(config, f)
    started = time.perf_counter()
    result = micropython_vm.run(DEVICE_SCRIPT, workdir)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit("device code failed on the MicroPython VM:\n" + result.stderr)
    return json.loads(result.stdout), elapsed


def run(args):
    wearable_key, bell_key = os.urandom(16), os.urandom(16)
    now = int(time.time())
    say("ansim demo: an SOS from a wearable and a street bell, verified at the edge")
    say("1. Provisioned %s and bell %08x with fresh 16-byte keys (never printed)." % (WEARABLE_NAME, BELL_ID))
    with tempfile.TemporaryDirectory(prefix="ansim-demo-") as workdir:
        built, elapsed = build_on_device(workdir, wearable_key, bell_key, now)
    sos, adv, press = (bytes.fromhex(built[k]) for k in ("sos", "sos_adv", "bell_press"))
    say("2. On the %s VM (%.0f ms including start-up) the device code built:" % (built["implementation"], elapsed * 1e3))
    say("   wearable SOS, sealed, %d bytes; its BLE advertisement, %d bytes: %s" % (len(sos), len(adv), adv.hex()))
    say("   bell press, plain, %d bytes: %s" % (len(press), press.hex()))
    passive = decode.decode(adv, None)
    say("3. What a passive BLE scanner learns: envelope %s, rotating id %s, and nothing else"
        % (passive["envelope"], passive["rid"]))
    say("   (no device id, no position, no event; the id changes every 10 minutes).")

    verifier = EdgeVerifier(wearable_key, bell_key, now)
    with MosquittoBroker() as broker, broker.client(client_id="demo-edge") as edge, \
            broker.client(client_id="demo-radios") as radio:
        say("4. Private mosquitto broker on 127.0.0.1:%d." % broker.port)
        edge.subscribe(topics.RELAY_FILTER)
        edge.subscribe(topics.UPLINK_FILTER)
        forged = frames.build_sealed("sos", FIX, DeviceKeys(os.urandom(16)), 1, epoch_of(now))
        story = [
            ("the BLE relay heard the wearable", topics.topic(RELAY_ID, topics.UP, topics.RELAY), sos),
            ("the bell, over its WiFi link", topics.topic(BELL_ID, topics.UP), press),
            ("an attacker replays the captured SOS", topics.topic(RELAY_ID, topics.UP, topics.RELAY), sos),
            ("an attacker forges an SOS without the key", topics.topic(RELAY_ID, topics.UP, topics.RELAY), forged),
        ]
        say("5. Through the broker to the edge, QoS 1:")
        verified = rejected = 0
        for label, topic, payload in story:
            sent = time.perf_counter()
            radio.publish(topic, payload)
            message = edge.next_message(WAIT_S)
            arrived = time.perf_counter()
            try:
                who, _, frame = verifier.verify(message.topic, bytes(message.payload))
            except FrameError as err:
                rejected += 1
                say("   - %s: REJECTED (%s) after %.1f ms" % (label, err, (arrived - sent) * 1e3))
                continue
            verified += 1
            say("   - %s: VERIFIED %s from %s, counter %d, after %.1f ms"
                % (label, frame.kind.upper(), who, frame.counter, (arrived - sent) * 1e3))
            if frame.fields.get("accuracy_m"):
                f = frame.fields
                say("     position %.6f, %.6f within %d m (from the wearable's GNSS)"
                    % (f["lat"], f["lon"], f["accuracy_m"]))
    say("6. %d frames verified, %d refused. Next: the edge agent forwards alerts to the control"
        " center and blinks the streetlights (issue 3)." % (verified, rejected))
    return 0 if (verified, rejected) == (2, 2) else 1

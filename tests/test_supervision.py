"""Supervision: a device silent past its period, or whose MQTT last will fires, produces one
device-offline event at the center; low battery and tamper are forwarded."""

import json
import select
import subprocess
import sys
import threading
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street

WAIT_S = 10
BELL_WITH_WILL = """
import sys, threading
import paho.mqtt.client as mqtt
up = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bell")
c.will_set(sys.argv[2], b"offline", qos=1, retain=True)
c.on_connect = lambda *a: up.set()
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
up.wait(10)
print("connected", flush=True)
threading.Event().wait()
"""

BELL_LINK = """
import sys, threading
import paho.mqtt.client as mqtt
up = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[3])
c.will_set(sys.argv[2], b"offline", qos=1, retain=True)
def connected(client, *args):
    client.publish(sys.argv[2], b"online", qos=1, retain=True)  # as the firmware does on every connection
    print("connected", flush=True)
c.on_connect = connected
c.reconnect_delay_set(0.2, 1)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
threading.Event().wait()
"""


def connected(link, timeout=WAIT_S):
    """The bell link's next "connected" line (it prints one on every connection)."""
    ready, _, _ = select.select([link.stdout], [], [], timeout)
    assert ready and link.stdout.readline() == b"connected\n", "the bell link did not connect"


class Clock:
    """Agent time that the test moves forward (thread-safe)."""

    def __init__(self):
        self._now = time.time()
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            return self._now

    def advance(self, seconds):
        with self._lock:
            self._now += seconds


def heartbeat(client, device, counter):
    """``device`` says it is alive, as a bell does over the local broker."""
    beat = frames.build_plain("heartbeat", {"battery_pct": 255, "uptime_min": counter, "faults": 0},
                              DeviceKeys(device.key), device.device_id, counter)
    client.publish(topics.topic(device.device_id, topics.UP), beat)


def test_offline_once_on_silence_or_last_will_and_online_when_heard_again(tmp_path, mqtt_client):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port, bells=2)
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        clock = Clock()
        quiet, chatty = street.bells
        with Agent(config_module.load(street.config_path), clock=clock) as agent:
            device = mqtt_client(local)
            for bell in (quiet, chatty):
                heartbeat(device, bell, 1)
            tamper = frames.build_plain("tamper", {"state": "opened"}, DeviceKeys(chatty.key), chatty.device_id, 2)
            device.publish(topics.topic(chatty.device_id, topics.UP), tamper)
            assert json.loads(view.next_message(WAIT_S).payload)["type"] == "tamper"

            # The bell's link dies (power cut: the process is killed): the broker publishes its will.
            bell_link = subprocess.Popen([sys.executable, "-c", BELL_WITH_WILL, str(local.port),
                                          topics.topic(chatty.device_id, topics.STATE)], stdout=subprocess.PIPE)
            assert bell_link.stdout.readline() == b"connected\n"
            bell_link.kill()
            bell_link.wait()
            bell_link.stdout.close()
            will = json.loads(view.next_message(WAIT_S).payload)
            assert (will["type"], will["device"]["id"], will["reason"]) == ("device_offline", chatty.hex_id, "last_will")

            clock.advance(91)  # past the 90 s mains period
            silent = json.loads(view.next_message(WAIT_S).payload)
            assert (silent["type"], silent["device"]["id"], silent["reason"]) == ("device_offline", quiet.hex_id, "silent")
            clock.advance(30)
            with_more_time = []
            try:
                with_more_time.append(view.next_message(1.5))
            except TimeoutError:
                pass
            assert with_more_time == [], "a device goes offline once, not at every check"

            heard_before = agent.store.last_heard()[quiet.device_id]
            heartbeat(device, quiet, 2)
            waits.until(lambda: agent.store.last_heard()[quiet.device_id] != heard_before, WAIT_S,
                        "the heartbeat processed")
            clock.advance(6)  # the next supervision round
            back = json.loads(view.next_message(WAIT_S).payload)
            assert (back["type"], back["device"]["id"], back["reason"]) == ("device_online", quiet.hex_id, "heard")


def test_connected_bells_and_lights_get_the_time_again_every_few_hours(tmp_path, mqtt_client):
    from ansim_agent.service import TIME_EVERY_S
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port, bells=2,
                        overrides={"supervision": {"mains_s": str(2 * TIME_EVERY_S)}})  # no silence alarms here
        clock = Clock()
        bell, gone = street.bells
        with Agent(config_module.load(street.config_path), clock=clock) as agent:
            device = mqtt_client(local)
            for b in (bell, gone):
                heartbeat(device, b, 1)
            waits.until(lambda: len(agent.store.last_heard()) == 2, WAIT_S, "both heartbeats processed")
            device.publish(topics.topic(gone.device_id, topics.STATE), b"offline")  # its last will
            waits.until(lambda: gone.device_id in agent.store.offline_devices(), WAIT_S, "the will processed")
            downlink = mqtt_client(local)
            downlink.subscribe("ansim/v1/dev/+/down")
            clock.advance(TIME_EVERY_S)
            msg = downlink.next_message(WAIT_S)
            clock_frame = frames.unpack(msg.payload, DeviceKeys(bell.key))
            assert msg.topic == topics.topic(bell.device_id, topics.DOWN)
            assert clock_frame.kind == "time" and clock_frame.fields["unix_time"] == int(clock())
            with pytest.raises(TimeoutError):  # the offline bell gets none
                downlink.next_message(1.0)


def test_a_restart_of_the_local_broker_reports_no_device_offline_but_a_real_drop_still_is(tmp_path, mqtt_client):
    """mosquitto publishes every client's will as it stops: a restart of the Pi's broker (an
    upgrade, ``systemctl restart``; with persistence, as Debian configures it) must not report
    every bell offline. A bell whose own link dies afterwards still is, at once."""
    with MosquittoBroker(workdir=tmp_path / "local", persistence=True) as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port, bells=2)
        view = mqtt_client(center)
        view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        links = []
        try:
            with Agent(config_module.load(street.config_path)) as agent:
                device = mqtt_client(local)
                for bell in street.bells:
                    heartbeat(device, bell, 1)
                    link = subprocess.Popen([sys.executable, "-c", BELL_LINK, str(local.port),
                                             topics.topic(bell.device_id, topics.STATE), "bell-%s" % bell.hex_id],
                                            stdout=subprocess.PIPE)
                    links.append(link)
                    connected(link)
                waits.until(lambda: len(agent.store.last_heard()) == 2, WAIT_S, "both heartbeats processed")

                local.restart()  # SIGTERM: mosquitto sends both bells' wills, then closes every connection
                for link in links:
                    connected(link)  # both bells back on the broker
                waits.until(lambda: agent.health.is_up("local_mqtt"), WAIT_S, "the agent back on its broker")
                gone = street.bells[1]
                links[1].kill()  # the second bell's power is cut: a real will
                arrived = []
                while True:
                    body = json.loads(view.next_message(WAIT_S).payload)
                    arrived.append((body["type"], body["device"]["id"], body.get("reason")))
                    if body["device"]["id"] == gone.hex_id:
                        break
                with pytest.raises(TimeoutError):
                    view.next_message(1.5)
        finally:
            for link in links:
                link.kill()
                link.wait()
                link.stdout.close()
    assert arrived == [("device_offline", gone.hex_id, "last_will")]

"""kill -9 of the agent at random moments during a stream of alerts loses nothing: every
alert reaches the center, exactly once by alert id, in order per device."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time


from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street

ALERTS_PER_BELL = 400
KILLS = 3


def start_agent(street, log):
    return subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "agent", "--config", str(street.config_path)],
                            stdout=log, stderr=subprocess.STDOUT)


def test_kill_9_during_a_stream_loses_nothing_and_duplicates_nothing_by_id(tmp_path, mqtt_client):
    rng = random.Random(os.environ.get("ANSIM_SEED", "kill9"))
    with MosquittoBroker(workdir=tmp_path / "local") as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port, bells=2,
                        overrides={"center": {"escalation_s": "3600"}})
        received = []  # alert ids in arrival order
        center_view = mqtt_client(center, client_id="center-sim")
        center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
        births = mqtt_client(center, client_id="center-births")
        births.subscribe("ansim/center/v1/agents/+/state")
        bells = mqtt_client(local, client_id="bells")
        log = open(tmp_path / "agent.log", "w")
        agent = start_agent(street, log)
        try:
            # The agent's persistent session on the local broker exists from its first start on.
            assert json.loads(births.next_message(timeout=20).payload)["state"] == "online"
            sender = threading.Thread(target=_stream, args=(bells, street), daemon=True)
            sender.start()
            kills_during_stream = 0
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.2, 0.6))  # a random moment in the stream
                kills_during_stream += sender.is_alive()
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                agent = start_agent(street, log)
            sender.join(60)
            assert kills_during_stream >= 2, "the stream ended before the kills: lengthen it"
            expected = {"%s-%d" % (b.hex_id, c) for b in street.bells for c in range(1, ALERTS_PER_BELL + 1)}
            deadline = time.monotonic() + 60
            while set(received) != expected and time.monotonic() < deadline:
                try:
                    received.append(json.loads(center_view.next_message(timeout=1).payload)["alert_id"])
                except TimeoutError:
                    continue
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
            log.close()
        missing = expected - set(received)
        assert not missing, "lost %d alerts: %s" % (len(missing), sorted(missing, key=lambda a: (a[:8], int(a[9:]))))
        for bell in street.bells:
            firsts = []
            for alert_id in received:
                if alert_id.startswith(bell.hex_id) and alert_id not in firsts:
                    firsts.append(alert_id)
            assert firsts == ["%s-%d" % (bell.hex_id, c) for c in range(1, ALERTS_PER_BELL + 1)], \
                "out of order for %s" % bell.hex_id


def _stream(client, street):
    """Both bells press in turns, ~300 alerts/s, QoS 1 to the local broker."""
    for counter in range(1, ALERTS_PER_BELL + 1):
        for bell in street.bells:
            frame = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)
            client.publish(topics.topic(bell.device_id, topics.UP), frame)
        time.sleep(0.005)

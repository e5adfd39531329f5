"""The bell firmware on a virtual board (the real MicroPython VM) with the real agent and two
real mosquittos: a press reaches the center as a bell_press alert, the siren and strobe come on
with the announcement, the center's ack makes the bell announce the connection and silence
the siren; the tamper switch, replayed and forged acks, and the heartbeat."""

import json
import os
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.broker import MosquittoBroker
from ansim_simulators.street import Street
from ansim_simulators.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BUTTON, TAMPER, SIREN, STROBE = 0, 4, 25, 26
WAIT_S = 15
CALLING = "ANNOUNCE: 긴급신고가 접수되었습니다. 경찰관을 연결 중입니다"
CONNECTED = "ANNOUNCE: 경찰관이 연결되었습니다"


def flash(board_dir, bell, broker_port):
    """What ``ansim flash`` puts on a bell: both packages under lib/, main.py and the role at the
    root, its config.json."""
    copy_to_directory(firmware_files("bell"), board_dir)
    (board_dir / "config.json").write_text(json.dumps({
        "device_id": bell.hex_id, "role": "bell", "key": bell.key.hex(),
        "position": list(bell.position), "broker": {"host": "127.0.0.1", "port": broker_port},
        "button_pin": BUTTON, "tamper_pin": TAMPER, "siren_pin": SIREN, "strobe_pin": STROBE,
        "heartbeat_s": 2}))


def printed(board, text, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def next_frame(view, keys, kind, timeout=WAIT_S):
    """The next frame of ``kind`` a subscriber sees (others skipped), with its message and arrival time."""
    deadline = time.monotonic() + timeout
    while True:
        msg = view.next_message(max(0.0, deadline - time.monotonic()))
        seen = time.monotonic()
        try:
            frame = frames.unpack(msg.payload, keys)
        except FrameError:
            continue  # the test's own forgery on the down topic
        if frame.kind == kind:
            return frame, msg, seen


def next_alert(view, kind, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        msg = view.next_message(max(0.0, deadline - time.monotonic()))
        alert = json.loads(msg.payload)
        if alert.get("type") == kind:
            return alert, msg, time.monotonic()


@pytest.fixture
def bell_site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        bell = street.bells[0]
        flash(tmp_path / "flash", bell, local.port)
        with Agent(config_module.load(street.config_path)) as agent, \
                VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm") as board:
            yield street, local, center, agent, board, bell


def test_bell_press_alerts_the_center_sounds_and_confirms_the_ack(bell_site, mqtt_client):
    street, local, center, agent, board, bell = bell_site
    ctl = board.control
    keys = DeviceKeys(bell.key)
    up, down = topics.topic(bell.device_id, topics.UP), topics.topic(bell.device_id, topics.DOWN)
    try:
        uplink = mqtt_client(local)
        uplink.subscribe(up)
        downlink = mqtt_client(local)
        downlink.subscribe(down)
        center_view = mqtt_client(center)
        center_view.subscribe("ansim/center/v1/+/alerts/#")
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        time.sleep(0.3)  # the subscriptions above are in place before anything is pressed

        # The virtual lid reads open (pull-up, nothing to ground) at boot: reported; closing it too.
        state = next_frame(uplink, keys, "tamper")[0]
        assert state.fields == {"state": "opened"}
        ctl.set_pin(TAMPER, 0)
        assert next_frame(uplink, keys, "tamper")[0].fields == {"state": "closed"}
        assert ctl.pin(SIREN, 0) == 0 and ctl.pin(STROBE, 0) == 0

        # A press: bell_press on the broker at once, then siren, strobe and the announcement.
        mark = ctl.mark()
        pressed_at = time.monotonic()
        ctl.set_pin(BUTTON, 0)
        press, _, published_at = next_frame(uplink, keys, "bell_press")
        time.sleep(max(0.0, 0.15 - (time.monotonic() - pressed_at)))  # a 150 ms press
        ctl.set_pin(BUTTON, 1)
        assert press.fields == {"button": 1} and not press.downlink
        siren = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=1)
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=STROBE, value=1)
        calling = printed(board, CALLING, mark)
        assert calling["text"].startswith("ANNOUNCE: ")
        alert, _, alerted_at = next_alert(center_view, "bell_press")
        assert alert["alert_id"] == "%s-%d" % (bell.hex_id, press.counter)
        assert alert["location"]["source"] == "registered"
        voice = [e for e in ctl.events(mark) if e.get("ev") == "uart"]
        print("\npress -> bell_press on the local broker %.1f ms; -> siren pin %.1f ms; -> center alert %.1f ms"
              % ((published_at - pressed_at) * 1000, (siren["t"] - pressed_at) * 1000,
                 (alerted_at - pressed_at) * 1000))
        print("voice UART events:", voice[:1])

        # A forged ack (wrong key) on the down topic changes nothing.
        device = mqtt_client(local)
        forged = frames.build_plain("center_ack", {"acked_counter": press.counter, "status": "received"},
                                    DeviceKeys(os.urandom(16)), bell.device_id, 1000, downlink=True)
        device.publish(down, forged, qos=1)
        printed(board, "frame rejected: tag", mark)
        assert ctl.pin(SIREN) == 1

        # The center acknowledges: the agent relays a center_ack, the bell announces, siren off.
        mark = ctl.mark()
        acked_at = time.monotonic()
        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
        ack, ack_msg, _ = next_frame(downlink, keys, "center_ack")
        assert ack.fields == {"acked_counter": press.counter, "status": "received"}
        confirmed = printed(board, CONNECTED, mark)
        silent = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=0)
        assert silent["t"] >= confirmed["t"]
        assert ctl.pin(STROBE) == 1  # the strobe stays on until the alert is resolved
        print("center ack -> confirmation %.1f ms" % ((confirmed["t"] - acked_at) * 1000))

        # The same ack again is a replay: no second announcement.
        mark = ctl.mark()
        device.publish(down, ack_msg.payload, qos=1)
        printed(board, "replayed", mark)
        assert not any(CONNECTED in e.get("text", "") for e in ctl.events(mark))

        # Resolved: the strobe goes off, the bell is idle.
        mark = ctl.mark()
        center_view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": "resolved"}))
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=STROBE, value=0)
        printed(board, "alarm over (resolved)", mark)

        # Heartbeats every heartbeat_s, verified by the agent's key.
        assert next_frame(uplink, keys, "heartbeat", timeout=5)[0].fields["battery_pct"] == 255
        start = printed(board, "starting", 0)
        heap = printed(board, "bell: heap alloc", 0)
        print("VM heap:", start["text"].strip(), "/", heap["text"].strip())
        output = "".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print")
        assert "on_message failed" not in output and "Traceback" not in output, output
        if os.environ.get("ANSIM_SHOW_PRINTS"):
            print(output)
    except BaseException:
        print("VM log:\n" + board.log())
        print("prints:\n" + "".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print"))
        raise


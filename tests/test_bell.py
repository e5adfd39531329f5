"""The bell firmware on a virtual board (the real MicroPython VM) with the real agent and two
real mosquittos: a press reaches the center as a bell_press alert, the siren and strobe come on
with the announcement, the center's ack makes the bell announce the connection and silence
the siren; the tamper switch, replayed and forged acks, and the heartbeat; pressing again
during the alarm; power cycles that never reuse a counter; the watchdog; a 1 MB message on its
down topic, drained unread without losing the link."""

import contextlib
import json
import os
import time

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import DEVICE_MAX_PACKET_SIZE, MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BUTTON, TAMPER, SIREN, STROBE = 0, 4, 25, 26
WAIT_S = 15
PRESS_S = 0.15  # how long a person holds the button
RELEASE_S = 0.15  # how long a person lets go between two presses (the firmware needs 50 ms)
CALLING = "ANNOUNCE: 긴급신고가 접수되었습니다. 경찰관을 연결 중입니다"
CONNECTED = "ANNOUNCE: 경찰관이 연결되었습니다"


def flash(board_dir, bell, broker_port, **settings):
    """What ``ansim flash`` puts on a bell: both packages under lib/, main.py and the role at the
    root, its config.json."""
    copy_to_directory(firmware_files("bell"), board_dir)
    (board_dir / "config.json").write_text(json.dumps(dict({
        "device_id": bell.hex_id, "role": "bell", "key": bell.key.hex(),
        "position": list(bell.position), "broker": {"host": "127.0.0.1", "port": broker_port},
        "button_pin": BUTTON, "tamper_pin": TAMPER, "siren_pin": SIREN, "strobe_pin": STROBE,
        "heartbeat_s": 2}, **settings)))


class Site:
    """A street with the agent, the first bell on a virtual board, and three subscribers that
    were subscribed (SUBACK) before the bell booted: ``uplink`` and ``downlink`` (the bell's up
    and down topics on the local broker) and ``center`` (every alert at the center)."""

    def __init__(self, street, local, center, agent, board, bell, views):
        self.street, self.local, self.center_broker, self.agent = street, local, center, agent
        self.board, self.ctl, self.bell = board, board.control, bell
        self.keys = DeviceKeys(bell.key)
        self.uplink, self.downlink, self.center = views
        self.down_topic = topics.topic(bell.device_id, topics.DOWN)

    def ack(self, alert, status):
        """The center acknowledges ``alert`` to the agent."""
        self.center.publish("ansim/center/v1/agents/%s/ack" % self.street.agent_id,
                            json.dumps({"alert_id": alert["alert_id"], "status": status}))


@contextlib.contextmanager
def bell_site(tmp_path, mqtt_client, local_cap=DEVICE_MAX_PACKET_SIZE, **settings):
    """The Site; ``local_cap``: the local broker's max_packet_size (``None``: none); ``settings``:
    more config.json keys."""
    with MosquittoBroker(workdir=tmp_path / "local", max_packet_size=local_cap) as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        bell = street.bells[0]
        flash(tmp_path / "flash", bell, local.port, **settings)
        with Agent(config_module.load(street.config_path)) as agent:
            views = (mqtt_client(local), mqtt_client(local), mqtt_client(center))
            views[0].subscribe(topics.topic(bell.device_id, topics.UP))  # each returns after its SUBACK
            views[1].subscribe(topics.topic(bell.device_id, topics.DOWN))
            views[2].subscribe("ansim/center/v1/+/alerts/#")
            with VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm") as board:
                try:
                    yield Site(street, local, center, agent, board, bell, views)
                except BaseException:
                    print("VM log:\n" + board.log())
                    print("prints:\n" + prints(board))
                    raise


def prints(board, since=0):
    return "".join(e.get("text", "") for e in board.control.events(since) if e.get("ev") == "print")


def printed(board, text, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def frames_until(view, keys, kind, timeout=WAIT_S, counter=None):
    """Every frame a subscriber sees up to the next one of ``kind`` (with ``counter``), that one
    last: [(frame, message)]; the message's ``timestamp`` is its arrival (time.monotonic)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        msg = view.next_message(max(0.0, deadline - time.monotonic()))
        try:
            frame = frames.unpack(msg.payload, keys)
        except FrameError:
            continue  # the test's own forgery on the down topic
        seen.append((frame, msg))
        if frame.kind == kind and counter in (None, frame.counter):
            return seen


def next_frame(view, keys, kind, timeout=WAIT_S):
    """The next frame of ``kind`` a subscriber sees (others skipped) and its message."""
    return frames_until(view, keys, kind, timeout)[-1]


def next_alert(view, kind, timeout=WAIT_S, alert_id=None):
    """The next alert of ``kind`` (with ``alert_id``) at the center, others skipped; and its message."""
    deadline = time.monotonic() + timeout
    while True:
        msg = view.next_message(max(0.0, deadline - time.monotonic()))
        alert = json.loads(msg.payload)
        if alert.get("type") == kind and alert_id in (None, alert["alert_id"]):
            return alert, msg


def press(ctl):
    """A person presses the button for PRESS_S (the sleep is the press, not a wait)."""
    ctl.press(BUTTON, ms=PRESS_S * 1000)


def test_bell_press_alerts_the_center_sounds_and_confirms_the_ack(tmp_path, mqtt_client):
    with bell_site(tmp_path, mqtt_client) as site:
        ctl, board, bell, keys, uplink = site.ctl, site.board, site.bell, site.keys, site.uplink

        # The virtual lid reads open (pull-up, nothing to ground) at boot: reported; closing it too.
        state = next_frame(uplink, keys, "tamper")[0]
        assert state.fields == {"state": "opened"}
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        ctl.set_pin(TAMPER, 0)
        assert next_frame(uplink, keys, "tamper")[0].fields == {"state": "closed"}
        assert ctl.pin(SIREN, 0) == 0 and ctl.pin(STROBE, 0) == 0

        # A press: bell_press on the broker at once, then siren, strobe and the announcement.
        mark = ctl.mark()
        pressed_at = time.monotonic()
        ctl.set_pin(BUTTON, 0)
        press_frame, press_msg = next_frame(uplink, keys, "bell_press")
        time.sleep(max(0.0, PRESS_S - (time.monotonic() - pressed_at)))  # the rest of a 150 ms press
        ctl.set_pin(BUTTON, 1)
        assert press_frame.fields == {"button": 1} and not press_frame.downlink
        siren = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=1)
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=STROBE, value=1)
        calling = printed(board, CALLING, mark)
        assert calling["text"].startswith("ANNOUNCE: ")
        alert, alert_msg = next_alert(site.center, "bell_press")
        assert alert["alert_id"] == "%s-%d" % (bell.hex_id, press_frame.counter)
        assert alert["location"]["source"] == "registered"
        voice = [e for e in ctl.events(mark) if e.get("ev") == "uart"]
        print("\npress -> bell_press on the local broker %.1f ms; -> siren pin %.1f ms; -> center alert %.1f ms"
              % ((press_msg.timestamp - pressed_at) * 1000, (siren["t"] - pressed_at) * 1000,
                 (alert_msg.timestamp - pressed_at) * 1000))
        print("voice UART events:", voice[:1])

        # A forged ack (wrong key) on the down topic changes nothing.
        forged = frames.build_plain("center_ack", {"acked_counter": press_frame.counter, "status": "received"},
                                    DeviceKeys(os.urandom(16)), bell.device_id, 1000, downlink=True)
        site.downlink.publish(site.down_topic, forged, qos=1)
        printed(board, "frame rejected: tag", mark)
        assert ctl.pin(SIREN) == 1

        # The center acknowledges: the agent relays a center_ack, the bell announces, siren off.
        mark = ctl.mark()
        acked_at = time.monotonic()
        site.ack(alert, "received")
        ack, ack_msg = next_frame(site.downlink, keys, "center_ack")
        assert ack.fields == {"acked_counter": press_frame.counter, "status": "received"}
        confirmed = printed(board, CONNECTED, mark)
        silent = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=0)
        assert silent["t"] >= confirmed["t"]
        assert ctl.pin(STROBE) == 1  # the strobe stays on until the alert is resolved
        print("center ack -> confirmation %.1f ms" % ((confirmed["t"] - acked_at) * 1000))

        # The same ack again is a replay: no second announcement.
        mark = ctl.mark()
        site.downlink.publish(site.down_topic, ack_msg.payload, qos=1)
        printed(board, "replayed", mark)
        assert CONNECTED not in prints(board, mark)

        # Resolved: the strobe goes off, the bell is idle.
        mark = ctl.mark()
        site.ack(alert, "resolved")
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=STROBE, value=0)
        printed(board, "alarm over (resolved)", mark)

        # Heartbeats every heartbeat_s, verified by the agent's key.
        assert next_frame(uplink, keys, "heartbeat", timeout=5)[0].fields["battery_pct"] == 255
        start = printed(board, "starting", 0)
        heap = printed(board, "bell: heap alloc", 0)
        print("VM heap:", start["text"].strip(), "/", heap["text"].strip())
        output = prints(board)
        assert "on_message failed" not in output and "Traceback" not in output, output
        assert not [e for e in ctl.events() if e.get("ev") in ("wdt", "vm_exit")]
        if os.environ.get("ANSIM_SHOW_PRINTS"):
            print(output)


def test_a_1_mb_message_on_the_down_topic_is_drained_and_the_center_ack_still_arrives(tmp_path, mqtt_client):
    """During an alarm, 1 MB published straight to the bell's down topic on a local broker without
    max_packet_size (the firmware's own defense): the bell drains it unread, stays connected (one
    connection in the broker's log) and announces the center's ack that follows."""
    with bell_site(tmp_path, mqtt_client, local_cap=None) as site:
        ctl, board, bell = site.ctl, site.board, site.bell
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        mark = ctl.mark()
        press(ctl)
        press_frame = next_frame(site.uplink, site.keys, "bell_press")[0]
        alert = next_alert(site.center, "bell_press", alert_id="%s-%d" % (bell.hex_id, press_frame.counter))[0]
        printed(board, CALLING, mark)

        mark = ctl.mark()
        assert not site.downlink.publish(site.down_topic, os.urandom(1 << 20), qos=1).is_failure
        printed(board, "mqtt: dropped an oversize packet", mark)
        site.ack(alert, "received")
        printed(board, CONNECTED, mark)
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=0)

        output = prints(board)
        for sign in ("MemoryError", "Traceback", "mqtt: receive ended", "mqtt: link"):
            assert sign not in output, output
        assert output.count("bell: online as") == 1, output
        assert site.local.log_path.read_text().count("as %s " % bell.hex_id) == 1  # connected once


def test_pressing_again_during_the_alarm_sends_a_new_bell_press_without_a_new_alarm(tmp_path, mqtt_client):
    """Every press is its own bell_press with a higher counter, and the agent makes each its own
    alert (CENTER_API.md: one alert per event, ``alert_id`` = device-counter, in counter order);
    the alarm goes on: no second announcement, the siren and strobe are not switched again. A
    3 ms release is contact bounce, not a press; 70 ms is a new press. The center may
    acknowledge any of the alarm's presses."""
    with bell_site(tmp_path, mqtt_client) as site:
        ctl, board, bell, keys = site.ctl, site.board, site.bell, site.keys
        printed(board, "bell: online as %s" % bell.hex_id, 0)

        # The first press, whose contacts bounce on release (open 3 ms, closed again 100 ms).
        start = ctl.mark()
        ctl.set_pin(BUTTON, 0)
        time.sleep(PRESS_S)
        ctl.set_pin(BUTTON, 1)
        time.sleep(0.003)
        ctl.press(BUTTON, ms=100)
        first = next_frame(site.uplink, keys, "bell_press")[0]
        printed(board, "bell: press %d" % first.counter, start)
        ctl.wait_for(since=start, timeout=WAIT_S, ev="pin", pin=SIREN, value=1)
        printed(board, CALLING, start)
        first_alert = next_alert(site.center, "bell_press")[0]
        assert first_alert["alert_id"] == "%s-%d" % (bell.hex_id, first.counter)

        # Pressed again during the alarm; then again after a release of only 70 ms.
        time.sleep(RELEASE_S)
        mark = ctl.mark()
        press(ctl)
        time.sleep(0.07)
        press(ctl)
        between = frames_until(site.uplink, keys, "bell_press")
        second = between[-1][0]
        assert [f.counter for f, _ in between[:-1] if f.kind == "bell_press"] == []  # the bounce sent nothing
        assert second.counter > first.counter and second.fields == {"button": 1}
        third = next_frame(site.uplink, keys, "bell_press")[0]
        assert third.counter > second.counter
        printed(board, "bell: press %d" % second.counter, mark)
        printed(board, "bell: press %d" % third.counter, mark)
        # Each is its own alert, in order, for the same bell at the same place.
        second_alert = next_alert(site.center, "bell_press")[0]
        third_alert = next_alert(site.center, "bell_press")[0]
        assert second_alert["alert_id"] == "%s-%d" % (bell.hex_id, second.counter)
        assert third_alert["alert_id"] == "%s-%d" % (bell.hex_id, third.counter)
        assert second_alert["device"] == third_alert["device"] == first_alert["device"]
        assert second_alert["location"] == first_alert["location"]

        # The center acknowledges the second press: it belongs to this alarm, so the bell confirms.
        mark = ctl.mark()
        site.ack(second_alert, "received")
        printed(board, "bell: ack", mark)
        printed(board, CONNECTED, mark)
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pin", pin=SIREN, value=0)
        # Everything the bell did for the presses is in the events by now (the ack came after).
        output = prints(board, start)
        assert output.count(CALLING) == 1, output
        assert output.count(CONNECTED) == 1, output
        switched = [e for e in ctl.events(start) if e.get("ev") == "pin" and e["pin"] in (SIREN, STROBE)]
        assert [(e["pin"], e["value"]) for e in switched] == [(SIREN, 1), (STROBE, 1), (SIREN, 0)], switched
        assert ctl.pin(STROBE) == 1


def test_a_power_cycle_never_reuses_a_counter(tmp_path, mqtt_client):
    """Press, cut the power, boot, press: every frame after the cycle has a counter above every
    counter used before it, and the agent accepts them (the new boot's tamper report and press
    reach the center; none is refused as a replay). The alarm does not survive the power loss:
    the new press starts a new one."""
    with bell_site(tmp_path, mqtt_client) as site:
        ctl, board, bell, keys = site.ctl, site.board, site.bell, site.keys
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        press(ctl)
        before = frames_until(site.uplink, keys, "bell_press")  # the lid open at boot, then the press
        assert before[0][0].kind == "tamper", [(f.kind, f.counter) for f, _ in before]
        next_alert(site.center, "bell_press")

        mark = ctl.mark()
        board.power_cycle()
        assert ctl.wait_for(since=mark, timeout=WAIT_S, ev="hello")["cause"] == 1  # PWRON_RESET
        printed(board, "bell: online as %s" % bell.hex_id, mark)
        press(ctl)
        press_print = printed(board, "bell: press", mark)
        counter = int(press_print["text"].split()[-1])
        after = frames_until(site.uplink, keys, "bell_press", counter=counter)
        used = [(f.kind, f.counter) for f, _ in before], [(f.kind, f.counter) for f, _ in after]
        assert max(f.counter for f, _ in before) < min(f.counter for f, _ in after), used
        assert after[0][0].kind == "tamper", used  # the new boot's lid report went first
        tamper = next_alert(site.center, "tamper", alert_id="%s-%d" % (bell.hex_id, after[0][0].counter))[0]
        assert tamper["type"] == "tamper"
        next_alert(site.center, "bell_press", alert_id="%s-%d" % (bell.hex_id, counter))
        printed(board, CALLING, mark)  # a new alarm


def test_power_cuts_in_the_middle_of_a_stream_of_presses_keep_the_counters_rising(tmp_path, mqtt_client):
    """Short presses with the power cut right after each (the frame may be on its way, or still
    in RAM): whatever reaches the broker comes in strictly rising counter order across all the
    boots, and every bell_press that reached the broker is an alert at the center."""
    with bell_site(tmp_path, mqtt_client) as site:
        ctl, board, bell, keys = site.ctl, site.board, site.bell, site.keys
        mark = 0
        for _ in range(3):
            printed(board, "bell: online as %s" % bell.hex_id, mark)
            ctl.press(BUTTON, ms=20)
            mark = ctl.mark()
            board.power_cycle()
        printed(board, "bell: online as %s" % bell.hex_id, mark)
        press(ctl)
        last = int(printed(board, "bell: press", mark)["text"].split()[-1])
        stream = frames_until(site.uplink, keys, "bell_press", counter=last)
        # a frame published just before a cut, whose PUBACK the bell never saw, comes again after
        # the boot (kept in flash): the same bytes, which the agent takes as the same event
        seen = set()
        stream = [(f, msg) for f, msg in stream if not (msg.payload in seen or seen.add(msg.payload))]
        counters = [f.counter for f, _ in stream]
        assert counters == sorted(set(counters)), [(f.kind, f.counter) for f, _ in stream]
        presses = [f.counter for f, _ in stream if f.kind == "bell_press"]
        print("\nframes seen across 3 power cuts:", [(f.kind, f.counter) for f, _ in stream])
        for counter in presses:
            next_alert(site.center, "bell_press", alert_id="%s-%d" % (bell.hex_id, counter))
        assert presses[-1] == last


def test_a_press_while_the_broker_is_down_survives_a_power_cut(tmp_path, mqtt_client):
    """The WiFi or the Pi's broker is down, someone presses, then the power goes: the press is
    kept in flash, sent first after the boot once the broker is back, and reaches the center."""
    with bell_site(tmp_path, mqtt_client) as site:
        ctl, board, bell = site.ctl, site.board, site.bell
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        mark = ctl.mark()
        site.local.stop()
        printed(board, "bell: broker lost", mark)
        press(ctl)
        counter = int(printed(board, "bell: press", mark)["text"].split()[-1])
        mark = ctl.mark()
        board.power_cycle()
        # the press, and the lid-open tamper of the boot if the broker went before acking it
        kept = printed(board, "frames from before the power went still to send", mark)
        assert kept["text"].split()[1] in ("1", "2"), kept["text"]
        site.local.start()
        alert = next_alert(site.center, "bell_press", timeout=3 * WAIT_S,
                           alert_id="%s-%d" % (bell.hex_id, counter))[0]
        assert alert["type"] == "bell_press"
        waits.until(lambda: not (board.board_dir / "state" / "outbox").exists(), WAIT_S, "the saved press cleared")


def test_a_hung_bell_is_reset_by_its_watchdog_and_comes_back(tmp_path, mqtt_client):
    """The bell arms a watchdog of ``watchdog_s``; its 10 ms poll feeds it. Running normally for
    longer than the timeout does not reset it; stopped for longer (the VM stopped, as a CPU
    stuck in a blocking call), it resets with WDT_RESET, boots into the firmware and its
    next press has a counter above the ones before."""
    with bell_site(tmp_path, mqtt_client, watchdog_s=1) as site:
        ctl, board, bell, keys = site.ctl, site.board, site.bell, site.keys
        printed(board, "bell: watchdog 1000 ms", 0)
        printed(board, "bell: online as %s" % bell.hex_id, 0)
        try:
            before = frames_until(site.uplink, keys, "heartbeat")  # 2 s: twice the watchdog's timeout
        except TimeoutError:
            raise AssertionError("no heartbeat; resets: %s" % [e for e in ctl.events() if e.get("ev") in
                                                                ("wdt", "hello")]) from None
        assert not [e for e in ctl.events(0) if e.get("ev") in ("wdt", "vm_exit")]

        mark = ctl.mark()
        board.freeze(1.5)  # longer than the watchdog's 1 s
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="wdt")
        assert ctl.wait_for(since=mark, timeout=WAIT_S, ev="hello")["cause"] == 3  # WDT_RESET
        printed(board, "bell: watchdog 1000 ms", mark)
        printed(board, "bell: online as %s" % bell.hex_id, mark)
        press(ctl)
        after = next_frame(site.uplink, keys, "bell_press")[0]
        assert after.counter > max(f.counter for f, _ in before)
        next_alert(site.center, "bell_press", alert_id="%s-%d" % (bell.hex_id, after.counter))

"""The streetlight firmware on a virtual board (the real MicroPython VM) with the real agent
and a real mosquitto: it connects, blinks when a bell near it is pressed, ignores forged and
replayed commands, and falls back to its schedule when the broker goes away; a light whose RTC
lost power gets the time from the agent when it connects; a dead lamp is reported; a frozen
firmware is reset by the watchdog; a 1 MB message on its command topic is drained unread, the link
kept (also shown for the devices' MQTT client alone, in a 64 KB heap)."""

import contextlib
import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_protocol.errors import FrameError
from ansim_simulators.fixtures import waits
from ansim_simulators.hardware import virtual_board
from ansim_simulators.fixtures.broker import DEVICE_MAX_PACKET_SIZE, MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

PIN, SENSE = 5, 34
WAIT_S = 15
NIGHT_PCT, DAY_PCT = 60, 20
CLOCK_SET_AFTER = 1700000000  # ansim_device.clock: a clock before this was never set


def duty(pct):
    return pct * 65535 // 100


def flash(board_dir, light, broker_port, schedule, **settings):
    """What ``ansim flash`` puts on a light: both packages under lib/, main.py and the role at the root,
    its config.json. The schedule is in the host's local time (``utc_offset_min``: the VM's RTC runs UTC)."""
    copy_to_directory(firmware_files("streetlight"), board_dir)
    (board_dir / "config.json").write_text(json.dumps(dict({
        "device_id": light.hex_id, "role": "streetlight", "key": light.key.hex(),
        "position": list(light.position), "broker": {"host": "127.0.0.1", "port": broker_port},
        "pwm_pin": PIN, "heartbeat_s": 2, "schedule": schedule,
        "utc_offset_min": time.localtime().tm_gmtoff // 60}, **settings)))


def hhmm(minutes):
    return "%02d:%02d" % ((minutes % 1440) // 60, minutes % 60)


def local_minutes(unix=None):
    t = time.localtime(unix)
    return t.tm_hour * 60 + t.tm_min


def night_now():
    """A schedule whose night window holds the present local time, so the schedule level is NIGHT_PCT."""
    now = local_minutes()
    return {"on": hhmm(now - 120), "off": hhmm(now + 120), "night_pct": NIGHT_PCT, "day_pct": DAY_PCT}


def day_now():
    """A schedule whose night starts in 2 h and lasts 2 h: the level now is DAY_PCT."""
    now = local_minutes()
    return {"on": hhmm(now + 120), "off": hhmm(now + 240), "night_pct": NIGHT_PCT, "day_pct": DAY_PCT}


def printed(board, text, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def next_frame(view, keys, kind, timeout=WAIT_S, fields=None):
    """The next frame of ``kind`` (with these ``fields``) a subscriber sees, others skipped."""
    deadline = time.monotonic() + timeout
    while True:
        msg = view.next_message(max(0.0, deadline - time.monotonic()))
        try:
            frame = frames.unpack(msg.payload, keys)
        except FrameError:
            continue  # the test's own forgeries
        if frame.kind == kind and all(frame.fields[k] == v for k, v in (fields or {}).items()):
            return frame, msg


def next_alert(view, kind, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        alert = json.loads(view.next_message(max(0.0, deadline - time.monotonic())).payload)
        if alert.get("type") == kind:
            return alert


@contextlib.contextmanager
def street_with_light(tmp_path, mqtt_client, schedule, clock="host", adc=None, local_cap=DEVICE_MAX_PACKET_SIZE,
                      **settings):
    """(street, local broker, center broker, agent, board, light, views): the agent runs before the
    light boots; ``views`` are subscribers to the light's down and up topics and the center's alerts,
    subscribed before the light boots; ``adc`` {pin: u16}: what the light's sensors read from its
    first boot on; ``local_cap``: the local broker's max_packet_size (``None``: none); ``settings``:
    more config.json keys."""
    with MosquittoBroker(workdir=tmp_path / "local", max_packet_size=local_cap) as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        light = street.lights[1]  # 20 m east of the origin; the first bell is at 30 m east, 5 m north
        flash(tmp_path / "flash", light, local.port, schedule, **settings)
        with Agent(config_module.load(street.config_path)) as agent:
            views = {"down": mqtt_client(local), "up": mqtt_client(local), "alerts": mqtt_client(center)}
            views["down"].subscribe(topics.topic(light.device_id, topics.DOWN))
            views["up"].subscribe(topics.topic(light.device_id, topics.UP))
            views["alerts"].subscribe("ansim/center/v1/+/alerts/#")
            main_py = tmp_path / "flash" / "main.py"
            if adc:  # installed with its sensors wired: they read from the first boot of the firmware on
                main_py.rename(main_py.with_suffix(".later"))
            with VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm", clock=clock) as board:
                if adc:
                    for pin, value in adc.items():
                        board.control.set_adc(pin, value)
                    main_py.with_suffix(".later").rename(main_py)
                    board.reset()  # the inputs are replayed to the new VM before it runs boot.py
                try:
                    yield street, local, center, agent, board, light, views
                except BaseException:
                    print("VM log:\n" + board.log())
                    print("prints:\n" + "".join(e.get("text", "") for e in board.control.events()
                                                 if e.get("ev") == "print"))
                    raise


@pytest.fixture
def lit_street(tmp_path, mqtt_client):
    with street_with_light(tmp_path, mqtt_client, night_now()) as (street, local, _, agent, board, light, _):
        yield street, local, agent, board, light


def test_streetlight_blinks_for_a_bell_ignores_forgeries_and_falls_back(lit_street, mqtt_client):
    street, local, agent, board, light = lit_street
    ctl = board.control
    # Connects: schedule level on the PWM, retained "online", a light_state the agent verified.
    ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
    state_view = mqtt_client(local)
    state_view.subscribe(topics.topic(light.device_id, topics.STATE))
    assert state_view.next_message(WAIT_S).payload == b"online"
    waits.until(lambda: agent.core.light_states.get(light.device_id, {}).get("mode") == "schedule", WAIT_S,
                "a light_state at the agent")
    assert agent.core.light_states[light.device_id]["commanded_pct"] == NIGHT_PCT

    # A forged command (wrong key) straight to the light's down topic changes nothing.
    device = mqtt_client(local)
    down = topics.topic(light.device_id, topics.DOWN)
    forged = frames.build_plain("light_command", {"action": "brighten", "level_pct": 0, "duration_s": 60,
                                                  "expires": int(time.time()) + 60},
                                DeviceKeys(os.urandom(16)), light.device_id, 1000, downlink=True)
    mark = ctl.mark()
    assert not device.publish(down, forged, qos=1).is_failure
    printed(board, "frame rejected: tag", mark)
    with pytest.raises(TimeoutError):
        ctl.wait_for(since=mark, timeout=1.0, ev="pwm", pin=PIN)

    # A genuine but expired command is ignored too.
    expired = frames.build_plain("light_command", {"action": "brighten", "level_pct": 0, "duration_s": 60,
                                                   "expires": int(time.time()) - 5},
                                 DeviceKeys(light.key), light.device_id, 500, downlink=True)
    mark = ctl.mark()
    assert not device.publish(down, expired, qos=1).is_failure
    printed(board, "command 500 expired", mark)
    with pytest.raises(TimeoutError):
        ctl.wait_for(since=mark, timeout=0.5, ev="pwm", pin=PIN)

    # A bell press 10 m away: the agent commands a blink, the PWM toggles 100 % / 10 %.
    spy = mqtt_client(local)
    spy.subscribe(down)
    bell = street.bells[0]
    press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, 1)
    mark = ctl.mark()
    pressed_at = time.monotonic()
    assert not device.publish(topics.topic(bell.device_id, topics.UP), press).is_failure
    command = spy.next_message(WAIT_S)
    command_seen_at = time.monotonic()
    assert frames.unpack(command.payload, DeviceKeys(light.key)).fields["action"] == "blink"
    high = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(100))
    low = ctl.wait_for(lambda e: e["t"] > high["t"], since=mark, timeout=WAIT_S, ev="pwm", pin=PIN,
                       duty_u16=duty(10))
    again = ctl.wait_for(lambda e: e["t"] > low["t"], since=mark, timeout=WAIT_S, ev="pwm", pin=PIN,
                         duty_u16=duty(100))
    assert 0.15 < low["t"] - high["t"] < 0.6 and 0.15 < again["t"] - low["t"] < 0.6
    print("\nbell press -> PWM %.0f ms; command seen by a subscriber -> PWM %.0f ms"
          % ((high["t"] - pressed_at) * 1000, (high["t"] - command_seen_at) * 1000))
    waits.until(lambda: agent.core.light_states.get(light.device_id, {}).get("mode") == "blink", WAIT_S,
                "a light_state for the blink at the agent")

    # The same genuine command again is a replay: ignored.
    mark = ctl.mark()
    device.publish(down, command.payload, qos=1)
    printed(board, "replayed", mark)

    # A genuine brighten published straight to the down topic: publish -> PWM latency.
    brighten = frames.build_plain("light_command", {"action": "brighten", "level_pct": 80, "duration_s": 60,
                                                    "expires": int(time.time()) + 60},
                                  DeviceKeys(light.key), light.device_id, 600, downlink=True)
    mark = ctl.mark()
    sent_at = time.monotonic()
    device.publish(down, brighten, qos=1)
    bright = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(80))
    print("brighten publish -> PWM %.1f ms" % ((bright["t"] - sent_at) * 1000))

    start = printed(board, "starting", 0)
    heap = printed(board, "light: heap alloc", 0)
    print("VM heap:", start["text"].strip(), "/", heap["text"].strip())

    # The broker goes away: the light drops the blink and runs its schedule.
    mark = ctl.mark()
    local.stop()
    fell_back = ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
    with pytest.raises(TimeoutError):  # and stays there
        ctl.wait_for(lambda e: e["t"] > fell_back["t"], since=mark, timeout=1.0, ev="pwm", pin=PIN)
    output = "".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print")
    assert "on_message failed" not in output and "Traceback" not in output, output

    # The broker is back: the light reconnects by itself (backoff 1, 2, 4 ... s).
    mark = ctl.mark()
    local.start()
    printed(board, "online as", mark)
    if os.environ.get("ANSIM_SHOW_PRINTS"):
        print("".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print"))


def clock_set(board, since):
    """(old, new) Unix time of the next "clock set" line the light prints."""
    words = printed(board, "clock set", since)["text"].split()
    return int(words[3]), int(words[5])


def no_pwm_change(board, since, timeout=1.5):
    """The light's level stays as it is (its drive loop applies a new schedule within a second)."""
    with pytest.raises(TimeoutError):
        board.control.wait_for(since=since, timeout=timeout, ev="pwm", pin=PIN)


def test_a_light_whose_clock_lost_power_gets_the_time_from_the_agent(tmp_path, mqtt_client):
    """The RTC starts at 2000-01-01 (power loss): the light holds its night level, since it cannot tell
    night from day; it connects, the agent sends it a time frame, and the light keeps its day schedule
    and judges expiry. Forged and replayed time frames change nothing."""
    with street_with_light(tmp_path, mqtt_client, day_now(), clock=None) as (street, local, _, agent, board, light,
                                                                            views):
        ctl, keys = board.control, DeviceKeys(light.key)
        lit = ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
        sent, sent_msg = next_frame(views["down"], keys, "time")
        assert sent.downlink and abs(sent.fields["unix_time"] - time.time()) <= 2
        old, new = clock_set(board, 0)
        assert old < CLOCK_SET_AFTER and abs(new - time.time()) <= 3
        day = ctl.wait_for(lambda e: e["t"] > lit["t"], since=0, timeout=WAIT_S, ev="pwm", pin=PIN,
                           duty_u16=duty(DAY_PCT))
        assert day["t"] >= printed(board, "clock set", 0)["t"]
        assert not any("clock not set" in e.get("text", "") for e in ctl.events())  # no command came before

        # It now judges expiry: a genuine command that expired 5 s ago is refused.
        device = mqtt_client(local)
        down = topics.topic(light.device_id, topics.DOWN)
        expired = frames.build_plain("light_command", {"action": "brighten", "level_pct": 90, "duration_s": 60,
                                                       "expires": int(time.time()) - 5},
                                     keys, light.device_id, 5000, downlink=True)
        mark = ctl.mark()
        device.publish(down, expired)
        printed(board, "command 5000 expired", mark)
        no_pwm_change(board, mark, 0.5)

        # Time frames that would make it night (3 h ahead) from a forger, a replay of the agent's own
        # frame, and a genuine-looking one with a spent counter: refused, the light stays at day level.
        tonight = int(time.time()) + 3 * 3600
        start = ctl.mark()
        for payload, says in ((frames.build_plain("time", {"unix_time": tonight}, DeviceKeys(os.urandom(16)),
                                                  light.device_id, 7000, downlink=True), "frame rejected: tag"),
                              (sent_msg.payload, "time %d replayed" % sent.counter),
                              (frames.build_plain("time", {"unix_time": tonight}, keys, light.device_id,
                                                  sent.counter, downlink=True), "time %d replayed" % sent.counter)):
            mark = ctl.mark()
            device.publish(down, payload)
            printed(board, says, mark)
        no_pwm_change(board, start)
        assert not any("clock set" in e.get("text", "") for e in ctl.events(start))

        # The same time with a fresh counter is obeyed: the light's night begins (the refusals meant it).
        mark = ctl.mark()
        device.publish(down, frames.build_plain("time", {"unix_time": tonight}, keys, light.device_id, 7001,
                                                downlink=True))
        assert abs(clock_set(board, mark)[1] - tonight) <= 1
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))


def test_a_dead_lamp_is_reported_to_the_agent_and_the_center(tmp_path, mqtt_client):
    """The lamp's sensor reads low while the light is lit: after 2 s faults bit 0 in light_state and
    heartbeat, a lamp_fault alert at the center; a flicker shorter than 2 s is nothing; a lamp that
    works again clears the fault."""
    with street_with_light(tmp_path, mqtt_client, night_now(), adc={SENSE: 30000}, lamp_sense_pin=SENSE,
                           lamp_sense_min_u16=10000) as (street, local, center, agent, board, light, views):
        ctl, keys = board.control, DeviceKeys(light.key)
        ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
        state, _ = next_frame(views["up"], keys, "light_state")
        assert [state.fields[k] for k in ("mode", "commanded_pct", "faults")] == ["schedule", NIGHT_PCT, 0]

        mark = ctl.mark()
        ctl.set_adc(SENSE, 500)
        time.sleep(0.5)  # the stimulus: a flicker of half a second
        ctl.set_adc(SENSE, 30000)
        with pytest.raises(TimeoutError):
            printed(board, "lamp fault", mark, timeout=3.0)

        mark = ctl.mark()
        low_at = time.monotonic()
        ctl.set_adc(SENSE, 500)
        fault = printed(board, "light: lamp fault", mark)
        assert fault["t"] - low_at >= 1.9  # held for 2 s
        state, _ = next_frame(views["up"], keys, "light_state", fields={"faults": 1})
        assert (state.fields["mode"], state.fields["commanded_pct"]) == ("schedule", NIGHT_PCT)
        alert = next_alert(views["alerts"], "lamp_fault")
        assert alert["device"]["id"] == light.hex_id and alert["fields"]["faults"] == 1
        assert alert["alert_id"] == "%s-%d" % (light.hex_id, state.counter)
        assert alert["location"]["source"] == "registered"
        assert next_frame(views["up"], keys, "heartbeat", fields={"faults": 1})[0].fields["battery_pct"] == 255

        mark = ctl.mark()
        ctl.set_adc(SENSE, 30000)
        printed(board, "lamp fault cleared", mark)
        next_frame(views["up"], keys, "light_state", fields={"faults": 0})
        next_frame(views["up"], keys, "heartbeat", fields={"faults": 0})


def test_a_frozen_light_is_reset_by_its_watchdog_and_keeps_its_clock(tmp_path, mqtt_client):
    """The firmware arms a watchdog of ``watchdog_s``; the drive loop feeds it. When the whole
    firmware stops (the VM stopped, as a CPU stuck in a blocking call is) for longer, the board
    resets with WDT_RESET and comes back into its firmware; its RTC ran through the reset, so it
    knows at once that it is day."""
    with street_with_light(tmp_path, mqtt_client, day_now(), clock=None, watchdog_s=2) as (street, local, _, agent,
                                                                                          board, light, views):
        ctl = board.control
        printed(board, "light: watchdog 2000 ms", 0)
        clock_set(board, 0)
        ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(DAY_PCT))
        with pytest.raises(TimeoutError):  # fed: running normally for longer than the timeout, no reset
            ctl.wait_for(since=0, timeout=3.0, ev="wdt")

        mark = ctl.mark()
        board.freeze(2.5)  # longer than the watchdog's 2 s
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="wdt")
        assert ctl.wait_for(since=mark, timeout=WAIT_S, ev="hello")["cause"] == 3  # WDT_RESET
        printed(board, "light: watchdog 2000 ms", mark)
        first = ctl.wait_for(lambda e: e["duty_u16"] > 0, since=mark, timeout=WAIT_S, ev="pwm", pin=PIN)
        assert first["duty_u16"] == duty(DAY_PCT)  # not the night level of a clock that is not set
        printed(board, "online as", mark)


def test_a_1_mb_message_on_the_command_topic_is_drained_and_the_light_stays_online(tmp_path, mqtt_client):
    """1 MB published straight to the light's down topic, on a local broker without max_packet_size
    (the firmware's own defense; the VM heap is 512 KB): the light drains it unread, stays connected
    (one connection in the broker's log, no schedule fallback, no MemoryError) and obeys the
    genuine command that follows."""
    with street_with_light(tmp_path, mqtt_client, night_now(), local_cap=None) as (street, local, _, agent, board,
                                                                                  light, views):
        ctl = board.control
        printed(board, "light: online as", 0)
        ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
        heap_before = printed(board, "light: heap alloc", 0)
        device = mqtt_client(local)
        down = topics.topic(light.device_id, topics.DOWN)
        mark = ctl.mark()
        sent_at = time.monotonic()
        assert not device.publish(down, os.urandom(1 << 20), qos=1).is_failure
        dropped = printed(board, "mqtt: dropped an oversize packet", mark)
        assert "%d bytes" % (2 + len(down) + 2 + (1 << 20)) in dropped["text"]  # topic, packet id, payload
        print("\n1 MB publish -> drained by the light in %.0f ms" % ((dropped["t"] - sent_at) * 1000))

        brighten = frames.build_plain("light_command", {"action": "brighten", "level_pct": 80, "duration_s": 60,
                                                        "expires": int(time.time()) + 60},
                                      DeviceKeys(light.key), light.device_id, 600, downlink=True)
        device.publish(down, brighten, qos=1)
        ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(80))
        heap_after = printed(board, "light: heap alloc", ctl.mark())  # the next heartbeat's line
        print("VM heap before: %s; after: %s" % (heap_before["text"].strip(), heap_after["text"].strip()))

        output = "".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print")
        for sign in ("MemoryError", "Traceback", "schedule fallback", "mqtt: receive ended", "mqtt: link"):
            assert sign not in output, output
        assert output.count("light: online as") == 1, output
        log = local.log_path.read_text()
        assert log.count("as %s " % light.hex_id) == 1, log  # connected once: the link never dropped


FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
CLIENT_SCRIPT = """
import sys
sys.path.insert(0, %r)
import asyncio, gc, micropython
from ansim_device import mqtt
done = asyncio.Event()
def on_message(topic, payload):
    print("message", topic, bytes(payload))
    done.set()
async def main():
    client = mqtt.MQTTClient("light", "127.0.0.1", %d, on_message=on_message)
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(done.wait(), 20)
    print("dropped", client.dropped, "connects", client.connects)
    task.cancel()
gc.collect()
micropython.mem_info()
asyncio.run(main())
micropython.mem_info()
"""


def mqtt_packet(kind, body):
    size, head = len(body), bytearray([kind])
    while True:
        head.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return bytes(head) + body


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the client closed the connection"
        data += chunk
    return data


def test_the_devices_mqtt_client_drains_oversize_packets_in_a_64_kb_heap(tmp_path):
    """The bells' and lights' MQTT client alone on the VM with a 64 KB heap, against a scripted broker:
    1 MB publishes at QoS 0 and 1 are drained unread (the QoS 1 one acknowledged with its packet id),
    and the small publish after them arrives on the same connection."""
    down = b"ansim/v1/dev/00030002/down"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(WAIT_S)
        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT % (str(FIRMWARE), server.getsockname()[1]))
        vm = subprocess.Popen([virtual_board._micropython(), "-X", "heapsize=64k", str(script)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(WAIT_S)
                assert recv_exactly(conn, 1) == b"\x10"  # CONNECT
                length, shift = 0, 0
                while True:
                    b = recv_exactly(conn, 1)[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                recv_exactly(conn, length)
                conn.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
                topic = struct.pack(">H", len(down)) + down
                conn.sendall(mqtt_packet(0x30, topic + bytes(1 << 20)))  # QoS 0
                conn.sendall(mqtt_packet(0x32, topic + b"\x12\x34" + os.urandom(1 << 20)))  # QoS 1, id 0x1234
                assert recv_exactly(conn, 4) == b"\x40\x02\x12\x34"  # PUBACK, nothing else before it
                conn.sendall(mqtt_packet(0x32, topic + b"\x12\x35" + b"hello"))
                assert recv_exactly(conn, 4) == b"\x40\x02\x12\x35"
                output = vm.communicate(timeout=WAIT_S)[0].decode()
        finally:
            if vm.poll() is None:
                vm.kill()
                vm.wait()
    assert vm.returncode == 0 and "message %s b'hello'" % down.decode() in output, output
    assert output.count("mqtt: dropped an oversize packet") == 2 and "dropped 2 connects 1" in output, output
    assert "MemoryError" not in output and "Traceback" not in output, output
    totals = [int(line.split("total=")[1].split(",")[0]) for line in output.splitlines() if "total=" in line]
    print("\nallocated by the client in a 64 KB heap while draining 2 MB: %d bytes" % (totals[1] - totals[0]))

"""The streetlight firmware on a virtual board (the real MicroPython VM) with the real agent
and a real mosquitto: it connects, blinks when a bell near it is pressed, ignores forged and
replayed commands, and falls back to its schedule when the broker goes away."""

import json
import os
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.broker import MosquittoBroker
from ansim_simulators.street import Street
from ansim_simulators.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

PIN = 5
WAIT_S = 15
NIGHT_PCT, DAY_PCT = 60, 20


def duty(pct):
    return pct * 65535 // 100


def flash(board_dir, light, broker_port, schedule):
    """What ``ansim flash`` puts on a light: both packages under lib/, main.py and the role at the root,
    its config.json."""
    copy_to_directory(firmware_files("streetlight"), board_dir)
    (board_dir / "config.json").write_text(json.dumps({
        "device_id": light.hex_id, "role": "streetlight", "key": light.key.hex(),
        "position": list(light.position), "broker": {"host": "127.0.0.1", "port": broker_port},
        "pwm_pin": PIN, "heartbeat_s": 2, "schedule": schedule}))


def night_now():
    """A schedule whose night window holds the present local time (the VM shares the host's
    clock and time zone), so the schedule level is NIGHT_PCT."""
    t = time.localtime()
    now = t.tm_hour * 60 + t.tm_min
    hhmm = lambda m: "%02d:%02d" % ((m % 1440) // 60, m % 60)  # noqa: E731
    return {"on": hhmm(now - 120), "off": hhmm(now + 120), "night_pct": NIGHT_PCT, "day_pct": DAY_PCT}


def printed(board, text, since, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


@pytest.fixture
def lit_street(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        light = street.lights[1]  # 20 m east of the origin; the first bell is at 30 m east, 5 m north
        flash(tmp_path / "flash", light, local.port, night_now())
        with Agent(config_module.load(street.config_path)) as agent, \
                VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm") as board:
            yield street, local, agent, board, light


def test_streetlight_blinks_for_a_bell_ignores_forgeries_and_falls_back(lit_street, mqtt_client):
    street, local, agent, board, light = lit_street
    ctl = board.control
    try:
        # Connects: schedule level on the PWM, retained "online", a light_state the agent verified.
        ctl.wait_for(since=0, timeout=WAIT_S, ev="pwm", pin=PIN, duty_u16=duty(NIGHT_PCT))
        state_view = mqtt_client(local)
        state_view.subscribe(topics.topic(light.device_id, topics.STATE))
        assert state_view.next_message(WAIT_S).payload == b"online"
        deadline = time.monotonic() + WAIT_S
        while agent.core.light_states.get(light.device_id, {}).get("mode") != "schedule":
            assert time.monotonic() < deadline, "the agent got no light_state"
            time.sleep(0.02)
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
        deadline = time.monotonic() + WAIT_S
        while agent.core.light_states.get(light.device_id, {}).get("mode") != "blink":
            assert time.monotonic() < deadline, "the agent got no light_state for the blink"
            time.sleep(0.02)

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
    except BaseException:
        print("VM log:\n" + board.log())
        print("prints:\n" + "".join(e.get("text", "") for e in ctl.events() if e.get("ev") == "print"))
        raise


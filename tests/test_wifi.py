"""Devices on a real network (issue 9): the bell and streetlight firmware join the site's WiFi
access point (``config["wifi"]``, as ``ansim provision`` writes it) on virtual boards whose
station behaves as the ESP32 port's (board/_vb_network.py: a join takes time, ESP32 status
codes, no sockets without a link), with the real agent and two real mosquittos.

- the virtual WLAN and sockets alone: status codes, EHOSTUNREACH / ECONNABORTED without a link;
- a bell and a streetlight join, then a press flows to the center and the light blinks;
- a wrong password is said on the console and by the status LED, tried again with backoff and
  no reset, and the bell joins once the access point takes its password;
- a press during a 60 s access-point outage reaches the center after it; the light falls back
  to its schedule meanwhile and obeys commands after.
"""

import contextlib
import json
import socket
import time
import types

import pytest
import test_bell
import test_streetlight
from test_bell import next_alert, next_frame, printed, prints

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard

SSID, PASSWORD = "ansim-street", "correct horse battery"
WRONG = "wrong horse battery"
LED = 2  # the status LED (default status_led_pin)
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010
STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD = 201, 202
JOIN_MS = 1000  # how long the virtual access point takes to let a station join
WAIT_S = 15
LIGHT_PIN, NIGHT_PCT, duty = test_streetlight.PIN, test_streetlight.NIGHT_PCT, test_streetlight.duty


def ap(password=PASSWORD, up=True):
    return {"ssid": SSID, "password": password, "up": up, "join_ms": JOIN_MS}


def wifi_config(password=PASSWORD, **more):
    return {"wifi": dict({"ssid": SSID, "password": password}, **more)}


def no_crash(board):
    """One boot, no reset, no traceback."""
    ctl = board.control
    output = prints(board)
    assert "Traceback" not in output and "on_message failed" not in output, output
    assert [e for e in ctl.events() if e.get("ev") == "hello"][1:] == [], "the board reset"
    assert not [e for e in ctl.events() if e.get("ev") in ("wdt", "vm_exit", "reset")]


def flashes(board, since, until=None):
    """[(on at, on for)] of the status LED from event ``since`` on (host times, seconds)."""
    events = [e for e in board.control.events(since) if e.get("ev") == "pin" and e["pin"] == LED
              and (until is None or e["t"] <= until)]
    out = []
    for a, b in zip(events, events[1:]):
        if a["value"] == 1 and b["value"] == 0:
            out.append((a["t"], b["t"] - a["t"]))
    return out


@contextlib.contextmanager
def site(tmp_path, mqtt_client, bell_wifi=None, light_wifi=None, bell_ap=None, light_ap=None,
         light_schedule=None):
    """The street's agent and brokers, a bell board and (with ``light_wifi``) a light board,
    flashed with these WiFi settings and booted with these access points; subscribers made
    before the boards boot: ``center`` (every alert at the center), ``bell_up``, ``light_down``."""
    with MosquittoBroker(workdir=tmp_path / "local") as local, \
            MosquittoBroker(workdir=tmp_path / "center") as center, contextlib.ExitStack() as stack:
        street = Street(tmp_path / "street", center_port=center.port, local_port=local.port)
        bell, light = street.bells[0], street.lights[1]  # 10 m apart: a press makes the light blink
        test_bell.flash(tmp_path / "bell", bell, local.port, **(bell_wifi or {}))
        agent = stack.enter_context(Agent(config_module.load(street.config_path)))
        views = {"center": mqtt_client(center), "bell_up": mqtt_client(local), "light_down": mqtt_client(local)}
        views["center"].subscribe("ansim/center/v1/+/alerts/#")
        views["bell_up"].subscribe(topics.topic(bell.device_id, topics.UP))
        views["light_down"].subscribe(topics.topic(light.device_id, topics.DOWN))
        boards = {"bell": stack.enter_context(VirtualBoard(tmp_path / "bell", "socket", workdir=tmp_path / "vm-bell",
                                                           uid="240ac4000001", access_point=bell_ap))}
        if light_wifi is not None:
            schedule = light_schedule or test_streetlight.night_now()
            test_streetlight.flash(tmp_path / "light", light, local.port, schedule, **light_wifi)
            boards["light"] = stack.enter_context(VirtualBoard(tmp_path / "light", "socket", uid="240ac4000002",
                                                               workdir=tmp_path / "vm-light", access_point=light_ap))
        try:
            yield types.SimpleNamespace(street=street, local=local, center=center, agent=agent, bell=bell,
                                        light=light, views=views, bell_board=boards["bell"],
                                        light_board=boards.get("light"))
        except BaseException:
            for name, board in boards.items():
                print("%s VM log:\n%s\n%s prints:\n%s" % (name, board.log(), name, prints(board)))
            raise


NET_MAIN = """
import errno, json, network, select, socket, time
port = json.load(open("net.json"))["port"]
addr = socket.getaddrinfo("127.0.0.1", port)[0][-1]
def step(name):
    print("step", name)
    while not open("go").read().startswith(name):
        time.sleep_ms(20)
def try_connect():
    s = socket.socket()
    try:
        s.connect(addr)
        return s
    except OSError as e:
        print("connect failed", e.errno)
        s.close()
wlan = network.WLAN(network.STA_IF)
s = try_connect()
print("wired", s is not None)
s.close()
wlan.active(True)
print("active", wlan.status(), wlan.isconnected(), try_connect())
wlan.connect("%s", "%s")
t0 = time.ticks_ms()
print("connecting", wlan.status())
while not wlan.isconnected():
    time.sleep_ms(10)
print("joined", wlan.status(), time.ticks_diff(time.ticks_ms(), t0))
s = try_connect()
s.write(b"hello")
p = select.poll()
p.register(s, select.POLLIN)
step("down")
while wlan.isconnected():
    time.sleep_ms(10)
print("lost", wlan.status(), p.poll(0) == [(s, select.POLLERR | select.POLLHUP)])
try:
    s.write(b"more")
except OSError as e:
    print("write failed", e.errno)
try:
    s.read(1)
except OSError as e:
    print("read failed", e.errno)
s.close()
try_connect()
while wlan.status() != network.STAT_NO_AP_FOUND:
    time.sleep_ms(10)
print("no ap", wlan.status())
step("wrong")
while wlan.status() != network.STAT_WRONG_PASSWORD:
    time.sleep_ms(10)
print("wrong password", wlan.status(), wlan.isconnected())
step("fixed")
while not wlan.isconnected():
    time.sleep_ms(10)
print("joined again", wlan.status())
s = try_connect()
s.write(b"again")
s.close()
wlan.disconnect()
print("disconnected", wlan.status())
print("done")
"""


def test_the_virtual_wlan_joins_in_time_with_esp32_status_codes_and_cuts_sockets(tmp_path):
    """The virtual station as firmware sees it: sockets are wired until the station is active;
    active and not joined, connect() fails with EHOSTUNREACH; a join takes join_ms with status
    STAT_CONNECTING, then STAT_GOT_IP; the access point gone, an open socket is reported by poll
    and fails with ECONNABORTED, its bytes never leave, and retries say STAT_NO_AP_FOUND; back
    with another password, STAT_WRONG_PASSWORD; with the right one, joined again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(WAIT_S)
        flash = tmp_path / "flash"
        flash.mkdir()
        (flash / "net.json").write_text(json.dumps({"port": server.getsockname()[1]}))
        (flash / "go").write_text("")
        (flash / "main.py").write_text(NET_MAIN % (SSID, PASSWORD))
        with VirtualBoard(flash, "socket", workdir=tmp_path / "vm", access_point=ap()) as board:
            ctl = board.control
            try:
                server.accept()[0].close()  # the wired connect, before the station was active
                assert printed(board, "wired True", 0)
                assert printed(board, "active", 0)["text"] == "active %d False None\n" % STAT_IDLE
                assert "connect failed 113" in prints(board)  # EHOSTUNREACH
                assert printed(board, "connecting", 0)["text"] == "connecting %d\n" % STAT_CONNECTING
                joined = printed(board, "joined", 0)["text"].split()
                assert int(joined[1]) == STAT_GOT_IP and JOIN_MS <= int(joined[2]) < JOIN_MS + 500, joined
                conn = server.accept()[0]
                conn.settimeout(WAIT_S)
                assert conn.recv(5) == b"hello"

                mark = ctl.mark()
                ctl.access_point(up=False)
                (flash / "go").write_text("down")
                lost = printed(board, "lost", mark)["text"].split()
                assert lost[2] == "True", lost  # poll reports the dead socket
                assert lost[1] == str(STAT_CONNECTING), lost  # beacon timeout: the driver tries again
                printed(board, "write failed 103", mark)  # ECONNABORTED
                printed(board, "read failed 103", mark)
                printed(board, "connect failed 113", mark)  # EHOSTUNREACH
                assert printed(board, "no ap", mark)["text"] == "no ap %d\n" % STAT_NO_AP_FOUND
                conn.settimeout(0.2)
                with pytest.raises(TimeoutError):  # "more" never left the board, nor a FIN
                    conn.recv(4)

                mark = ctl.mark()
                ctl.access_point(password=WRONG, up=True)
                (flash / "go").write_text("wrong")
                assert printed(board, "wrong password", mark)["text"] == "wrong password %d False\n" \
                    % STAT_WRONG_PASSWORD
                ctl.access_point(password=PASSWORD)
                (flash / "go").write_text("fixed")
                assert printed(board, "joined again", mark)["text"] == "joined again %d\n" % STAT_GOT_IP
                again = server.accept()[0]
                again.settimeout(WAIT_S)
                assert again.recv(5) == b"again"
                assert printed(board, "disconnected", mark)["text"] == "disconnected %d\n" % STAT_IDLE
                printed(board, "done", mark)
                statuses = [e["status"] for e in ctl.events() if e.get("ev") == "wifi"]
                assert statuses[:3] == [STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP], statuses
                assert "Traceback" not in prints(board), prints(board)
            except BaseException:
                print("prints:\n" + prints(board) + "\nVM log:\n" + board.log())
                raise


def test_a_bell_and_a_light_join_the_access_point_and_a_press_flows_end_to_end(tmp_path, mqtt_client):
    """Both devices provisioned with the site's WiFi: each joins (not before the access point's
    join time; MQTT only after it), comes online at the agent; a press on the bell is an alert at
    the center and makes the light blink."""
    with site(tmp_path, mqtt_client, bell_wifi=wifi_config(), light_wifi=wifi_config(), bell_ap=ap(),
              light_ap=ap()) as s:
        for board, role in ((s.bell_board, "bell"), (s.light_board, "light")):
            ctl = board.control
            connecting = ctl.wait_for(timeout=WAIT_S, ev="wifi", status=STAT_CONNECTING)
            got_ip = ctl.wait_for(timeout=WAIT_S, ev="wifi", status=STAT_GOT_IP)
            assert got_ip["t"] - connecting["t"] >= JOIN_MS / 1000 * 0.9
            joined = printed(board, "wifi: joined %s" % SSID, 0)
            online = printed(board, "%s: online as" % role, 0)
            assert online["t"] > joined["t"]
            assert not [e for e in ctl.events() if e.get("ev") == "pin" and e["pin"] == LED and e["value"]]
            assert "mqtt: link" not in prints(board)  # MQTT waited for the link
        bell_ctl, light_ctl = s.bell_board.control, s.light_board.control
        light_ctl.wait_for(timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN, duty_u16=duty(NIGHT_PCT))
        waits.until(lambda: s.agent.core.light_states.get(s.light.device_id, {}).get("mode") == "schedule", WAIT_S,
                    "the light's state at the agent")

        mark = light_ctl.mark()
        test_bell.press(bell_ctl)
        press = next_frame(s.views["bell_up"], DeviceKeys(s.bell.key), "bell_press")[0]
        alert = next_alert(s.views["center"], "bell_press", alert_id="%s-%d" % (s.bell.hex_id, press.counter))[0]
        assert alert["location"]["source"] == "registered"
        high = light_ctl.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN, duty_u16=duty(100))
        light_ctl.wait_for(lambda e: e["t"] > high["t"], since=mark, timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN,
                           duty_u16=duty(10))
        no_crash(s.bell_board)
        no_crash(s.light_board)


def test_a_bell_with_a_wrong_password_says_so_retries_with_backoff_and_joins_once_fixed(tmp_path, mqtt_client):
    """The bell's config has another password than the access point: after each try (5 s here,
    ``timeout_s``) it says "wrong password" on the console (never the password itself), flashes
    its status LED twice every 2 s, waits 2 s, then 4 s, ... and never resets. The access point
    takes the bell's password: the bell joins at its next try, comes online, the LED goes off,
    a press reaches the center."""
    with site(tmp_path, mqtt_client, bell_wifi=wifi_config(WRONG, timeout_s=5), bell_ap=ap(PASSWORD)) as s:
        board, ctl = s.bell_board, s.bell_board.control
        said = printed(board, "wifi: cannot join %s: wrong password (status %d)" % (SSID, STAT_WRONG_PASSWORD), 0)
        printed(board, "wifi: next try in 2 s", 0)
        printed(board, "wifi: next try in 4 s", 0, timeout=WAIT_S)
        second = [e for e in ctl.events() if e.get("ev") == "print" and "wifi: cannot join" in e["text"]][1]
        assert second["t"] - said["t"] >= 5 + 2 - 0.5  # a whole try and the 2 s wait between them
        pattern = flashes(board, 0, until=second["t"])
        assert len(pattern) >= 4, pattern
        for (at, on), (next_at, _) in zip(pattern, pattern[1:]):
            assert 0.05 <= on <= 0.4, pattern
        gaps = [round(b[0] - a[0], 1) for a, b in zip(pattern, pattern[1:])]
        assert all(0.15 <= g <= 0.6 or 1.5 <= g <= 2.2 for g in gaps), gaps  # pairs, every 2 s
        assert any(g >= 1.5 for g in gaps) and any(g <= 0.6 for g in gaps), gaps
        output = prints(board)
        assert WRONG not in output and PASSWORD not in output
        assert "bell: online" not in output and "mqtt: link" not in output  # MQTT waited for the link
        no_crash(board)

        # The access point now takes the bell's password: joined at the next try, online, LED off.
        mark = ctl.mark()
        ctl.access_point(password=WRONG)
        printed(board, "wifi: joined %s" % SSID, mark, timeout=WAIT_S)
        printed(board, "bell: online as %s" % s.bell.hex_id, mark)
        waits.until(lambda: ctl.pin(LED) == 0, 3, "the status LED off")
        press = ctl.mark()
        test_bell.press(ctl)
        counter = int(printed(board, "bell: press", press)["text"].split()[-1])
        next_alert(s.views["center"], "bell_press", alert_id="%s-%d" % (s.bell.hex_id, counter))
        no_crash(board)
        assert WRONG not in prints(board)


OUTAGE_S = 60


def test_a_press_during_a_60_s_access_point_outage_reaches_the_center_after_it(tmp_path, mqtt_client):
    """A bell and a light online; the light brightened by a command. The access point goes away
    for 60 s: both notice; the light drops the command and runs its schedule; MQTT waits (no
    retries into nothing); the WiFi tries again with backoff, the LED says "no access point"; a
    press made meanwhile is kept and reaches nobody. The access point is back: both join again,
    the press reaches the center once (counted by a subscriber of its own), and the light obeys
    a new command."""
    with site(tmp_path, mqtt_client, bell_wifi=wifi_config(), light_wifi=wifi_config(), bell_ap=ap(),
              light_ap=ap()) as s:
        bell, light = s.bell_board, s.light_board
        printed(bell, "bell: online as", 0)
        printed(light, "light: online as", 0)
        counting = mqtt_client(s.center)  # the independent count at the center
        counting.subscribe("ansim/center/v1/+/alerts/#")
        device = mqtt_client(s.local)
        down = topics.topic(s.light.device_id, topics.DOWN)

        def command(counter, level):
            return frames.build_plain("light_command", {"action": "brighten", "level_pct": level, "duration_s": 600,
                                                        "expires": int(time.time()) + 60},
                                      DeviceKeys(s.light.key), s.light.device_id, counter, downlink=True)

        device.publish(down, command(600, 80), qos=1)
        light.control.wait_for(timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN, duty_u16=duty(80))

        # The access point goes away (one for the street: both boards lose it at once).
        marks = {b: b.control.mark() for b in (bell, light)}
        down_at = time.monotonic()
        for b in (bell, light):
            b.control.access_point(up=False)
        printed(bell, "wifi: lost %s" % SSID, marks[bell])
        printed(bell, "bell: broker lost", marks[bell])
        printed(light, "wifi: lost %s" % SSID, marks[light])
        printed(light, "light: broker lost, schedule fallback", marks[light])
        fell_back = light.control.wait_for(since=marks[light], timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN,
                                           duty_u16=duty(NIGHT_PCT))
        print("\naccess point down -> light on its schedule in %.0f ms" % ((fell_back["t"] - down_at) * 1000))
        test_bell.press(bell.control)
        counter = int(printed(bell, "bell: press", marks[bell])["text"].split()[-1])
        alert_id = "%s-%d" % (s.bell.hex_id, counter)
        assert (bell.board_dir / "state" / "outbox").exists()  # kept in flash too
        # Nothing reaches the center during the outage (the wait is the outage itself).
        with pytest.raises(TimeoutError):
            next_alert(counting, "bell_press", timeout=max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        outage = {b: b.control.mark() for b in (bell, light)}
        for b in (bell, light):
            b.control.access_point(up=True)
        up_at = time.monotonic()

        for b in (bell, light):
            during = prints(b, marks[b])[:len(prints(b, marks[b])) - len(prints(b, outage[b]))]
            assert "wifi: cannot join %s: access point not found (status %d)" % (SSID, STAT_NO_AP_FOUND) in during
            assert "wifi: next try in 2 s" in during and "wifi: next try in 4 s" in during, during
            assert "; retry in" not in during, during  # MQTT waited for the WiFi, no connects into nothing
            single = flashes(b, marks[b], until=up_at)
            assert len(single) >= 3 and all(0.05 <= on <= 0.4 for _, on in single), single
            gaps = [round(y[0] - x[0], 1) for x, y in zip(single, single[1:])]
            assert all(1.6 <= g <= 2.5 for g in gaps), gaps  # one flash every 2 s
        pwm = [e for e in light.control.events(marks[light]) if e.get("ev") == "pwm" and e["t"] <= up_at]
        assert [e["duty_u16"] for e in pwm] == [duty(NIGHT_PCT)], pwm  # the schedule all along

        # Back: both join, the kept press reaches the center once.
        printed(bell, "wifi: joined %s" % SSID, outage[bell], timeout=WAIT_S)
        printed(bell, "bell: online as", outage[bell])
        alert, message = next_alert(counting, "bell_press", alert_id=alert_id, timeout=WAIT_S)
        print("access point back -> kept press at the center in %.1f s" % (message.timestamp - up_at))
        printed(light, "light: online as", outage[light], timeout=WAIT_S)
        mark = light.control.mark()
        device.publish(down, command(700, 30), qos=1)
        light.control.wait_for(since=mark, timeout=WAIT_S, ev="pwm", pin=LIGHT_PIN, duty_u16=duty(30))
        waits.until(lambda: not (bell.board_dir / "state" / "outbox").exists(), WAIT_S, "the kept press cleared")
        later = []
        with contextlib.suppress(TimeoutError):
            while True:
                later.append(json.loads(counting.next_message(2).payload))
        assert [a for a in later if a.get("alert_id") == alert_id] == [], later  # once
        for b in (bell, light):
            no_crash(b)

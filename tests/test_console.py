"""The control-center console (`ansim center`, tools/console): its model alone (alerts merged by
id from several agents, states, escalation, offline devices, light states, anything malformed
counted and ignored), its broker link (acks to every agent that reported an alert), and end to
end: real mosquitto brokers, the real agent, a bell's press, the page in Debian's headless
chromium driven by Playwright (never a downloaded browser): the marker on the map within a
second, the operator's clicks reaching the agent and the bell, a checked screenshot, Korean text
drawn in NanumGothic, walk-home from the page to the streetlights."""

import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import frames, topics
from ansim_protocol.crypto import DeviceKeys
from ansim_simulators.fixtures import waits
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.center.control_center import ControlCenter, center_acl
from ansim_simulators.world.street import Street
from ansim_tools.console import site as site_module
from ansim_tools.console.broker import CenterLink
from ansim_tools.console.cli import Lines, describe
from ansim_tools.console.model import BY_OTHER, Console
from ansim_tools.console.web import ConsoleServer

WAIT_S = 10
CHROMIUM = "/usr/bin/chromium"
BELL_HEX = "00020001"


def alert(alert_id="00020001-1", agent="edge-a", kind="bell_press", rssi=None, lat=37.5663, lon=126.9782,
          accuracy=5, source="registered", **extra):
    body = {"schema": "ansim.alert/1", "alert_id": alert_id, "type": kind, "test": kind == "test_sos",
            "device": {"id": alert_id[:8], "role": "bell", "name": "bell " + alert_id[:8]},
            "agent": {"id": agent, "site": "jung-gu"},
            "received_at": "2027-01-15T08:00:00.123+00:00", "stored_at": "2027-01-15T08:00:00.125+00:00",
            "location": {"lat": lat, "lon": lon, "accuracy_m": accuracy, "source": source},
            "cameras": [{"id": "CCTV-001", "name": "CCTV-001", "distance_m": 9.6}],
            "facilities": [{"id": "PB-01", "kind": "police_box", "name": "box", "distance_m": 98.9}],
            "path": {"transport": "ble", "receiver": "hci0", "rssi": rssi}, "fields": {}}
    body.update(extra)
    return json.dumps(body).encode()


def alerts_topic(device=BELL_HEX, center="jung-gu"):
    return "ansim/center/v1/%s/alerts/%s" % (center, device)


def light(device="00030001", mode="blink", pct=100):
    return ("ansim/center/v1/jung-gu/lights/%s" % device,
            json.dumps({"device": device, "agent": "edge-a", "mode": mode, "commanded_pct": pct,
                        "actual_pct": pct, "faults": 0, "at": 1700000000.5}).encode())


# -- the model -------------------------------------------------------------------------------------

def test_one_alert_from_two_agents_is_one_alert_keeping_both():
    console = Console()
    events = []
    console.listen(events.append)
    first = console.handle(alerts_topic(), alert(agent="edge-a", rssi=-60))
    again = console.handle(alerts_topic(), alert(agent="edge-a", rssi=-60))       # a resend after a crash
    second = console.handle(alerts_topic(), alert(agent="edge-b", rssi=-80, lat=37.5664))
    assert first["new"] and not again["new"] and not again["new_agent"] and second["new_agent"] == "edge-b"
    assert list(console.alerts) == ["00020001-1"]
    view = console.snapshot()["alerts"][0]
    assert view["agents"] == ["edge-a", "edge-b"] and view["copies"] == 3 and view["state"] == "new"
    assert [(r["agent"], r["rssi"], r["location"]["lat"]) for r in view["reports"]] == [
        ("edge-a", -60, 37.5663), ("edge-b", -80, 37.5664)]
    assert console.ack_targets("00020001-1") == ["edge-a", "edge-b"]
    assert [e["kind"] for e in events] == ["alert", "alert"]  # the resend changed nothing


def test_states_move_forward_only_and_escalation_shows_until_acted_on():
    console = Console()
    console.handle(alerts_topic(), alert())
    console.handle(alerts_topic(center="citywide"), alert(escalated_from="jung-gu"))
    state = lambda: console.snapshot()["alerts"][0]["state"]  # noqa: E731
    assert state() == "escalated" and console.alerts["00020001-1"]["escalated_from"] == "jung-gu"
    seen = []
    for action, expected in (("ack", "acknowledged"), ("dispatch", "dispatched"), ("resolve", "resolved")):
        status = console.status_for("00020001-1", action)
        console.ack_sent("00020001-1", status, "edge-a")
        seen.append((status, state()))
    assert seen == [("received", "acknowledged"), ("dispatched", "dispatched"), ("resolved", "resolved")]
    console.ack_sent("00020001-1", "received", "edge-b")  # a late agent gets an older status: no step back
    assert state() == "resolved"
    console.ack_result("00020001-1", "received", "edge-b", "sent (broker took it)")
    assert console.alerts["00020001-1"]["acks"][-1]["result"] == "sent (broker took it)"
    console.handle(alerts_topic("00010001"), alert("00010001-4", kind="test_sos"))
    assert console.status_for("00010001-4", "ack") == "test-ok"
    with pytest.raises(KeyError):
        console.status_for("00010001-5", "ack")


def test_a_console_that_runs_for_months_forgets_the_oldest_resolved_alerts(monkeypatch):
    from ansim_tools.console import model
    monkeypatch.setattr(model, "MAX_ALERTS", 3)
    console = Console()
    gone = []
    console.listen(lambda e: e["kind"] == "forget" and gone.append(e["data"]["alert_id"]))
    for counter in range(1, 4):
        console.handle(alerts_topic(), alert("00020001-%d" % counter))
    console.ack_sent("00020001-2", "resolved", "edge-a")
    console.handle(alerts_topic(), alert("00020001-4"))
    console.handle(alerts_topic(), alert("00020001-5"))
    assert gone == ["00020001-2", "00020001-1"] and list(console.alerts) == ["00020001-3", "00020001-4", "00020001-5"]


def test_offline_and_online_devices_and_agents_from_their_certificates():
    console = Console()
    console.handle(alerts_topic("00030002"), alert("00030002-offline-1700000000000", kind="device_offline",
                                                   reason="last_will", last_heard="2027-01-15T07:58:00+00:00"))
    assert [(o["device"], o["reason"]) for o in console.snapshot()["offline"]] == [("00030002", "last_will")]
    console.handle(alerts_topic("00030002"), alert("00030002-online-1700000090000", kind="device_online"))
    assert console.snapshot()["offline"] == []
    state = "ansim/center/v1/agents/edge-a/state"
    console.handle(state, json.dumps({"agent": "edge-a", "site": "s", "state": "online", "session": 3, "at": 1,
                                      "position": {"lat": 37.5663, "lon": 126.9779}}))
    assert console.agents["edge-a"]["position"] == [37.5663, 126.9779]  # on the map before any alert
    console.handle(state, json.dumps({"agent": "edge-a", "site": "s", "state": "offline", "session": 2, "at": 0}))
    assert console.agents["edge-a"]["state"] == "online"  # a stale certificate of session 2
    console.handle(state, json.dumps({"agent": "edge-a", "site": "s", "state": "offline", "session": 3, "at": 2}))
    assert console.agents["edge-a"]["state"] == "offline"


def test_light_states_and_what_the_terminal_says():
    console = Console()
    lines = []
    console.listen(lambda e: lines.append(describe(e)))
    console.handle(*light(mode="blink"))
    console.handle(*light(mode="blink"))  # retained again after a reconnection: no new line
    console.handle(*light(mode="schedule", pct=40))
    console.handle(alerts_topic(), alert())
    assert console.lights["00030001"]["mode"] == "schedule" and not console.lights["00030001"]["blinking"]
    assert lines[:2] == ["LIGHT 00030001 blink 100% (commanded 100%)", "LIGHT 00030001 schedule 40% (commanded 40%)"]
    assert re.fullmatch(r"ALERT 00020001-1 bell_press 00020001 bell 00020001 at 37\.56630,126\.97820 ±5 m "
                        r"\(registered\) cameras CCTV-001 via edge-a \[new\]", lines[2]), lines[2]


def heard(alert_id, agent, lat, lon, rssi):
    return ("ansim/center/v1/jung-gu/heard/%s" % alert_id[:8],
            json.dumps({"alert_id": alert_id, "agent": agent, "position": {"lat": lat, "lon": lon}, "rssi": rssi,
                        "at": 1800000000.456}).encode())


def test_receivers_that_heard_a_wearable_without_a_fix_place_it_by_signal_strength():
    console = Console()
    state = "ansim/center/v1/agents/%s/state"
    for agent in ("edge-a", "edge-b", "edge-c"):
        console.handle(state % agent, json.dumps({"agent": agent, "state": "online", "session": 1}))
    console.handle(*heard("00010001-12", "edge-c", 37.5663, 126.9795, -90))  # before the alert: kept
    console.handle(alerts_topic("00010001"), alert("00010001-12", agent="edge-a", kind="sos", rssi=-60,
                                                   lat=37.5663, lon=126.9779, accuracy=10, source="receiver"))
    console.handle(*heard("00010001-12", "edge-b", 37.5663, 126.9789, -75))
    view = console.snapshot()["alerts"][0]
    assert [h["agent"] for h in view["heard"]] == ["edge-c", "edge-b"] and view["agents"] == ["edge-a"]
    est = view["estimate"]
    assert est["receivers"] == 3 and est["source"] == "rssi" and est["lat"] == pytest.approx(37.5663)
    assert 126.9779 < est["lon"] < 126.9784  # nearest the strongest receiver, pulled toward the others
    assert est["accuracy_m"] >= 10  # at least the strongest receiver's own radius
    assert console.agents["edge-b"]["position"] == [37.5663, 126.9789]
    assert console.ack_targets("00010001-12") == ["edge-a"]  # agents that only heard it stored no alert
    assert "of 3 receivers" in describe({"kind": "alert", "data": view})
    console.handle(alerts_topic("00010002"), alert("00010002-1", agent="edge-a", kind="sos", rssi=-60,
                                                   source="gnss"))
    console.handle(*heard("00010002-1", "edge-b", 37.5663, 126.9789, -75))
    assert console.snapshot()["alerts"][1]["estimate"] is None  # a fix needs no estimate


@pytest.mark.parametrize("topic, payload", [
    (alerts_topic(), b"\xff\xfe not json"),
    (alerts_topic(), b"[1, 2]"),
    (alerts_topic(), b'{"alert_id": 7}'),
    (alerts_topic(), alert("bad")),
    (alerts_topic("00020002"), alert()),                             # another device's topic
    (alerts_topic(), alert(lat=91)),
    (alerts_topic(), alert(agent="a/b")),
    (alerts_topic(), json.dumps({"alert_id": "00020001-1", "type": "sos", "agent": {"id": "x"},
                                 "location": {"lat": float("nan"), "lon": 0}}).encode()),
    ("ansim/center/v1/agents/edge-a/state", b'{"state": "online", "session": "3"}'),
    ("ansim/center/v1/agents/edge-a/state", b'{"state": "asleep", "session": 3}'),
    ("ansim/center/v1/jung-gu/lights/00030001", b'{"device": "00030001", "mode": "disco"}'),
    ("ansim/center/v1/jung-gu/lights/00030001", light(pct=101)[1]),
    ("ansim/center/v1/jung-gu/lights/00030002", light()[1]),          # another light's topic
    ("ansim/center/v1/jung-gu/elsewhere/x", b"{}"),
    heard("00010001-1", "edge-b", 95, 0, -70),
    heard("00010001-1", "edge b", 37, 127, -70),
    heard("00010001-1", "edge-b", 37, 127, "strong"),
    ("ansim/center/v1/jung-gu/heard/00010002", heard("00010001-1", "edge-b", 37, 127, -70)[1]),
])
def test_malformed_messages_are_counted_and_ignored(topic, payload):
    console = Console()
    assert console.handle(topic, payload) is None
    snapshot = console.snapshot()
    assert sum(snapshot["malformed"].values()) == 1
    assert not (snapshot["alerts"] or snapshot["agents"] or snapshot["lights"])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                    max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "alert_id": st.sampled_from(["00020001-1", "00020001-offline-5", "x"]) | st.text(max_size=12),
    "type": st.sampled_from(["sos", "device_offline", "device_online"]) | JSON,
    "agent": st.fixed_dictionaries({"id": st.sampled_from(["edge-a", "edge-b"]) | JSON}) | JSON,
    "location": st.fixed_dictionaries({"lat": JSON | st.floats(), "lon": JSON | st.floats()}) | JSON,
    "device": JSON, "cameras": JSON, "path": JSON, "escalated_from": JSON, "state": JSON, "session": JSON,
    "mode": st.sampled_from(["blink", "off"]) | JSON, "commanded_pct": JSON, "actual_pct": JSON,
    "faults": JSON, "last_heard": JSON, "reason": JSON, "rssi": JSON,
    "position": st.fixed_dictionaries({"lat": JSON | st.floats(), "lon": JSON | st.floats()}) | JSON})


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from([alerts_topic(), alerts_topic(center="citywide"), "ansim/center/v1/agents/edge-a/state",
                              "ansim/center/v1/jung-gu/lights/00030001", "ansim/center/v1/jung-gu/heard/00020001",
                              "ansim/center/v1/x"]),
       payload=st.binary(max_size=64) | FIELDS.map(lambda d: json.dumps(d).encode()) | JSON.map(lambda d: json.dumps(d).encode()))
def test_any_message_is_used_or_counted_and_the_console_goes_on(topic, payload):
    console = Console()
    console.handle(topic, payload)
    snapshot = console.snapshot()  # JSON-ready whatever came
    if not (snapshot["alerts"] or snapshot["agents"] or snapshot["lights"]):
        assert sum(snapshot["malformed"].values()) == 1
    describe({"kind": "x", "data": None})
    for kind in ("alerts", "agents", "lights"):
        for item in snapshot[kind]:
            describe({"kind": kind.rstrip("s"), "data": item})


def test_monitor_requests_are_checked_as_the_agent_checks_them():
    console = Console()
    route = [[37.5663, 126.9779], [37.5663, 126.9799]]
    agent, request = console.monitor_request({"agent": "edge-a", "session": "walk-1", "action": "start", "route": route})
    assert (agent, request) == ("edge-a", {"session": "walk-1", "action": "start", "route": route})
    console.walk(agent, request)
    assert console.monitor_request({"session": "walk-1", "action": "update", "position": [37.5663, 126.979]}) == (
        "edge-a", {"session": "walk-1", "action": "update", "position": [37.5663, 126.979]})
    for bad in ({"agent": "edge-a", "session": "", "action": "start", "route": route},
                {"agent": "edge-a", "session": "w", "action": "start", "route": route[:1]},
                {"agent": "edge-a", "session": "w", "action": "start", "route": [[91, 0], [0, 0]]},
                {"agent": "edge-a", "session": "w", "action": "fly"},
                {"agent": "edge-a", "session": "never-started", "action": "stop"}):
        with pytest.raises(ValueError):
            console.monitor_request(bad)


def test_the_registry_gives_the_map_without_reading_device_keys(tmp_path):
    street = Street(tmp_path / "street", center_port=1)
    for key in (tmp_path / "street" / "keys").iterdir():
        key.unlink()  # the center holds no device keys
    layer = site_module.load(street.registry_path)
    assert {d["id"] for d in layer["devices"]} == {d.hex_id for d in street.devices}
    assert [c["id"] for c in layer["cameras"]] == [c[0] for c in street.cameras]
    assert layer["facilities"][0]["kind"] == "police_box"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[camera]]\nid = "C1"\nposition = { lat = 95.0, lon = 1.0 }\n')
    with pytest.raises(config_module.ConfigError, match=r"\[\[camera\]\] #1 \(C1\) position"):
        site_module.load(bad)


# -- the broker link ---------------------------------------------------------------------------------

@pytest.fixture
def console_on(tmp_path):
    """Factory ``console_on(broker, registry=None)``: a model, its broker link and its page server
    on a free localhost port, all stopped after the test."""
    made = []

    def start(broker, registry=None, tls=None):
        console = Console()
        if registry is not None:
            console.site = site_module.load(registry)
        link = CenterLink(console, "127.0.0.1", broker.port, tls, client_id="console-%d" % len(made))
        server = ConsoleServer(("127.0.0.1", 0), console, link)
        server.serve_in_thread()
        link.start()
        made.append((link, server))
        waits.until(lambda: console.connection["state"] == "connected", WAIT_S, "the console connected")
        return console, link, server

    yield start
    for link, server in made:
        link.stop()
        server.close()


def test_an_ack_goes_to_every_agent_that_reported_the_alert_and_to_late_ones(broker, mqtt_client, console_on):
    console, link, _ = console_on(broker)
    acks = mqtt_client(broker)
    acks.subscribe("ansim/center/v1/agents/+/ack")
    agents = mqtt_client(broker)
    agents.publish(alerts_topic(), alert(agent="edge-a"))
    agents.publish(alerts_topic(), alert(agent="edge-b"))
    waits.until(lambda: console.ack_targets("00020001-1") == ["edge-a", "edge-b"], WAIT_S, "both reports")
    assert link.act("00020001-1", "ack")["agents"] == ["edge-a", "edge-b"]
    got = {acks.next_message(WAIT_S).topic.split("/")[-2] for _ in range(2)}
    assert got == {"edge-a", "edge-b"}
    agents.publish(alerts_topic(), alert(agent="edge-c"))  # reported after the operator acted
    late = acks.next_message(WAIT_S)
    assert late.topic == "ansim/center/v1/agents/edge-c/ack"
    assert json.loads(late.payload) == {"alert_id": "00020001-1", "status": "received"}
    waits.until(lambda: [a["result"] for a in console.alerts["00020001-1"]["acks"]] == ["sent (broker took it)"] * 3,
                WAIT_S, "three PUBACKed acks")
    agents.publish(alerts_topic(), b"garbage")
    waits.until(lambda: console.malformed["alerts"] == 1, WAIT_S, "the garbage counted")


# -- end to end in a real browser ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    assert os.access(CHROMIUM, os.X_OK), "Debian's chromium is missing: run `make test` (tools/system-packages.sh)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="ko-KR")
    yield context.new_page()
    context.close()


@pytest.fixture
def site(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "local") as local, MosquittoBroker(workdir=tmp_path / "center") as center:
        yield Street(tmp_path / "street", center_port=center.port, local_port=local.port), local, center


def press(bell, counter):
    return frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, counter)


def fonts_of(page, selector):
    """The platform fonts Chromium drew the element's text with (DevTools' CSS domain)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return {f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]}


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_bell_press_on_the_map_within_a_second_and_the_operator_acks_to_the_bell(site, mqtt_client, console_on,
                                                                                  page, tmp_path):
    from playwright.sync_api import expect
    street, local, center = site
    console, _, server = console_on(center, registry=street.registry_path)
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(page.locator('.light[data-device="00030001"]')).to_have_count(1)  # the registry's map
    center_view = mqtt_client(center)
    center_view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    bell = street.bells[0]
    bell_view = mqtt_client(local)
    bell_view.subscribe(topics.topic(bell.device_id, topics.DOWN))
    with Agent(config_module.load(street.config_path)):
        expect(page.locator('.agent-item[data-agent="%s"]' % street.agent_id)).to_have_attribute("data-state", "online")
        # on the map from its birth certificate's position, before any alert
        expect(page.locator('.agent-marker[data-agent="%s"]' % street.agent_id)).to_have_attribute("data-state", "online")
        mqtt_client(local).publish(topics.topic(bell.device_id, topics.UP), press(bell, 1))
        arrived = center_view.next_message(WAIT_S)  # paho stamps it (monotonic) as it arrives
        alert_id = json.loads(arrived.payload)["alert_id"]
        marker = page.locator('.alert-marker[data-alert-id="%s"]' % alert_id)
        marker.wait_for(state="visible", timeout=WAIT_S * 1000)
        latency = time.monotonic() - arrived.timestamp
        print("alert %s: on the map %.0f ms after it reached the center's broker" % (alert_id, latency * 1000))
        assert latency < 1.0, latency
        item = page.locator('.alert-item[data-alert-id="%s"]' % alert_id)
        expect(item.locator(".title")).to_contain_text("비상벨")
        expect(item.locator(".cameras")).to_contain_text("CCTV-001")
        expect(page.locator('.accuracy-circle[data-alert-id="%s"]' % alert_id)).to_have_count(1)
        expect(page).to_have_title(re.compile(r"^\(1\) 안심 관제"))  # seen from another tab too
        assert "NanumGothic" in fonts_of(page, '.alert-item[data-alert-id="%s"] .title' % alert_id)

        shot = page.screenshot(path=str(tmp_path / "console.png"), animations="disabled")
        width, height = png_size(shot)
        assert len(shot) > 10000 and (width, height) == (1280, 800)
        box = marker.bounding_box()
        assert box and box["width"] > 0 and 0 <= box["x"] and box["x"] + box["width"] <= width \
            and 0 <= box["y"] and box["y"] + box["height"] <= height, box
        clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}
        there = page.screenshot(clip=clip, animations="disabled")
        assert page.screenshot(clip=clip, animations="disabled") == there  # the same pixels twice ...
        marker.evaluate("e => e.style.visibility = 'hidden'")
        assert page.screenshot(clip=clip, animations="disabled") != there  # ... and they are the marker's
        marker.evaluate("e => e.style.visibility = ''")

        item.locator(".btn-ack").click()
        ack = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
        assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 1, "status": "received"}
        expect(marker).to_have_attribute("data-state", "acknowledged")
        expect(item.locator(".acks")).to_contain_text("sent (broker took it)")
        for button, status in ((".btn-dispatch", "dispatched"), (".btn-resolve", "resolved")):
            item.locator(button).click()
            relayed = frames.unpack(bell_view.next_message(WAIT_S).payload, DeviceKeys(bell.key))
            assert relayed.fields == {"acked_counter": 1, "status": status}
        expect(marker).to_have_attribute("data-state", "resolved")
        expect(item.locator(".btn-resolve")).to_be_disabled()
        expect(page).to_have_title(re.compile(r"^안심 관제"))
    expect(page.locator('.agent-item[data-agent="%s"]' % street.agent_id)).to_have_attribute("data-state", "offline")


def test_walk_home_from_the_page_brightens_the_lights_and_light_states_show(site, mqtt_client, console_on, page):
    from playwright.sync_api import expect
    street, local, center = site
    console, _, server = console_on(center, registry=street.registry_path)
    page.goto(server.url)
    requests = mqtt_client(center)
    requests.subscribe("ansim/center/v1/agents/+/monitor")
    lights_view = mqtt_client(local)
    lights_view.subscribe("ansim/v1/dev/+/down")
    keys = {topics.topic(l.device_id, topics.DOWN): DeviceKeys(l.key) for l in street.lights}
    with Agent(config_module.load(street.config_path)):
        expect(page.locator('#walk-agent option[value="%s"]' % street.agent_id)).to_have_count(1)
        page.fill("#walk-session", "walk-17")
        page.fill("#walk-route", "%s,%s\n%s,%s" % (*street.lights[0].position, *street.lights[-1].position))
        page.click(".btn-walk-start")
        expect(page.locator('.walker[data-session="walk-17"]')).to_be_visible()
        brightened = set()
        while len(brightened) < 2:
            msg = lights_view.next_message(WAIT_S)
            command = frames.unpack(msg.payload, keys[msg.topic])
            if command.kind == "light_command" and command.fields["action"] == "brighten":
                brightened.add(msg.topic)
        start = json.loads(requests.next_message(WAIT_S).payload)
        assert start["action"] == "start" and start["route"] == [list(street.lights[0].position),
                                                                 list(street.lights[-1].position)]
        page.click('.walk-item[data-session="walk-17"] .btn-walk-select')
        expect(page.locator('.walk-item[data-session="walk-17"]')).to_have_class(re.compile(r"\bselected\b"))
        x, y = page.evaluate("""device => {  // one synchronous look: the map may be redrawn between calls
            const r = document.querySelector(`.light[data-device="${device}"]`).getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }""", street.lights[5].hex_id)
        page.mouse.click(x, y)  # the walker is at that light now
        update = json.loads(requests.next_message(WAIT_S).payload)
        assert update["action"] == "update" and update["position"] == pytest.approx(street.lights[5].position, abs=2e-5)
        page.wait_for_function("""([session, device]) => {
            const w = document.querySelector(`.walker[data-session="${session}"]`);
            const l = document.querySelector(`.light[data-device="${device}"]`);
            return w && l && Math.hypot(w.cx.baseVal.value - l.cx.baseVal.value, w.cy.baseVal.value - l.cy.baseVal.value) < 3;
        }""", arg=["walk-17", street.lights[5].hex_id], timeout=WAIT_S * 1000)  # metres on the map
        page.click('.walk-item[data-session="walk-17"] .btn-walk-stop')
        expect(page.locator('.walk-item[data-session="walk-17"]')).to_have_attribute("data-state", "stop")
        restored = set()
        while restored != brightened:
            msg = lights_view.next_message(WAIT_S)
            command = frames.unpack(msg.payload, keys[msg.topic])
            if command.kind == "light_command" and command.fields["action"] == "restore":
                restored.add(msg.topic)
        # A light reports its state to the agent, which keeps it at the center (CENTER_API.md).
        reporting = street.lights[3]
        report = frames.build_plain("light_state", {"commanded_pct": 100, "actual_pct": 97, "mode": "brighten",
                                                    "faults": 0, "last_command": 0},
                                    DeviceKeys(reporting.key), reporting.device_id, 1)
        mqtt_client(local).publish(topics.topic(reporting.device_id, topics.UP), report)
        drawn = page.locator('.light[data-device="%s"]' % reporting.hex_id)
        expect(drawn).to_have_attribute("data-mode", "brighten")
        expect(drawn).to_have_attribute("data-level", "97")
        # And as a retained message put there by hand: a blinking light.
        state_topic, body = light("00030002", mode="blink")
        mqtt_client(center).publish(state_topic, body, retain=True)
        blinking = page.locator('.light[data-device="00030002"]')
        expect(blinking).to_have_attribute("data-mode", "blink")
        expect(blinking).to_have_class(re.compile(r"\bblinking\b"))


def test_a_wearable_heard_by_several_agents_is_drawn_where_their_signals_place_it(broker, mqtt_client,
                                                                                   console_on, page):
    from playwright.sync_api import expect
    console, _, server = console_on(broker)
    page.goto(server.url)
    agents = mqtt_client(broker)
    agents.publish(alerts_topic("00010001"), alert("00010001-3", agent="edge-a", kind="sos", rssi=-62, lat=37.5663,
                                                   lon=126.9779, accuracy=12, source="receiver"))
    marker = page.locator('.alert-marker[data-alert-id="00010001-3"]')
    expect(marker).to_have_count(1)
    agents.publish(*heard("00010001-3", "edge-b", 37.5663, 126.9790, -80))
    expect(page.locator('.receiver-line[data-alert-id="00010001-3"]')).to_have_count(2)
    item = page.locator('.alert-item[data-alert-id="00010001-3"]')
    expect(item.locator(".location")).to_contain_text("RSSI")
    expect(item.locator(".heard")).to_contain_text("edge-b (-80 dBm)")
    expect(item.locator(".title")).to_contain_text("SOS 비상")


def test_settings_that_cannot_work_are_one_line_and_status_2(tmp_path, pki, capsys):
    from ansim_tools.cli import main
    tls = pki.client("center-jung-gu")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    bad_registry = tmp_path / "registry.toml"
    bad_registry.write_text("[[device]]\nid = 7\n")
    cases = [
        (["--host", "192.0.2.1"], "plain MQTT toward 192.0.2.1"),
        (["--tls", "--cafile", str(tls.cafile), "--certfile", str(tls.certfile)], "--tls needs --keyfile"),
        (["--tls"], "--tls needs --cafile, --certfile and --keyfile"),
        (["--tls", "--certfile", str(tls.certfile)], "--tls needs --cafile and --keyfile"),
        (["--port", "99999"], "--port 99999: a port is 1 to 65535"),
        (["--port", "-1"], "--port -1: a port is 1 to 65535"),
        (["--tls", "--cafile", str(tls.cafile), "--certfile", str(tls.certfile), "--keyfile", str(garbage)],
         "TLS files"),
        (["--tls", "--cafile", str(tmp_path / "none.crt"), "--certfile", str(tls.certfile), "--keyfile",
          str(tls.keyfile)], "no such file"),
        (["--registry", str(bad_registry)], "[[device]] #1 id: must be 8 lowercase hex digits"),
    ]
    for args, says in cases:
        assert main(["center", "--http-port", "0", "--headless", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ansim center: ") and says in err and err.count("\n") == 1, err


def test_terminal_commands_do_what_the_buttons_do():
    from ansim_tools.console.cli import command
    console = Console()
    said = []
    link = CenterLink(console, "127.0.0.1", 1, on_event=said.append)  # never started: acks are queued
    console.handle(alerts_topic(), alert(agent="edge-a"))
    assert command(link, console, "dispatch 00020001-1") == "sent dispatched of 00020001-1 to edge-a"
    assert said == ["ack of 00020001-1 to edge-a queued: the broker is not connected"]
    assert console.snapshot()["alerts"][0]["state"] == "dispatched"
    assert command(link, console, "ack 00020001-9") == "unknown alert or session '00020001-9'"
    assert command(link, console, "walk start w1 edge-a 37.5663,126.9779 37.5663,126.9799") == "walk w1 start sent to edge-a"
    assert command(link, console, "walk update w1 37.5663,126.9789") == "walk w1 update sent to edge-a"
    assert command(link, console, "walk stop w1") == "walk w1 stop sent to edge-a"
    assert command(link, console, "walk update w1 37.5663,126.9789").startswith("refused: no active walk-home session")
    assert command(link, console, "walk start w2 edge-a 37.5663,126.9779").startswith("refused: route must be")
    assert command(link, console, "alerts").startswith("ALERT 00020001-1")
    assert command(link, console, "help").startswith("commands:") and "\n  quit " in command(link, console, "help")
    assert command(link, console, "fly away").startswith("unknown command fly\ncommands:")
    assert command(link, console, "") is None


def test_ansim_center_over_tls_prints_the_url_and_one_line_per_alert(tmp_path, pki, mqtt_client):
    """The command itself: TLS with the center's certificate (its ACL of CENTER_API.md), the URL, one terminal line per alert, a clear error for a port in use."""
    acl = center_acl("center-jung-gu")
    with MosquittoBroker(workdir=tmp_path / "center", tls=pki.server, acl=acl) as center:
        tls = pki.client("center-jung-gu")
        cmd = [sys.executable, "-m", "ansim_tools.cli", "center", "--port", str(center.port), "--tls",
               "--cafile", str(tls.cafile), "--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile),
               "--http-port", "0", "--headless"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines = iter(proc.stdout.readline, "")
            url = next(m.group(1) for line in lines if (m := re.search(r"console: (http://127\.0\.0\.1:\d+/)", line)))
            assert "connected to the center's broker" in next(lines)
            agent = mqtt_client(center, tls=pki.client("edge-a"))
            assert not agent.publish(alerts_topic(), alert(agent="edge-a")).is_failure
            assert next(lines).split(" ", 1)[1].startswith("ALERT 00020001-1 bell_press 00020001")
            assert not agent.publish(*light("00030001", mode="blink"), retain=True).is_failure
            assert next(lines).split(" ", 1)[1] == "LIGHT 00030001 blink 100% (commanded 100%)\n"
            agent.subscribe("ansim/center/v1/agents/edge-a/ack")
            proc.stdin.write("ack 00020001-1\n")  # the terminal's commands do what the buttons do
            proc.stdin.flush()
            ack = agent.next_message(WAIT_S)
            assert json.loads(ack.payload) == {"alert_id": "00020001-1", "status": "received"}
            port = int(url.rsplit(":", 1)[1].strip("/"))
            busy = subprocess.run(cmd[:-3] + ["--http-port", str(port), "--headless"], capture_output=True,
                                  text=True, timeout=WAIT_S)
            assert busy.returncode == 2 and "is in use" in busy.stderr, busy.stderr
        finally:
            proc.terminate()
            proc.wait(WAIT_S)


# -- what other center clients do, and the terminal -------------------------------------------------------

def ack(agent, alert_id="00020001-1", status="received"):
    return "ansim/center/v1/agents/%s/ack" % agent, json.dumps({"alert_id": alert_id, "status": status}).encode()


def test_acks_and_walks_another_center_client_sent_show_as_the_operators_own():
    console = Console()
    console.handle(*ack("edge-a", "00020001-2"))  # before its alert (a persistent session's backlog)
    console.handle(alerts_topic(), alert(agent="edge-a"))
    console.handle(alerts_topic(), alert("00020001-2", agent="edge-a"))
    console.handle(*ack("edge-a", status="dispatched"))
    console.handle(*ack("edge-a", status="received"))  # late: the state never goes back
    alerts = {a["alert_id"]: a for a in console.snapshot()["alerts"]}
    assert alerts["00020001-1"]["state"] == "dispatched" and alerts["00020001-2"]["state"] == "acknowledged"
    assert [(k["status"], k["result"]) for k in alerts["00020001-1"]["acks"]] == [("dispatched", BY_OTHER),
                                                                                ("received", BY_OTHER)]
    console.handle(*ack("edge-a", status="maybe"))
    console.handle("ansim/center/v1/agents/edge-a/monitor", b'{"session": "w1", "action": "update", "position": [37.5, 127]}')
    assert console.malformed["ack"] == 1 and console.walks == {}  # an update of a walk never seen: ignored
    route = [[37.5663, 126.9779], [37.5663, 126.9799]]
    console.handle("ansim/center/v1/agents/edge-a/monitor", json.dumps({"session": "w1", "action": "start",
                                                                        "route": route}).encode())
    console.handle("ansim/center/v1/agents/edge-a/monitor", b'{"session": "w1", "action": "arrived"}')
    assert console.walks["w1"]["agent"] == "edge-a" and console.walks["w1"]["state"] == "arrived"
    console.handle("ansim/center/v1/agents/edge-a/monitor", b'{"session": "w1", "action": "update"}')
    assert console.malformed["monitor"] == 1


def test_the_terminal_says_one_line_per_change():
    console, lines, said = Console(), Lines(), []
    console.listen(lambda e: said.extend(lines.lines(e)))
    console.handle(alerts_topic(), alert(agent="edge-a", kind="test_sos", source="gnss"))
    console.handle(*heard("00020001-1", "edge-b", 37.5663, 126.9785, -80))  # changes nothing the line says
    console.ack_sent("00020001-1", "test-ok", "edge-a")
    console.ack_result("00020001-1", "test-ok", "edge-a", "sent (broker took it)")
    console.handle(*ack("edge-a", status="resolved"))
    assert said[0].startswith("ALERT 00020001-1 test_sos") and said[0].endswith("[new]"), said
    assert said[1:] == ["ALERT 00020001-1 now acknowledged", "ACK test-ok of 00020001-1 to edge-a: sent (broker took it)",
                        "ALERT 00020001-1 now resolved", "ACK resolved of 00020001-1 to edge-a: %s" % BY_OTHER], said


def test_every_console_follows_the_acks_of_the_others_and_of_the_simulated_center(tmp_path, pki, mqtt_client,
                                                                                    console_on):
    """On a broker with the center's ACL (CENTER_API.md): consoles and the simulated center share one identity."""
    with MosquittoBroker(workdir=tmp_path / "center", tls=pki.server, acl=center_acl("center-jung-gu")) as center:
        tls = pki.client("center-jung-gu")
        files = (tls.cafile, tls.certfile, tls.keyfile)
        (one, link_one, _), (two, _, _) = console_on(center, tls=files), console_on(center, tls=files)
        agent = mqtt_client(center, tls=pki.client("edge-a"))
        agent.subscribe("ansim/center/v1/agents/edge-a/ack")
        assert not agent.publish(alerts_topic(), alert(agent="edge-a")).is_failure
        waits.until(lambda: "00020001-1" in one.alerts and "00020001-1" in two.alerts, WAIT_S, "both consoles")
        link_one.act("00020001-1", "dispatch")
        waits.until(lambda: two.snapshot()["alerts"][0]["state"] == "dispatched", WAIT_S, "the other console")
        assert [k["result"] for k in two.alerts["00020001-1"]["acks"]] == [BY_OTHER]
        waits.until(lambda: [k["result"] for k in one.alerts["00020001-1"]["acks"]] == ["sent (broker took it)"],
                    WAIT_S, "its own ack, once (noLocal)")
        with ControlCenter("127.0.0.1", center.port, tls=tls, auto_ack="received", client_id="sim-center"):
            assert not agent.publish(alerts_topic(), alert("00020001-2", agent="edge-a")).is_failure
            for console in (one, two):
                waits.until(lambda: console.alerts.get("00020001-2", {}).get("status") == "received", WAIT_S,
                            "the simulated center's auto-ack")
        time.sleep(0.3)
        assert len(one.alerts["00020001-1"]["acks"]) == 1
        other = mqtt_client(center, tls=pki.client("edge-b"))  # agents still read only their own acks
        other.subscribe("ansim/center/v1/agents/edge-a/ack")
        while True:  # what edge-a got so far
            try:
                agent.next_message(0.5)
            except TimeoutError:
                break
        link_one.act("00020001-1", "resolve")
        assert json.loads(agent.next_message(WAIT_S).payload)["status"] == "resolved"
        with pytest.raises(TimeoutError):
            other.next_message(0.5)


def _console(broker, *extra, **popen):
    cmd = [sys.executable, "-m", "ansim_tools.cli", "center", "--port", str(broker.port), "--http-port", "0",
           "--headless", *extra]
    popen.setdefault("stdin", subprocess.PIPE)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    lines = iter(proc.stdout.readline, "")
    assert "console: http://" in next(lines)
    assert "connected to the center's broker" in next(lines)
    return proc, lines


def test_ctrl_c_quit_and_a_terminals_ctrl_d_stop_the_console_and_the_end_of_other_input_does_not(broker):
    # Ctrl-C, even when started with SIGINT ignored (a background job of a shell without job control).
    proc, lines = _console(broker, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT_S) == 0
    assert [line.split(" ", 1)[1] for line in lines] == ["console stopped\n"]  # no "lost the broker"
    proc, lines = _console(broker, "--http-host", "0.0.0.0")
    proc.stdin.write("quit\n")
    proc.stdin.close()
    assert proc.wait(WAIT_S) == 0
    assert "warning: the page on http://0.0.0.0:" in proc.stderr.read()
    proc, lines = _console(broker)  # stdin a pipe that ends (systemd, < /dev/null): it goes on
    proc.stdin.close()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(1.5)
    proc.terminate()
    assert proc.wait(WAIT_S) == 0
    controller, terminal = pty.openpty()  # a terminal's Ctrl-D
    proc, lines = _console(broker, stdin=terminal)
    os.close(terminal)
    os.write(controller, b"\x04")
    try:
        assert proc.wait(WAIT_S) == 0
    finally:
        os.close(controller)


def test_an_unreachable_broker_is_said_at_every_attempt_with_paho_s_reason():
    from ansim_simulators.fixtures.broker import free_port
    said = []
    link = CenterLink(Console(), "127.0.0.1", free_port(), on_event=said.append)
    link.start()
    try:
        waits.until(lambda: len(said) >= 2, WAIT_S, "two attempts")
    finally:
        link.stop()
    assert "(attempt 1: Connection refused)" in said[0] and "(attempt 2: " in said[1], said
    assert "TLS" not in said[0]

"""The agent hears wearables over BLE (bleak's API over a virtual bumble radio) and frames
on a serial line (a pty), and forwards them to the center like any other path."""

import json
import logging
import queue
import os
import time
import tty

import pytest

from ansim_agent import config as config_module
from ansim_agent.intake import Reception
from ansim_agent.metrics import Metrics
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, serial_link, topics
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_agent.ble_intake import BleIntake
from ansim_simulators.fixtures import waits
from ansim_simulators.hardware.ble_radio import ThreadedAir, bleak_backend_for
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import ORIGIN, Street
from test_core import Clock, make_core

WAIT_S = 10


@pytest.fixture
def air():
    a = ThreadedAir()
    yield a
    a.close()


def center_alerts(mqtt_client, center):
    view = mqtt_client(center)
    view.subscribe("ansim/center/v1/jung-gu/alerts/#")
    return view


def test_wearable_sos_over_ble_reaches_the_center_with_its_gnss_position(tmp_path, air, mqtt_client):
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port,
                        overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec}})
        view = center_alerts(mqtt_client, center)
        with Agent(config_module.load(street.config_path)):
            wearable = street.wearables[0]
            fix = {"lat": ORIGIN[0] + 0.0002, "lon": ORIGIN[1], "accuracy_m": 9}
            sos = frames.build_sealed("sos", fix, DeviceKeys(wearable.key), 41, epoch_of(time.time()))
            air.call(air.air.add_advertiser(ble.advertisement(sos), interval_ms=50, rssi=-67))
            alert = json.loads(view.next_message(WAIT_S).payload)
    assert alert["alert_id"] == "%s-41" % wearable.hex_id and alert["type"] == "sos"
    assert alert["location"]["source"] == "gnss" and alert["location"]["accuracy_m"] == 9
    assert alert["path"] == {"transport": "ble", "receiver": "hci0", "rssi": -67}


def test_bell_press_on_a_serial_line_reaches_the_center(tmp_path, mqtt_client):
    radio, line = os.openpty()
    tty.setraw(radio)
    tty.setraw(line)
    try:
        with MosquittoBroker(workdir=tmp_path / "center") as center:
            street = Street(tmp_path / "street", center_port=center.port,
                            overrides={"serial": {"enabled": "true", "url": '"%s"' % os.ttyname(line)}})
            view = center_alerts(mqtt_client, center)
            with Agent(config_module.load(street.config_path)):
                bell = street.bells[0]
                press = frames.build_plain("bell_press", {"button": 1}, DeviceKeys(bell.key), bell.device_id, 7)
                os.write(radio, b"\x13\x37noise\x00" + serial_link.encode(press))
                alert = json.loads(view.next_message(WAIT_S).payload)
        assert alert["alert_id"] == "%s-7" % bell.hex_id and alert["path"]["transport"] == "serial"
    finally:
        os.close(radio)
        os.close(line)


def test_a_missing_serial_port_leaves_the_agent_running_degraded_with_one_clear_error(tmp_path, mqtt_client):
    """The radio may be plugged in later: the agent runs, says what is missing, and retries."""
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port,
                        overrides={"serial": {"enabled": "true", "url": '"/dev/ttyNOPE0"'}})
        births = mqtt_client(center)
        births.subscribe("ansim/center/v1/agents/+/state")
        with Agent(config_module.load(street.config_path)) as agent:
            assert json.loads(births.next_message(WAIT_S).payload)["state"] == "online"
            waits.until(lambda: "serial" in agent.health.down_components(), WAIT_S, "serial shown down")
            assert "/dev/ttyNOPE0" in agent.health.down_components()["serial"]
            assert agent.health.fault is None and agent.uplink.connected.is_set()


def test_the_centers_ack_reaches_the_wearable_over_ble(tmp_path, air, mqtt_client):
    heard = queue.Queue()
    listener = BleIntake(heard.put, receiver="wearable-radio", backend=bleak_backend_for(air.air))
    air.call(listener.start())
    try:
        with MosquittoBroker(workdir=tmp_path / "center") as center:
            street = Street(tmp_path / "street", center_port=center.port,
                            overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec}})
            view = center_alerts(mqtt_client, center)
            with Agent(config_module.load(street.config_path), virtual_air=air):
                wearable = street.wearables[0]
                keys = DeviceKeys(wearable.key)
                sos = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, 77,
                                          epoch_of(time.time()))
                sender = air.call(air.air.add_advertiser(ble.advertisement(sos), interval_ms=50))
                alert = json.loads(view.next_message(WAIT_S).payload)
                air.call(sender.stop())
                view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                             json.dumps({"alert_id": alert["alert_id"], "status": "dispatched"}))
                deadline = time.monotonic() + WAIT_S
                while True:  # the wearable's radio also hears its own SOS: wait for the agent's frame
                    reception = heard.get(timeout=max(0.0, deadline - time.monotonic()))
                    if frames.peek(reception.frame).downlink:
                        break
        ack = frames.unpack(reception.frame, keys)
        assert ack.kind == "center_ack" and ack.fields == {"acked_counter": 77, "status": "dispatched"}
        assert ack.rid == frames.peek(sos).rid
    finally:
        air.call(listener.stop())


def test_the_agent_hearing_its_own_ack_on_the_air_counts_it_as_downlink_and_warns_nobody(
        tmp_path, air, mqtt_client, caplog):
    caplog.set_level(logging.INFO, logger="ansim")
    metrics = Metrics()
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port,
                        overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % air.spec}})
        view = center_alerts(mqtt_client, center)
        with Agent(config_module.load(street.config_path), metrics=metrics, virtual_air=air):
            keys = DeviceKeys(street.wearables[0].key)
            sos = frames.build_sealed("sos", {"lat": None, "lon": None, "accuracy_m": 0}, keys, 5,
                                      epoch_of(time.time()))
            sender = air.call(air.air.add_advertiser(ble.advertisement(sos), interval_ms=50))
            alert = json.loads(view.next_message(WAIT_S).payload)
            air.call(sender.stop())
            view.publish("ansim/center/v1/agents/%s/ack" % street.agent_id,
                         json.dumps({"alert_id": alert["alert_id"], "status": "received"}))
            # the agent's own scanner hears the ack it advertises
            waits.until(lambda: metrics.frames_by_verdict().get("downlink"), WAIT_S, "the agent hearing its own ack")
    verdicts = metrics.frames_by_verdict()
    assert set(verdicts) <= {"accepted", "duplicate", "downlink"}, verdicts
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_downlink_frame_is_normal_on_shared_media_and_rejected_on_a_devices_own_topic(tmp_path):
    street = Street(tmp_path / "street", center_port=1)
    clock = Clock()
    core, store = make_core(street, clock)
    bell, wearable = street.bells[0], street.wearables[0]
    plain = frames.build_plain("time", {"unix_time": int(clock.now)}, DeviceKeys(bell.key), bell.device_id, 3,
                               downlink=True)
    sealed = frames.build_sealed("center_ack", {"acked_counter": 4, "status": "received"},
                                 DeviceKeys(wearable.key), 2, epoch_of(clock.now), downlink=True)
    shared = [Reception(sealed, "ble", "hci0", rssi=-70), Reception(plain, "serial", "uart0"),
              Reception(plain, "mqtt", "local", topic=topics.topic(0x00A0001, topics.UP, scope=topics.RELAY))]
    own_topic = Reception(plain, "mqtt", "local", topic=topics.topic(bell.device_id, topics.UP))
    try:
        outcomes, downlinks = core.process_batch(shared + [own_topic])
    finally:
        store.close()
    assert [(o.verdict, o.detail) for o in outcomes[:3]] == [("downlink", None)] * 3  # nothing to log
    assert outcomes[3].verdict == "direction" and "uplink topic" in outcomes[3].detail
    assert downlinks == []

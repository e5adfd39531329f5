"""The agent hears wearables over BLE (bleak's API over a virtual bumble radio) and frames
on a serial line (a pty), and forwards them to the center like any other path."""

import json
import queue
import os
import time
import tty

import pytest

from ansim_agent import config as config_module
from ansim_agent.intake import IntakeUnavailable
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_agent.ble_intake import BleIntake
from ansim_simulators.ble_radio import ThreadedAir, bleak_backend_for
from ansim_simulators.broker import MosquittoBroker
from ansim_simulators.street import ORIGIN, Street

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


def test_a_missing_serial_port_stops_the_agent_with_one_clear_error(tmp_path):
    with MosquittoBroker(workdir=tmp_path / "center") as center:
        street = Street(tmp_path / "street", center_port=center.port,
                        overrides={"serial": {"enabled": "true", "url": '"/dev/ttyNOPE0"'}})
        with pytest.raises(IntakeUnavailable, match="/dev/ttyNOPE0"):
            Agent(config_module.load(street.config_path)).start()


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

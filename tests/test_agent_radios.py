"""The agent hears wearables over BLE (bleak's API over a virtual bumble radio) and frames
on a serial line (a pty), and forwards them to the center like any other path."""

import json
import os
import time
import tty

import pytest

from ansim_agent import config as config_module
from ansim_agent.intake import IntakeUnavailable
from ansim_agent.service import Agent
from ansim_protocol import ble, frames, serial_link
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.ble_radio import ThreadedAir
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

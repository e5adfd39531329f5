"""The wearable firmware, flashed with ansim flash (real mpremote) onto a virtual board, heard by the real edge agent through bleak over the
virtual BLE radio (bumble), with real mosquitto brokers: an SOS reaches the center as an
authenticated alert, the center's ack comes back over the air and ends the re-sends, a cancel
reaches the center, and the BLE address changes together with the rotating id."""

import json
import subprocess
import sys
import time

import pytest

from ansim_agent import config as config_module
from ansim_agent.service import Agent
from ansim_protocol import ble, frames
from ansim_protocol.crypto import CLOCKLESS, ROTATION_PERIOD_S, DeviceKeys, epoch_of, rotating_id
from ansim_simulators.hardware.ble_radio import ThreadedAir
from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.fixtures.broker import MosquittoBroker
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

BUTTON, MOTOR = 0, 4
WAIT_S = 15
RSSI = -58


def flash(board_dir, wearable):
    copy_to_directory(firmware_files("wearable"), board_dir)
    (board_dir / "config.json").write_text(json.dumps({"device_id": wearable.hex_id, "role": "wearable",
                                                       "key": wearable.key.hex()}))


def printed(board, text, since=0, timeout=WAIT_S):
    return board.control.wait_for(lambda e: text in e.get("text", ""), timeout=timeout, since=since, ev="print")


def next_advert(board, since, keys):
    event = board.control.wait_for(lambda e: e["data"] is not None, timeout=WAIT_S, since=since, ev="adv")
    return event, frames.unpack(ble.frame_from_advertisement(bytes.fromhex(event["data"])), keys)


def triple_press(ctl):
    for _ in range(3):
        ctl.press(BUTTON, 60)
        time.sleep(0.06)  # released between presses (the stimulus)


def long_press(ctl):
    ctl.press(BUTTON, 1200)
    time.sleep(0.2)  # and lets go


class Site:
    """Brokers, the agent on a virtual air, a wearable flashed the technician's way (``ansim
    flash`` through the real mpremote, which also sets its clock) or laid out directly (to
    keep a ``clock`` given to the board), its radio on the air."""

    def __init__(self, tmp_path, air, mqtt_client, clock="host", mpremote=True):
        self.tmp_path, self.air, self.mqtt_client, self.clock = tmp_path, air, mqtt_client, clock
        self.mpremote = mpremote

    def __enter__(self):
        self.center = MosquittoBroker(workdir=self.tmp_path / "center").__enter__()
        self.street = Street(self.tmp_path / "street", center_port=self.center.port,
                             overrides={"ble": {"enabled": "true", "virtual_air": '"%s"' % self.air.spec}})
        self.wearable = self.street.wearables[0]
        self.keys = DeviceKeys(self.wearable.key)
        if not self.mpremote:
            flash(self.tmp_path / "flash", self.wearable)
        self.view = self.mqtt_client(self.center)
        self.view.subscribe("ansim/center/v1/+/alerts/#")
        self.agent = Agent(config_module.load(self.street.config_path), virtual_air=self.air).__enter__()
        self.board = VirtualBoard(self.tmp_path / "flash", "pty", workdir=self.tmp_path / "vm",
                                  clock=self.clock).start()
        self.radio = BoardRadio(self.board, self.air, rssi=RSSI)
        self.radio.start()
        if self.mpremote:
            self.board.control.wait_for(timeout=WAIT_S, ev="repl")  # an empty board, at its REPL
            self._ansim_flash()
        printed(self.board, "wearable: ready")
        return self

    def _ansim_flash(self):
        site = self.tmp_path / "site"
        (site / "devices").mkdir(parents=True)
        (site / "devices" / ("%s.json" % self.wearable.hex_id)).write_text(json.dumps(
            {"device_id": self.wearable.hex_id, "role": "wearable", "key": self.wearable.key.hex()}))
        result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "flash", "--port", self.board.port,
                                 "--role", "wearable", "--device", self.wearable.hex_id, "--site", str(site)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def __exit__(self, *exc):
        self.radio.stop()
        self.board.stop()
        self.agent.__exit__(*exc)
        self.center.__exit__(*exc)

    def alert(self, kind):
        deadline = time.monotonic() + WAIT_S
        while True:
            msg = self.view.next_message(max(0.0, deadline - time.monotonic()))
            alert = json.loads(msg.payload)
            if alert["type"] == kind:
                self.received_at = msg.timestamp  # paho's time.monotonic() at arrival
                return alert

    def ack(self, alert_id, status):
        self.view.publish("ansim/center/v1/agents/%s/ack" % self.street.agent_id,
                          json.dumps({"alert_id": alert_id, "status": status}))


@pytest.fixture
def air():
    a = ThreadedAir()
    yield a
    a.close()


def test_an_sos_reaches_the_center_and_the_centers_ack_stops_the_wearable(tmp_path, air, mqtt_client):
    with Site(tmp_path, air, mqtt_client) as site:
        ctl = site.board.control
        mark = ctl.mark()
        triple_press(ctl)
        first, sos = next_advert(site.board, mark, site.keys)
        alert = site.alert("sos")
        assert alert["alert_id"] == "%s-%d" % (site.wearable.hex_id, sos.counter)
        assert alert["path"]["transport"] == "ble" and alert["path"]["rssi"] == RSSI
        assert alert["location"]["source"] != "gnss"  # no GNSS fitted: located by the receiver
        print("\nfirst advertisement -> center alert %.1f ms" % ((site.received_at - first["t"]) * 1000))

        mark = ctl.mark()
        site.ack(alert["alert_id"], "dispatched")
        printed(site.board, "wearable: ack for %d: dispatched" % sos.counter, mark)
        printed(site.board, "wearable: sos %d acknowledged" % sos.counter, mark)
        ctl.wait_for(lambda e: e["data"] is None, timeout=WAIT_S, since=mark, ev="adv")
        ctl.wait_for(timeout=WAIT_S, since=mark, ev="scan", on=False)
        since = mark
        for _ in range(3):  # three buzzes: acknowledged
            buzz = ctl.wait_for(timeout=WAIT_S, since=since, ev="pin", pin=MOTOR, value=1)
            since = ctl.events().index(buzz) + 1


def test_a_cancel_reaches_the_center_within_the_window(tmp_path, air, mqtt_client):
    with Site(tmp_path, air, mqtt_client) as site:
        ctl = site.board.control
        mark = ctl.mark()
        long_press(ctl)
        _, sos = next_advert(site.board, mark, site.keys)
        long_press(ctl)
        sos_alert = site.alert("sos")
        cancel = site.alert("cancel")
    assert cancel["cancels"] == sos_alert["alert_id"] == "%s-%d" % (site.wearable.hex_id, sos.counter)
    assert cancel["within_window"] is True


def test_the_ble_address_changes_with_the_rotating_id(tmp_path, air, mqtt_client):
    boundary = (epoch_of(time.time()) + 1) * ROTATION_PERIOD_S
    with Site(tmp_path, air, mqtt_client, clock=boundary - 8, mpremote=False) as site:  # 8 s before a new epoch
        ctl = site.board.control
        mark = ctl.mark()
        long_press(ctl)
        first, sos = next_advert(site.board, mark, site.keys)
        long_press(ctl)  # cancelled: the next SOS is a new frame
        cancel_event, cancel = next_advert(site.board, ctl.events().index(first) + 1, site.keys)
        assert cancel.kind == "cancel"
        assert cancel_event["addr"] == first["addr"] and cancel.rid == sos.rid  # one epoch, one address
        printed(site.board, "wearable: cancel %d done" % cancel.counter, mark)
        # the user waits until the wearable's clock has passed into the next epoch
        time.sleep(max(0.0, boundary + 0.5 - (time.time() + ctl.rtc_offset)))
        mark = ctl.mark()
        triple_press(ctl)
        second_event, second = next_advert(site.board, mark, site.keys)
        alerts = [site.alert("sos"), site.alert("sos")]
    assert sos.rid == rotating_id(site.keys, epoch_of(boundary - 1))
    assert second.rid == rotating_id(site.keys, epoch_of(boundary))
    assert second_event["addr"] != first["addr"]
    assert {first["addr_type"], second_event["addr_type"]} == {1}  # random, and non-resolvable:
    assert int(first["addr"][:2], 16) >> 6 == 0 and int(second_event["addr"][:2], 16) >> 6 == 0
    # the agent followed the device across the epoch change: both SOS reached the center
    assert {a["alert_id"] for a in alerts} == {"%s-%d" % (site.wearable.hex_id, f.counter) for f in (sos, second)}


def test_a_wearable_whose_clock_runs_fast_is_set_right_with_its_ack(tmp_path, air, mqtt_client):
    ahead = ROTATION_PERIOD_S  # exactly one epoch ahead, whatever the phase within an epoch
    with Site(tmp_path, air, mqtt_client, clock=time.time() + ahead, mpremote=False) as site:
        ctl = site.board.control
        mark = ctl.mark()
        triple_press(ctl)
        _, sos = next_advert(site.board, mark, site.keys)
        assert sos.rid == rotating_id(site.keys, epoch_of(time.time() + ahead))
        alert = site.alert("sos")
        site.ack(alert["alert_id"], "received")
        printed(site.board, "wearable: clock set", mark)
        printed(site.board, "wearable: sos %d acknowledged" % sos.counter, mark)
        assert abs(ctl.rtc_offset) < 5  # the board's clock now agrees with the agent's


def test_a_wearable_without_a_clock_is_heard_and_given_the_time_over_the_air(tmp_path, air, mqtt_client):
    """SPEC.md 3.2: after power loss the wearable has no clock: its SOS goes out under its
    clockless epoch, the agent finds it there, sends the time at once, and the ack follows."""
    with Site(tmp_path, air, mqtt_client, clock=None, mpremote=False) as site:
        ctl = site.board.control
        mark = ctl.mark()
        triple_press(ctl)
        _, sos = next_advert(site.board, mark, site.keys)
        assert sos.rid == rotating_id(site.keys, CLOCKLESS + 1)
        alert = site.alert("sos")
        assert alert["alert_id"] == "%s-%d" % (site.wearable.hex_id, sos.counter)
        printed(site.board, "wearable: clock set", mark)  # before any ack: sent with the SOS's acceptance
        assert abs(ctl.rtc_offset) < 5
        site.ack(alert["alert_id"], "received")
        printed(site.board, "wearable: sos %d acknowledged" % sos.counter, mark)
        mark = ctl.mark()
        ctl.wait_for(timeout=WAIT_S, since=mark, ev="sleep")
        triple_press(ctl)
        _, second = next_advert(site.board, mark, site.keys)
        assert second.rid == rotating_id(site.keys, epoch_of(time.time()))  # back on the clock's epochs
        assert site.alert("sos")["alert_id"] == "%s-%d" % (site.wearable.hex_id, second.counter)

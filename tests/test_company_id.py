"""The BLE company id is a provisioning setting (SPEC.md 6.1), 0xFFFF (the Bluetooth SIG's test
id) by default: ``ansim provision`` writes it into the wearables' configs and the agent's; the
wearable advertises and listens under it; the agent's intake hears only it (anything else is
counted as not ours) and its advertiser sends under it; ``ansim decode`` reads any."""

import asyncio
import json
import pathlib
import queue
import subprocess
import sys
import time
import tomllib
import types

import pytest

from ansim_agent import config as config_module
from ansim_agent.ble_advertiser import VirtualAdvertiser, on_air_data
from ansim_agent.ble_intake import BleIntake
from ansim_agent.service import Agent
from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_protocol.errors import ADVERTISEMENT, FrameError
from ansim_simulators.hardware.ble_radio import ThreadedAir, VirtualAir, bleak_backend_for
from ansim_simulators.hardware.board_radio import BoardRadio
from ansim_simulators.world.street import Street
from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools.flash import copy_to_directory, firmware_files

OURS = 0x0A1B
VECTORS = json.loads((pathlib.Path(frames.__file__).parent / "vectors.json").read_text())["vectors"]
ADVERTS = [v for v in VECTORS if "adv" in v and "expect" in v]
WAIT_S = 15


def ansim(*args):
    return subprocess.run([sys.executable, "-m", "ansim_tools.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_default_is_the_test_id_and_the_vectors_are_under_it():
    assert ble.COMPANY_ID == 0xFFFF
    for vector in ADVERTS:
        frame = bytes.fromhex(vector["hex"])
        adv = bytes.fromhex(vector["adv"])
        assert ble.frame_from_advertisement(adv) == frame == ble.frame_from_advertisement(adv, 0xFFFF)
        assert ble.advertisement(frame) == ble.advertisement(frame, 0xFFFF) == ble.FLAGS + b"%c\xff\xff\xff" % (
            len(frame) + 3) + frame


@pytest.mark.parametrize("vector", ADVERTS, ids=[v["name"] for v in ADVERTS])
def test_an_advert_under_another_company_is_advertisement_for_a_receiver_of_0xffff(vector):
    """Negative vectors, built from every positive advertisement: the same frame under 0x0A1B
    is not an ansim frame for a receiver configured with 0xFFFF, and vice versa."""
    frame = bytes.fromhex(vector["hex"])
    other = ble.advertisement(frame, OURS)
    assert other[5:7] == b"\x1b\x0a"  # little-endian on air
    with pytest.raises(FrameError) as err:
        ble.frame_from_advertisement(other)
    assert err.value.reason == ADVERTISEMENT and "0xFFFF" in str(err.value)
    with pytest.raises(FrameError) as err:
        ble.frame_from_advertisement(bytes.fromhex(vector["adv"]), OURS)
    assert err.value.reason == ADVERTISEMENT
    assert ble.frame_from_advertisement(other, OURS) == frame
    assert ble.frame_from_manufacturer_data(other[5:], OURS) == frame


def test_company_ids_outside_16_bits_are_refused():
    for bad in (-1, 0x10000, True, "0x0A1B"):
        with pytest.raises(ValueError):
            ble.check_company_id(bad)
    with pytest.raises(ValueError):
        BleIntake(lambda reception: None, company_id=0x10000)


def test_ansim_decode_reads_an_advert_under_the_company_id_it_is_given():
    sos = next(v for v in ADVERTS if v["expect"]["type"] == "sos" and v["expect"]["envelope"] == "sealed-up")
    adv = ble.advertisement(bytes.fromhex(sos["hex"]), OURS).hex()
    heard = ansim("decode", "--adv", "--json", "--company-id", "0x0A1B", "--key", sos["key"], adv)
    assert heard.returncode == 0, heard.stderr
    assert json.loads(heard.stdout)["type"] == "sos"
    refused = ansim("decode", "--adv", adv)
    assert refused.returncode == 1 and "no manufacturer data under company id 0xFFFF" in refused.stderr
    bad = ansim("decode", "--adv", "--company-id", "0x10000", adv)
    assert bad.returncode == 2 and "0x0000 to 0xFFFF" in bad.stderr


def test_provision_writes_the_company_id_into_the_wearables_and_the_agents_config(tmp_path):
    site = tmp_path / "site"
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text("# the agent\n[agent]\nid = \"edge-1\"\n\n[ble]\nenabled = true   # on the Pi\n"
                          "company_id = 0xFFFF                # was the test id\n\n[serial]\nenabled = false\n")
    made = ansim("provision", "add", "--site", str(site), "--role", "wearable", "--count", "2",
                 "--company-id", "0x0A1B", "--agent-config", str(agent_toml))
    assert made.returncode == 0, made.stderr
    for device in ("00010001", "00010002"):
        assert json.loads((site / "devices" / (device + ".json")).read_text())["company_id"] == OURS
    text = agent_toml.read_text()
    assert "company_id = 0x0A1B                # was the test id" in text and "# on the Pi" in text
    assert tomllib.loads(text)["ble"] == {"enabled": True, "company_id": OURS}
    # one site, one company id: later wearables get it, another is refused, rotate keeps it
    again = ansim("provision", "add", "--site", str(site), "--role", "wearable")
    assert again.returncode == 0 and "[ble] company_id = 0x0A1B" in again.stdout
    assert json.loads((site / "devices" / "00010003.json").read_text())["company_id"] == OURS
    other = ansim("provision", "add", "--site", str(site), "--role", "wearable", "--company-id", "0xFFFF")
    assert other.returncode == 2 and "provisioned with 0x0A1B" in other.stderr
    assert ansim("provision", "rotate", "--site", str(site), "--device", "00010002").returncode == 0
    assert json.loads((site / "devices" / "00010002.json").read_text())["company_id"] == OURS
    refused = ansim("provision", "add", "--site", str(site), "--role", "wearable", "--set", "company_id=1")
    assert refused.returncode == 2 and "--company-id" in refused.stderr
    bell = ansim("provision", "add", "--site", str(site), "--role", "bell", "--position", "37.5,127.0",
                 "--company-id", "0x0A1B")
    assert bell.returncode == 2 and "for wearables" in bell.stderr


def test_a_site_without_a_company_id_uses_the_test_id(tmp_path):
    made = ansim("provision", "add", "--site", str(tmp_path / "site"), "--role", "wearable")
    assert made.returncode == 0 and "[ble] company_id = 0xFFFF (the default)" in made.stdout
    assert json.loads((tmp_path / "site" / "devices" / "00010001.json").read_text())["company_id"] == 0xFFFF


@pytest.mark.parametrize("value, says", [
    ("0x10000", ["[ble] company_id", "0x0000 to 0xFFFF", "got 65536 (0x10000)", "company_id = 0x0A1B"]),
    ("-1", ["[ble] company_id", "0x0000 to 0xFFFF"]),
    ('"0x0A1B"', ["[ble] company_id", "must be an integer", "remove the quotes: company_id = 0x0A1B"]),
])
def test_the_agent_refuses_a_company_id_that_is_not_16_bits(tmp_path, value, says):
    street = Street(tmp_path, center_port=1883, overrides={"ble": {"company_id": value}})
    with pytest.raises(config_module.ConfigError) as err:
        config_module.load(street.config_path)
    for text in says:
        assert text in str(err.value)


def _agent_config(tmp_path, air, company_id):
    street = Street(tmp_path, center_port=1883, overrides={"ble": {
        "enabled": "true", "virtual_air": '"%s"' % air.spec, "company_id": "0x%04X" % company_id}})
    config = config_module.load(street.config_path)
    assert config.ble["company_id"] == company_id
    return config


def test_a_wearable_provisioned_with_a_company_id_is_heard_only_by_agents_configured_with_it(tmp_path):
    site = tmp_path / "site"
    assert ansim("provision", "add", "--site", str(site), "--role", "wearable",
                 "--company-id", "0x0A1B").returncode == 0
    config = json.loads((site / "devices" / "00010001.json").read_text())
    keys = DeviceKeys(bytes.fromhex(config["key"]))
    copy_to_directory(firmware_files("wearable"), tmp_path / "flash")
    (tmp_path / "flash" / "config.json").write_text(json.dumps(config))
    air = ThreadedAir()
    try:
        # the intake and advertiser an agent configured with 0x0A1B makes (on the air's server)
        agent = types.SimpleNamespace(intake=queue.Queue())
        config = _agent_config(tmp_path / "ours", air, OURS)
        ours, ours_tx, heard = Agent._ble(agent, config.ble), Agent._ble_transmitter(agent, config.ble, air), \
            agent.intake
        # and one configured with the default, on the same air
        config = _agent_config(tmp_path / "theirs", air, 0xFFFF)
        not_heard = queue.Queue()
        theirs = BleIntake(not_heard.put, backend=bleak_backend_for(air.air), company_id=config.ble["company_id"])
        for intake in (ours, theirs):
            air.call(intake.start())
        board = VirtualBoard(tmp_path / "flash", "socket", workdir=tmp_path / "vm").start()
        try:
            with BoardRadio(board, air):
                ctl = board.control
                ctl.wait_for(lambda e: "wearable: ready" in e.get("text", ""), timeout=WAIT_S, ev="print")
                mark = ctl.mark()
                for _ in range(3):
                    ctl.press(0, 60)
                    time.sleep(0.06)
                event = ctl.wait_for(lambda e: e["data"] is not None, timeout=WAIT_S, since=mark, ev="adv")
                assert bytes.fromhex(event["data"])[5:7] == b"\x1b\x0a"
                sos = frames.unpack(heard.get(timeout=WAIT_S).frame, keys)
                assert sos.kind == "sos"
                # the agent's ack goes out under the same id, and the wearable hears it
                ack = frames.build_sealed("center_ack", {"acked_counter": sos.counter, "status": "received"},
                                          keys, 1, epoch_of(time.time() + ctl.rtc_offset), downlink=True)
                air.call(ours_tx.start())
                air.call(ours_tx.advertise(ack, 10))
                ctl.wait_for(lambda e: "wearable: sos %d acknowledged" % sos.counter in e.get("text", ""),
                             timeout=WAIT_S, since=mark, ev="print")
                air.call(ours_tx.stop())
        finally:
            board.stop()
            for intake in (ours, theirs):
                air.call(intake.stop())
    finally:
        air.close()
    assert ours.frames >= 1 and ours.ignored == 0
    assert theirs.frames == 0 and theirs.ignored >= ours.frames and not_heard.empty()


def test_the_agents_advertiser_sends_under_its_company_id():
    frame = bytes(frames.SEALED_SIZE)
    assert on_air_data(frame, OURS)[:4] == bytes([0x1B, 0xFF, 0x1B, 0x0A])

    async def main():
        air = VirtualAir()
        heard = asyncio.Queue()
        async with BleIntake(heard.put_nowait, backend=bleak_backend_for(air), company_id=OURS) as intake:
            async with VirtualAdvertiser(air, interval_ms=20, company_id=OURS) as tx:
                await tx.advertise(frame, 5)
                got = await asyncio.wait_for(heard.get(), WAIT_S)
        await air.close()
        return got, intake

    got, intake = asyncio.run(main())
    assert got.frame == frame and intake.ignored == 0

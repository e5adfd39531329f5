"""BLE intake through bleak's own API: real advertising bytes from virtual bumble beacons reach
BleIntake as Receptions, and a machine without BlueZ gets one clear IntakeUnavailable."""

import asyncio
import os
import socket

import pytest
from bleak import BleakScanner
from bleak.backends import BleakBackend, get_default_backend
from bleak.exc import BleakBluetoothNotAvailableError as NotAvailable
from bleak.exc import BleakBluetoothNotAvailableReason as Reason
from bleak.exc import BleakDBusError, BleakError
from bumble.core import AdvertisingData

from ansim_agent.ble_intake import BleIntake
from ansim_agent.intake import IntakeUnavailable
from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.hardware.ble_radio import VirtualAir, advertisement_data, bleak_backend_for

TIMEOUT = 5.0
NOW = 1_800_000_000
FIX = {"lat": 37.5665, "lon": 126.978, "accuracy_m": 8}
OTHER_COMPANY = bytes.fromhex("020106") + bytes.fromhex("08ff5900") + b"nrf52"  # Nordic's id
NAME_ONLY = bytes.fromhex("020106") + bytes([6, 0x09]) + b"bulb1"


def sos(counter=1):
    keys = DeviceKeys(os.urandom(16))
    return frames.build_sealed("sos", FIX, keys, counter, epoch_of(NOW))


def watched_backend(air, queue):
    """The air's bleak backend, also queueing each (device, adv) once bleak's callbacks (the
    intake's) have run: tests wait on the queue instead of sleeping."""
    class Watched(bleak_backend_for(air)):
        def call_detection_callbacks(self, device, adv):
            super().call_detection_callbacks(device, adv)
            queue.put_nowait((device, adv))
    return Watched


async def get(queue):
    return await asyncio.wait_for(queue.get(), TIMEOUT)


def test_a_sealed_sos_advert_becomes_receptions_with_the_advertisers_rssi():
    frame = sos()

    async def main():
        air = VirtualAir()
        received = asyncio.Queue()
        async with BleIntake(received.put_nowait, receiver="ble-test", backend=bleak_backend_for(air)):
            adv = await air.add_advertiser(ble.advertisement(frame), interval_ms=20, rssi=-73)
            got = [await get(received) for _ in range(3)]  # repeats of the same bytes all arrive
            adv.rssi = -88
            while (later := await get(received)).rssi != -88:
                pass
        await air.close()
        return got, later

    got, later = asyncio.run(main())
    for reception in got + [later]:
        assert (reception.frame, reception.path, reception.receiver) == (frame, "ble", "ble-test")
    assert [r.rssi for r in got] == [-73, -73, -73]


def test_adverts_without_an_ansim_frame_are_ignored_and_counted():
    frame = sos()

    async def main():
        air = VirtualAir()
        seen, received = asyncio.Queue(), []
        intake = BleIntake(received.append, backend=watched_backend(air, seen))
        async with intake:
            other = await air.add_advertiser(OTHER_COMPANY, interval_ms=20)
            plain = await air.add_advertiser(NAME_ONLY, interval_ms=20)
            ours = await air.add_advertiser(ble.advertisement(frame), interval_ms=20)
            by_address = {}
            while len(by_address) < 3:
                device, adv = await get(seen)
                by_address.setdefault(device.address, []).append(adv)
        await air.close()
        return intake, received, by_address, (other, plain, ours)

    intake, received, by_address, (other, plain, ours) = asyncio.run(main())
    assert by_address[other.address][0].manufacturer_data == {0x0059: b"nrf52"}
    assert by_address[plain.address][0].manufacturer_data == {}
    assert by_address[plain.address][0].local_name == "bulb1"
    ansim = len(by_address[ours.address])
    assert intake.adverts == sum(len(advs) for advs in by_address.values())
    assert (intake.frames, intake.ignored) == (ansim, intake.adverts - ansim)
    assert [r.frame for r in received] == [frame] * ansim


def test_changed_advertising_data_delivers_the_new_frame():
    first, second = sos(1), sos(2)

    async def main():
        air = VirtualAir()
        received = asyncio.Queue()
        async with BleIntake(received.put_nowait, backend=bleak_backend_for(air)):
            adv = await air.add_advertiser(ble.advertisement(first), interval_ms=20)
            assert (await get(received)).frame == first
            await adv.update(ble.advertisement(second))
            while (reception := await get(received)).frame == first:
                pass
            after = [reception.frame] + [(await get(received)).frame for _ in range(2)]
        await air.close()
        return after

    assert asyncio.run(main()) == [second] * 3


def test_an_advertiser_that_rotates_its_address_keeps_its_rssi():
    async def main():
        air = VirtualAir()
        seen = asyncio.Queue()
        async with BleakScanner(lambda d, a: None, backend=watched_backend(air, seen)):
            adv = await air.add_advertiser(NAME_ONLY, interval_ms=20, rssi=-66)
            old = adv.address
            await adv.set_address("C1:22:33:44:55:66")
            while (device := (await get(seen))[0]).address == old:
                pass
            _, data = await get(seen)
        await air.close()
        return device.address, data.rssi

    assert asyncio.run(main()) == ("C1:22:33:44:55:66", -66)


def test_a_scanner_on_hci_over_tcp_hears_the_air_as_another_process_would():
    frame = sos()

    async def main():
        air = VirtualAir()
        spec = await air.serve()
        received = asyncio.Queue()
        async with BleIntake(received.put_nowait, backend=bleak_backend_for(spec)):
            await air.add_advertiser(ble.advertisement(frame), interval_ms=20, rssi=-59)
            reception = await get(received)
        await air.close()
        return reception

    reception = asyncio.run(main())
    assert (reception.frame, reception.rssi) == (frame, -59)


def test_a_virtual_air_that_is_not_served_is_reported_as_such():
    async def main():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # a port nobody listens on
            spec = "tcp-client:127.0.0.1:%d" % sock.getsockname()[1]
            with pytest.raises(IntakeUnavailable, match="no virtual air at " + spec):
                await BleIntake(lambda reception: None, backend=bleak_backend_for(spec)).start()

    asyncio.run(main())


def test_more_advertisers_than_one_controller_holds_are_all_heard():
    async def main():
        air = VirtualAir()
        seen = asyncio.Queue()
        async with BleakScanner(lambda d, a: None, backend=watched_backend(air, seen)):
            advertisers = [await air.add_advertiser(NAME_ONLY, start=False) for _ in range(241)]
            await advertisers[0].start()
            await advertisers[-1].start()
            heard = set()
            while len(heard) < 2:
                heard.add((await get(seen))[0].address)
        await air.close()
        return heard, {advertisers[0].address, advertisers[-1].address}

    heard, expected = asyncio.run(main())
    assert heard == expected


def test_the_backend_gives_bleak_the_advertising_data_as_bluez_does():
    raw = (bytes.fromhex("020106") + bytes([5, 0x03]) + bytes.fromhex("0f180a18")
           + bytes([17, 0x07]) + bytes(range(16)) + bytes.fromhex("0416f0ff01")
           + bytes.fromhex("020af8") + bytes([4, 0x08]) + b"abc" + bytes.fromhex("03ff5900"))
    adv = advertisement_data(AdvertisingData.from_bytes(raw), -70)
    assert adv.service_uuids == ["0000180f-0000-1000-8000-00805f9b34fb",
                                 "0000180a-0000-1000-8000-00805f9b34fb",
                                 "0f0e0d0c-0b0a-0908-0706-050403020100"]
    assert adv.service_data == {"0000fff0-0000-1000-8000-00805f9b34fb": b"\x01"}
    assert (adv.local_name, adv.tx_power, adv.rssi, adv.manufacturer_data) == ("abc", -8, -70, {0x0059: b""})


def test_the_advertiser_keeps_to_legacy_advertising():
    async def main():
        air = VirtualAir()
        with pytest.raises(ValueError, match="31"):
            await air.add_advertiser(bytes(32))
        adv = await air.add_advertiser(ble.advertisement(sos()), start=False)
        with pytest.raises(ValueError, match="31"):
            await adv.update(bytes(32))
        with pytest.raises(ValueError, match="static"):
            await adv.set_address("01:22:33:44:55:66")
        assert not adv.advertising

    asyncio.run(main())


def test_without_bluez_the_default_backend_gives_one_clear_error(tmp_path, monkeypatch):
    # A system bus that is not there, even on a machine whose BlueZ works.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=%s" % (tmp_path / "no_system_bus"))

    async def main():
        with pytest.raises(IntakeUnavailable) as caught:
            await BleIntake(lambda reception: None).start()
        return caught.value

    err = asyncio.run(main())
    message = str(err)
    assert message.startswith("Bluetooth: ") and "BlueZ" in message
    assert "sudo" in message and "disable [ble]" in message
    assert err.__cause__ is None and err.__suppress_context__


def _failing_backend(error):
    class Failing(bleak_backend_for(None)):
        async def start(self):
            raise error
    return Failing


@pytest.mark.parametrize("error, expected", [
    (FileNotFoundError(2, "No such file or directory"), "no BlueZ system bus"),
    (BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown", ["The name org.bluez was not provided"]),
     "bluetoothd) is not running"),
    (BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]), "BlueZ refused to scan"),
    (NotAvailable("No Bluetooth adapters found.", Reason.NO_BLUETOOTH), "no Bluetooth adapter found"),
    (NotAvailable("No powered Bluetooth adapters found.", Reason.POWERED_OFF), "bluetoothctl power on"),
    (BleakError("adapter 'hci7' not found"), "adapter 'hci7' not found: fix [ble] adapter"),
])
def test_each_bluez_failure_becomes_an_intake_unavailable_with_a_fix(error, expected):
    async def main():
        with pytest.raises(IntakeUnavailable) as caught:
            await BleIntake(lambda reception: None, backend=_failing_backend(error)).start()
        return caught.value

    message = str(asyncio.run(main()))
    assert expected in message and message.startswith("Bluetooth: ") and "disable [ble]" in message


def test_on_bluez_repeats_are_requested_and_passive_scans_filter_on_the_company_id():
    """BlueZ cannot run here; check what bleak's BlueZ backend was given (bleak internals).
    ansim's agent runs on Linux, where bleak's default backend is BlueZ."""
    assert get_default_backend() == BleakBackend.BLUEZ_DBUS
    active = BleIntake(lambda reception: None, adapter="hci1")._scanner._backend
    assert active._filters["DuplicateData"].value is True and active._adapter == "hci1"
    passive = BleIntake(lambda reception: None, scanning_mode="passive")._scanner._backend
    assert [tuple(p) for p in passive._or_patterns] == [(0, 0xFF, b"\xff\xff")]


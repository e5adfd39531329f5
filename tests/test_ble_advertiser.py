"""The BLE transmitter: the agent's acknowledgement goes on the air as a broadcast advertisement.

BlueZAdvertiser is tested on the wire: a private dbus-daemon, and on it a fake bluetoothd that
owns ``org.bluez`` and behaves as BlueZ's src/advertising.c does (RegisterAdvertisement reads
the caller's LEAdvertisement1 object back with Properties.GetAll before it answers; the caller's
unique name + path identify an advertisement; NotPermitted when the instances run out).
VirtualAdvertiser is tested by ear: BleIntake on the same virtual air hears the frame.
"""

import asyncio
import os
import select
import shutil
import subprocess

import pytest
from dbus_fast import DBusError, Message, MessageFlag, MessageType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from ansim_agent.ble_advertiser import (ADVERTISEMENT_IFACE, AdvertiseError, BlueZAdvertiser, HciAdvertiser,
                                        VirtualAdvertiser, on_air_data)
from ansim_agent.ble_intake import BleIntake
from ansim_agent.intake import IntakeUnavailable
from ansim_protocol import ble, frames
from ansim_protocol.crypto import DeviceKeys, epoch_of
from ansim_simulators.hardware.ble_radio import ThreadedAir, VirtualAir, bleak_backend_for

TIMEOUT = 5.0
NOW = 1_800_000_000
MANAGER = "org.bluez.LEAdvertisingManager1"
PROPERTIES = "org.freedesktop.DBus.Properties"
LONG = 3600.0  # a duration that outlives the test

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def center_ack(counter=1):
    keys = DeviceKeys(os.urandom(16))
    return frames.build_sealed("center_ack", {"acked_counter": 7, "status": "dispatched"}, keys, counter, epoch_of(NOW),
                               downlink=True)


@pytest.fixture
def bus_address(tmp_path):
    """A private dbus-daemon (no service activation: nothing but what a test puts there)."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.fail("dbus-daemon not found: `sudo apt-get install dbus`")
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=tmp_path / "bus"))
    proc = subprocess.Popen([daemon, "--config-file=%s" % config, "--nofork", "--print-address"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        address = proc.stdout.readline().decode().strip() if ready else ""
        if not address:
            proc.kill()
            pytest.fail("dbus-daemon did not start: %s" % proc.stderr.read().decode(errors="replace"))
        yield address
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


class Registration:
    """One RegisterAdvertisement that BlueZ accepted: what it read, the bytes it would send."""

    def __init__(self, owner, path, props, data):
        self.owner, self.path, self.props, self.data = owner, path, props, data
        self.unregistered = asyncio.Event()


class _ManagerInterface(ServiceInterface):
    """LEAdvertisingManager1 as introspection and properties show it; the calls themselves are
    taken by FakeBlueZ._on_message, which (like BlueZ) needs the caller's unique name."""

    def __init__(self, fake):
        super().__init__(MANAGER)
        self._fake = fake

    @dbus_method()
    def RegisterAdvertisement(self, advertisement: "o", options: "a{sv}"):  # noqa: N802
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def UnregisterAdvertisement(self, service: "o"):  # noqa: N802
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_property(access=PropertyAccess.READ)
    def ActiveInstances(self) -> "y":  # noqa: N802
        return len(self._fake.registered)

    @dbus_property(access=PropertyAccess.READ)
    def SupportedInstances(self) -> "y":  # noqa: N802
        return self._fake.max_ads - len(self._fake.registered)


class _AdapterInterface(ServiceInterface):
    def __init__(self, powered):
        super().__init__("org.bluez.Adapter1")
        self._powered = powered

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> "b":  # noqa: N802
        return self._powered

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":  # noqa: N802
        return "DC:A6:32:00:00:01"


class FakeBlueZ:
    """bluetoothd's advertising manager for adapter ``hci0`` on a private bus.

    ``max_ads``: instances (NotPermitted beyond). ``error``: (name, text) to answer every
    RegisterAdvertisement with. ``advertising``: False leaves out LEAdvertisingManager1.
    ``registered``: (owner, path) -> Registration; ``log``: ("register"|"unregister", path).
    """

    def __init__(self, address, max_ads=5, error=None, powered=True, advertising=True):
        self.address, self.max_ads, self.error = address, max_ads, error
        self.powered, self.advertising = powered, advertising
        self.registered = {}
        self.log = []
        self.bus = None
        self._tasks = set()

    async def __aenter__(self):
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.export("/org/bluez/hci0", _AdapterInterface(self.powered))
        if self.advertising:
            self.bus.export("/org/bluez/hci0", _ManagerInterface(self))
            self.bus.add_message_handler(self._on_message)
        await self.bus.request_name("org.bluez")
        return self

    async def __aexit__(self, *exc):
        self.bus.disconnect()
        await asyncio.wait_for(self.bus.wait_for_disconnect(), TIMEOUT)

    def current(self, path):
        """The one live registration of ``path``."""
        (registration,) = [r for (owner, p), r in self.registered.items() if p == path and r is not None]
        return registration

    async def release(self, path):
        """What BlueZ does when an advertisement's Timeout expires: Release(), then forget it."""
        registration = self.current(path)
        self.bus.send(Message(destination=registration.owner, path=path, interface=ADVERTISEMENT_IFACE,
                              member="Release", flags=MessageFlag.NO_REPLY_EXPECTED))
        del self.registered[(registration.owner, path)]

    def _on_message(self, msg):
        if (msg.message_type is not MessageType.METHOD_CALL or msg.path != "/org/bluez/hci0"
                or msg.interface != MANAGER):
            return None
        if msg.member == "RegisterAdvertisement":
            task = asyncio.ensure_future(self._register(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if msg.member == "UnregisterAdvertisement":
            return self._unregister(msg)
        return None

    async def _register(self, msg):
        path, _options = msg.body
        key = (msg.sender, path)
        if key in self.registered:
            return self._reply_error(msg, "org.bluez.Error.AlreadyExists", "Already Exists")
        if self.error:
            return self._reply_error(msg, *self.error)
        if len(self.registered) >= self.max_ads:
            return self._reply_error(msg, "org.bluez.Error.NotPermitted", "Maximum advertisements reached")
        self.registered[key] = None  # the instance is taken while BlueZ reads the object
        reply = await self.bus.call(Message(destination=msg.sender, path=path, interface=PROPERTIES,
                                            member="GetAll", signature="s", body=[ADVERTISEMENT_IFACE]))
        try:
            if reply.message_type is MessageType.ERROR:
                raise ValueError("GetAll: %s" % reply.error_name)
            props = reply.body[0]
            data = self._advertising_data(props)
        except ValueError as err:
            del self.registered[key]
            return self._reply_error(msg, "org.bluez.Error.Failed", "Failed to parse advertisement. (%s)" % err)
        self.registered[key] = Registration(msg.sender, path, props, data)
        self.log.append(("register", path))
        self.bus.send(Message.new_method_return(msg))

    def _advertising_data(self, props):
        """The advertising data BlueZ would hand the kernel, checked as BlueZ checks it."""
        if props["Type"].signature != "s" or props["Type"].value not in ("broadcast", "peripheral"):
            raise ValueError("Type %r" % (props["Type"],))
        if props["Type"].value == "broadcast" and props.get("Discoverable") and props["Discoverable"].value:
            raise ValueError("Broadcast cannot set flags")
        data = b""
        manufacturer = props.get("ManufacturerData")
        if manufacturer is not None:
            if manufacturer.signature != "a{qv}":
                raise ValueError("ManufacturerData signature %s" % manufacturer.signature)
            for company, value in manufacturer.value.items():
                if value.signature != "ay":
                    raise ValueError("ManufacturerData value signature %s" % value.signature)
                data += bytes([len(value.value) + 3, 0xFF, company & 0xFF, company >> 8]) + value.value
        if "Includes" in props and props["Includes"].signature != "as":
            raise ValueError("Includes signature %s" % props["Includes"].signature)
        for name in ("MinInterval", "MaxInterval"):
            if name in props and (props[name].signature != "u" or props[name].value < 20):
                raise ValueError("%s %r" % (name, props[name]))
        if len(data) > 31:
            raise ValueError("Advertising data too long")
        return data

    def _unregister(self, msg):
        (path,) = msg.body
        registration = self.registered.get((msg.sender, path))
        if registration is None:
            return Message.new_error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist")
        del self.registered[(msg.sender, path)]
        self.log.append(("unregister", path))
        registration.unregistered.set()
        return Message.new_method_return(msg)

    def _reply_error(self, msg, name, text):
        self.bus.send(Message.new_error(msg, name, text))


async def wait(event):
    await asyncio.wait_for(event.wait(), TIMEOUT)


def test_the_frame_goes_to_bluez_as_broadcast_manufacturer_data_until_the_duration_ends(bus_address):
    frame = center_ack()

    async def main():
        async with FakeBlueZ(bus_address) as bluez:
            async with BlueZAdvertiser("hci0", bus_address=bus_address) as tx:
                loop = asyncio.get_running_loop()
                ad = await tx.advertise(frame, 0.3)
                on_air = loop.time()
                registration = bluez.current(ad.path)
                still_registered = not registration.unregistered.is_set()
                await wait(registration.unregistered)
                off_air = loop.time()
                await wait(ad.ended)
                exported = await bluez.bus.introspect(registration.owner, ad.path)
                return registration, still_registered, off_air - on_air, ad, exported, bluez.log

    registration, still_registered, lasted, ad, exported, log = asyncio.run(main())
    props = registration.props
    assert props["Type"].value == "broadcast"
    assert props["ManufacturerData"].signature == "a{qv}"
    assert {k: (v.signature, v.value) for k, v in props["ManufacturerData"].value.items()} == {0xFFFF: ("ay", frame)}
    assert props["Includes"].value == []
    assert "Discoverable" not in props and "LocalName" not in props
    assert registration.data == on_air_data(frame)
    assert ble.frame_from_advertisement(registration.data) == frame
    assert still_registered and lasted >= 0.25
    assert log == [("register", ad.path), ("unregister", ad.path)]
    assert ADVERTISEMENT_IFACE not in [i.name for i in exported.interfaces]  # the object is gone too
    assert not ad.replaced and not ad.released


def test_several_run_at_once_and_stop_unregisters_them_all(bus_address):
    acks = [center_ack(n) for n in (1, 2, 3)]

    async def main():
        async with FakeBlueZ(bus_address) as bluez:
            tx = BlueZAdvertiser("hci0", bus_address=bus_address)
            await tx.start()
            ads = await asyncio.gather(*(tx.advertise(frame, LONG) for frame in acks))
            registrations = [bluez.current(ad.path) for ad in ads]
            during = {r.props["ManufacturerData"].value[0xFFFF].value for r in registrations}
            active = await bluez.bus.call(Message(destination="org.bluez", path="/org/bluez/hci0", interface=PROPERTIES,
                                                  member="Get", signature="ss", body=[MANAGER, "ActiveInstances"]))
            await tx.stop()
            for registration in registrations:
                await wait(registration.unregistered)
            return during, active.body[0].value, bluez.registered, ads, tx

    during, active, left, ads, tx = asyncio.run(main())
    assert during == set(acks) and active == 3
    assert left == {}
    assert all(ad.ended.is_set() for ad in ads) and tx.active == []


def test_when_bluez_runs_out_of_instances_the_oldest_is_replaced(bus_address):
    first, second, third = (center_ack(n) for n in (1, 2, 3))

    async def main():
        async with FakeBlueZ(bus_address, max_ads=2) as bluez:
            async with BlueZAdvertiser("hci0", bus_address=bus_address) as tx:
                old = await tx.advertise(first, LONG)
                kept = await tx.advertise(second, LONG)
                new = await tx.advertise(third, LONG)
                await wait(old.ended)
                on_air = {r.props["ManufacturerData"].value[0xFFFF].value for r in bluez.registered.values()}
                return old, kept, new, on_air, tx.replaced

    old, kept, new, on_air, replaced = asyncio.run(main())
    assert on_air == {second, third}
    assert old.replaced and not kept.replaced and not new.replaced and replaced == 1


def test_no_free_instance_and_none_of_ours_is_a_clear_error(bus_address):
    async def main():
        async with FakeBlueZ(bus_address, max_ads=0):
            async with BlueZAdvertiser("hci0", bus_address=bus_address) as tx:
                with pytest.raises(AdvertiseError) as caught:
                    await tx.advertise(center_ack(), 1.0)
                return caught.value

    err = asyncio.run(main())
    assert err.dbus_error == "org.bluez.Error.NotPermitted"
    assert "no free advertising instance on hci0" in str(err) and "other programs" in str(err)
    assert "Maximum advertisements reached" in str(err)


def test_bluez_failing_the_registration_is_a_clear_error(bus_address):
    async def main():
        async with FakeBlueZ(bus_address, error=("org.bluez.Error.Failed", "Failed to register advertisement")):
            async with BlueZAdvertiser("hci0", bus_address=bus_address) as tx:
                with pytest.raises(AdvertiseError) as caught:
                    await tx.advertise(center_ack(), 1.0)
                return caught.value, tx.active

    err, active = asyncio.run(main())
    assert err.dbus_error == "org.bluez.Error.Failed"
    assert str(err).startswith("Bluetooth advertising: BlueZ did not accept the advertisement on hci0")
    assert "Failed to register advertisement" in str(err) and "journalctl -u bluetooth" in str(err)
    assert "\n" not in str(err) and active == []


def test_an_advertisement_bluez_releases_is_not_unregistered_again(bus_address):
    async def main():
        async with FakeBlueZ(bus_address) as bluez:
            async with BlueZAdvertiser("hci0", bus_address=bus_address) as tx:
                ad = await tx.advertise(center_ack(), LONG)
                await bluez.release(ad.path)
                await wait(ad.ended)
                return ad, tx.active, bluez.log

    ad, active, log = asyncio.run(main())
    assert ad.released and active == []
    assert log == [("register", ad.path)]  # stop() had nothing left to unregister


@pytest.mark.parametrize("setup, adapter, expected", [
    ("no bus", "hci0", r"no BlueZ system bus \(unix:path=.*nothing-here.*\): install and start BlueZ"),
    ("no bluez", "hci0", r"BlueZ \(bluetoothd\) is not running: install and start BlueZ"),
    ("bluez", "hci1", r"adapter 'hci1' not found: fix \[ble\] adapter in the config"),
    ("powered off", "hci0", r"the Bluetooth adapter is off: `sudo rfkill unblock bluetooth"),
    ("no advertising", "hci0", r"BlueZ offers no LE advertising on hci0"),
])
def test_start_names_what_is_missing_and_the_fix(bus_address, tmp_path, setup, adapter, expected):
    async def main():
        address = "unix:path=%s" % (tmp_path / "nothing-here") if setup == "no bus" else bus_address
        bluez = None
        if setup in ("bluez", "powered off", "no advertising"):
            bluez = await FakeBlueZ(bus_address, powered=setup != "powered off",
                                    advertising=setup != "no advertising").__aenter__()
        try:
            with pytest.raises(IntakeUnavailable) as caught:
                await BlueZAdvertiser(adapter, bus_address=address).start()
        finally:
            if bluez is not None:
                await bluez.__aexit__()
        return str(caught.value)

    message = asyncio.run(main())
    assert message.startswith("Bluetooth advertising: ")
    assert message.endswith(", or disable [ble] in the config") and "\n" not in message
    assert __import__("re").search(expected, message), message


def test_advertise_needs_start_and_a_frame_that_fits():
    async def main():
        tx = VirtualAdvertiser(VirtualAir())
        with pytest.raises(RuntimeError, match="start"):
            await tx.advertise(center_ack(), 1.0)
        await tx.start()
        with pytest.raises(ValueError, match="24"):
            await tx.advertise(bytes(25), 1.0)
        with pytest.raises(ValueError, match="duration"):
            await tx.advertise(center_ack(), 0)

    asyncio.run(main())


def test_a_virtual_advertisement_is_heard_by_ble_intake_until_the_duration_ends():
    frame = center_ack()

    async def main():
        air = VirtualAir()
        received = asyncio.Queue()
        async with BleIntake(received.put_nowait, receiver="wearable", backend=bleak_backend_for(air)):
            async with VirtualAdvertiser(air, rssi=-61, interval_ms=20) as tx:
                ad = await tx.advertise(frame, 0.5)
                heard = await asyncio.wait_for(received.get(), TIMEOUT)
                await wait(ad.ended)
                on_air = dict(air._advertisers)
        await air.close()
        return heard, on_air

    heard, on_air = asyncio.run(main())
    assert (heard.frame, heard.path, heard.rssi) == (frame, "ble", -61)
    assert on_air == {}  # the advertiser was taken off the air


def test_a_virtual_radio_with_few_instances_replaces_the_oldest_and_stop_clears_it():
    first, second = center_ack(1), center_ack(2)

    async def main():
        air = VirtualAir()
        async with VirtualAdvertiser(air, max_instances=1) as tx:
            old = await tx.advertise(first, LONG)
            new = await tx.advertise(second, LONG)
            data = [a.data for a in air._advertisers.values()]
        await air.close()
        return old, new, data, tx.active

    old, new, data, active = asyncio.run(main())
    assert old.replaced and old.ended.is_set() and new.ended.is_set()
    assert data == [on_air_data(second)] and active == []


def test_a_threaded_air_carries_the_agents_advertisements_across_threads():
    frame = center_ack()
    air = ThreadedAir()
    try:
        async def main():
            received = asyncio.Queue()
            async with BleIntake(received.put_nowait, backend=bleak_backend_for(air.spec)):
                async with VirtualAdvertiser(air, interval_ms=20) as tx:
                    await tx.advertise(frame, LONG)
                    return (await asyncio.wait_for(received.get(), TIMEOUT)).frame

        assert asyncio.run(main()) == frame
    finally:
        air.close()


def test_an_agent_in_another_process_advertises_through_a_controller_served_as_hci():
    """``[ble] virtual_air_tx``: bumble as the host stack on a controller of the air served over
    TCP, as a scenario's agent process has it. A scanner elsewhere on the air hears the frame;
    once its duration is over it is off the air, and the next one goes on."""
    frame, later = center_ack(1), center_ack(2)
    air = ThreadedAir()
    try:
        tx_spec = air.call(air.air.serve())

        async def hear(seconds):
            received = asyncio.Queue()
            async with BleIntake(received.put_nowait, backend=bleak_backend_for(air.spec)):
                try:
                    return (await asyncio.wait_for(received.get(), seconds)).frame
                except asyncio.TimeoutError:
                    return None

        async def main():
            async with HciAdvertiser(tx_spec, interval_ms=20) as tx:
                ad = await tx.advertise(frame, 1.0)
                heard = await hear(TIMEOUT)
                await wait(ad.ended)
                after = await hear(1.0)  # a fresh scanner: nothing of ours is left on the air
                await tx.advertise(later, LONG)
                return heard, after, [a.frame for a in tx.active]

        heard, after, active = asyncio.run(main())
        assert heard == frame and after is None and active == [later]
    finally:
        air.close()


def test_an_hci_transport_that_is_not_there_is_a_clear_error():
    async def main():
        with pytest.raises(IntakeUnavailable, match="virtual_air_tx"):
            await HciAdvertiser("tcp-client:127.0.0.1:1").start()

    asyncio.run(main())

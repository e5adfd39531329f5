"""A virtual BLE radio: beacons and scanners on bumble's virtual controllers, and a bleak
backend that scans them.

Why: the agent listens through bleak, whose Linux backend needs BlueZ on D-Bus and a radio;
test machines and the demo have neither. bumble's controllers speak real HCI and carry real
link-layer advertising PDUs between them, and bleak takes a custom scanner backend
(``BleakScanner(backend=...)``), so the agent's own intake code hears virtual beacons
unchanged, with the exact bytes a radio would deliver.

Corrections to bumble 0.0.236, made here so that every user gets them:
- scanners report RSSI -50 for everything: reports are rewritten with the advertiser's
  ``rssi``, or, when the air has an ``rssi_model`` and the scanner a position (``where``),
  with what that model gives for this advertiser at this scanner (None: not heard, the
  report is dropped), so receivers at different places hear one advertiser differently;
- every advertisement is reported twice, the second time as a fake scan response carrying
  the data twice: scan responses are dropped (these beacons are not scannable);
- its legacy advertising commands drop non-connectable adverts: beacons are advertising sets
  with legacy PDUs, through the extended commands the controller supports by default;
- nothing enforces the 31-byte legacy limit: ``Advertiser`` does.

In one process everything shares a ``VirtualAir``. Another process scans the same air
through ``VirtualAir.serve()``, which exposes one more (RSSI-correcting) controller as HCI
over TCP.
"""

import asyncio
import dataclasses
import socket
import threading
import uuid

from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError
from bleak.uuids import normalize_uuid_16, normalize_uuid_32
from bumble import hci
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import AdvertisingEventProperties, AdvertisingParameters, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

from ansim_protocol.ble import LEGACY_MAX

DEFAULT_RSSI = -60
SCAN_WINDOW_MS = 60  # scan window = scan interval: listening without gaps
_SETS_PER_CONTROLLER = 240  # advertising handles 0x00-0xEF
_NONCONNECTABLE = AdvertisingEventProperties(is_connectable=False, is_scannable=False, is_legacy=True)


class _AirController(Controller):
    """A controller on the air whose advertising reports carry each advertiser's RSSI."""

    def __init__(self, air, name, where=None, **kwargs):
        self._air = air
        self.where = where  # the scanner's position, for the air's rssi_model
        super().__init__(name, link=air.link, **kwargs)

    def send_hci_packet(self, packet):
        if isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
            reports = [dataclasses.replace(r, rssi=rssi) for r in packet.reports
                       if (rssi := self._air.rssi_of(r.address, r.rssi, self)) is not None]
            if not reports:
                return  # too far: this receiver heard nothing
            packet = hci.HCI_LE_Extended_Advertising_Report_Event(reports)
        super().send_hci_packet(packet)


class VirtualAir:
    """The shared medium (a bumble ``LocalLink``): every advertiser is heard by every scanner.

    Advertisers live as advertising sets on a few shared beacon controllers, so the link
    fans each PDU out to the scanners and a handful of controllers, not to every beacon.
    """

    def __init__(self):
        self.link = LocalLink()
        self._advertisers = {}  # address bytes -> Advertiser
        self._beacons = []  # powered-on Devices hosting the advertising sets
        self._scanners = {}  # Device -> its controller
        self._servers = []  # transports of serve()
        # (Advertiser, scanner's where) -> RSSI or None (not heard), for scanners given a place
        self.rssi_model = None

    def rssi_of(self, address, default, scanner=None):
        """The RSSI ``scanner`` (a controller) reports for ``address``: the ``rssi_model``'s
        when the air has one and the scanner a ``where`` (None: not heard), else the
        advertiser's ``rssi``, else ``default``."""
        advertiser = self._advertisers.get(bytes(address))
        if advertiser is None:
            return default
        where = getattr(scanner, "where", None)
        if self.rssi_model is not None and where is not None:
            return self.rssi_model(advertiser, where)
        return advertiser.rssi

    async def add_advertiser(self, data, address=None, interval_ms=100, rssi=DEFAULT_RSSI, start=True,
                             device=None):
        """A new ``Advertiser`` of ``data`` every ``interval_ms``, from ``address`` ("C1:22:33:44:55:66";
        a new random static one if None), heard at ``rssi`` dBm.

        ``address`` may also be a bumble ``hci.Address``: of random type, a static address or a
        non-resolvable private one (top bits 00, what a device with privacy uses); of public
        type, the public address of ``device``. ``device``: a radio from ``open_scanner`` to
        advertise from (as a board that also scans does) instead of the shared beacons.
        """
        _check_data(data)
        if interval_ms < 20:
            raise ValueError("advertising interval %r ms below the 20 ms minimum" % interval_ms)
        public = isinstance(address, hci.Address) and address.is_public
        if public:
            if device is None or bytes(device.public_address) != bytes(address):
                raise ValueError("%s: a public address is only the advertising device's own" % address)
        else:
            address = _random_address(address)
        params = AdvertisingParameters(advertising_event_properties=_NONCONNECTABLE,
                                       primary_advertising_interval_min=interval_ms,
                                       primary_advertising_interval_max=interval_ms,
                                       own_address_type=hci.OwnAddressType.PUBLIC if public
                                       else hci.OwnAddressType.RANDOM)
        device = device or await self._beacon()
        adv_set = await device.create_advertising_set(advertising_parameters=params,
                                                      random_address=None if public else address,
                                                      advertising_data=bytes(data), auto_start=False)
        advertiser = Advertiser(self, adv_set, address, bytes(data), interval_ms, rssi)
        self._advertisers[bytes(address)] = advertiser
        if start:
            await advertiser.start()
        return advertiser

    async def remove_advertiser(self, advertiser):
        """Stop ``advertiser`` and free its advertising set (for short-lived advertisers, such
        as the agent's acknowledgements, that would otherwise pile up on the beacons)."""
        await advertiser.stop()
        if self._advertisers.get(bytes(advertiser._address)) is advertiser:
            del self._advertisers[bytes(advertiser._address)]
        if advertiser._set.advertising_handle in advertiser._set.device.extended_advertising_sets:
            await advertiser._set.remove()

    async def open_scanner(self, public_address=None, where=None):
        """A powered-on bumble ``Device`` listening on this air (not yet scanning), with a
        controller of its own (``public_address``: its public address, e.g. a board's;
        ``where``: its position for the ``rssi_model``)."""
        controller = _AirController(self, "scanner%d" % len(self._scanners), where=where,
                                    public_address=public_address)
        device = Device("scanner", host=Host(controller, AsyncPipeSink(controller)))
        await device.power_on()
        self._scanners[device] = controller
        return device

    def close_scanner(self, device):
        """Take a scanner from ``open_scanner`` off the air."""
        self.link.remove_controller(self._scanners.pop(device))

    async def serve(self, host="127.0.0.1", port=0, where=None):
        """Expose one more scanner controller as HCI over TCP, for a scanner in another process.

        Returns the bumble transport spec to open there (``bleak_backend_for(spec)``); one
        client at a time. ``where``: the scanner's position for the ``rssi_model``.
        """
        sock = socket.create_server((host, port))
        transport = await open_tcp_server_transport_with_socket(sock)
        _AirController(self, "tcp:%d" % sock.getsockname()[1], where=where, host_source=transport.source,
                       host_sink=transport.sink)
        self._servers.append(transport)
        return "tcp-client:%s:%d" % sock.getsockname()[:2]

    async def close(self):
        """Stop every advertiser and close the TCP servers."""
        for advertiser in list(self._advertisers.values()):
            await advertiser.stop()
        for transport in self._servers:
            transport.server.close()  # bumble's close() leaves the listening socket open
            await transport.close()
        self._servers.clear()

    async def _beacon(self):
        for device in self._beacons:
            if len(device.extended_advertising_sets) < _SETS_PER_CONTROLLER:
                return device
        controller = _AirController(self, "beacons%d" % len(self._beacons))
        device = Device("beacons", host=Host(controller, AsyncPipeSink(controller)))
        await device.power_on()
        self._beacons.append(device)
        return device

    def _moved(self, advertiser, old, new):
        del self._advertisers[bytes(old)]
        self._advertisers[bytes(new)] = advertiser


class Advertiser:
    """One beacon: non-connectable legacy advertising of raw bytes (made by ``add_advertiser``).

    ``rssi`` is what scanners report for it and may be changed at any time.
    """

    def __init__(self, air, adv_set, address, data, interval_ms, rssi):
        self._air = air
        self._set = adv_set
        self._address = address
        self.data = data
        self.interval_ms = interval_ms
        self.rssi = rssi

    @property
    def address(self):
        """The address, as bleak shows it (``"C3:12:..."``)."""
        return self._address.to_string(False)

    @property
    def advertising(self):
        return self._set.enabled

    async def start(self):
        if not self._set.enabled:  # bumble would run a second timer for a second start
            await self._set.start()

    async def stop(self):
        if self._set.enabled:
            await self._set.stop()

    async def update(self, data):
        """Advertise ``data`` from the next advertising event on."""
        _check_data(data)
        await self._set.set_advertising_data(bytes(data))
        self.data = bytes(data)

    async def set_address(self, address=None):
        """Advertise from ``address`` (a new random static one if None; an ``hci.Address`` may
        be a non-resolvable private one), as a device that rotates its address does."""
        address = _random_address(address)
        await self._set.set_random_address(address)
        self._air._moved(self, self._address, address)
        self._address = address


def _check_data(data):
    if len(data) > LEGACY_MAX:
        raise ValueError("advertising data of %d bytes exceeds the %d of a legacy advertisement"
                         % (len(data), LEGACY_MAX))


def _random_address(address):
    """A random static address from a string or None (a new one); an ``hci.Address`` of random
    type may also be a non-resolvable private address (top two bits 00)."""
    if address is None:
        return hci.Address.generate_static_address()
    if isinstance(address, hci.Address) and address.is_random:
        if address.is_static or bytes(address)[-1] >> 6 == 0:
            return hci.Address(bytes(address), hci.Address.RANDOM_DEVICE_ADDRESS)
        raise ValueError("%s is neither a random static address (top two bits 11) nor a "
                         "non-resolvable private one (00)" % address)
    address = hci.Address(address, hci.Address.RANDOM_DEVICE_ADDRESS)
    if not address.is_static:
        raise ValueError("%s is not a random static address (top two bits 11)" % address)
    return address


def bleak_backend_for(air):
    """A bleak scanner backend class bound to ``air``: a ``VirtualAir`` in this process, or the
    spec that ``VirtualAir.serve`` returned in another. Use as ``BleakScanner(..., backend=...)``.
    """
    return type("BumbleScanner", (BumbleScanner,), {"air": air})


class BumbleScanner(BaseBleakScanner):
    """bleak backend over a bumble ``Device``; subclasses from ``bleak_backend_for`` set ``air``.

    Continuous scanning, no duplicate filtering: every advertisement reaches bleak's
    detection callbacks. BlueZ-only arguments (``bluez=``) are ignored.
    """

    air = None

    def __init__(self, detection_callback, service_uuids, scanning_mode="active", **kwargs):
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode == "active"
        self._device = None
        self._transport = None

    async def start(self):
        if self._device is not None:
            return
        self.seen_devices = {}
        if isinstance(self.air, str):
            try:
                self._transport = await open_transport(self.air)
            except OSError as err:
                raise BleakError("no virtual air at %s (%s): start the simulator that serves it"
                                 % (self.air, err.strerror or err)) from err
            device = Device.with_hci("scanner", hci.Address.generate_static_address(),
                                     self._transport.source, self._transport.sink)
            await device.power_on()
        else:
            device = await self.air.open_scanner()
        device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await device.start_scanning(active=self._active, scan_interval=SCAN_WINDOW_MS,
                                    scan_window=SCAN_WINDOW_MS, filter_duplicates=False)
        self._device = device

    async def stop(self):
        device, self._device = self._device, None
        if device is None:
            return
        device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await device.stop_scanning()
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()
        else:
            self.air.close_scanner(device)

    def _on_advertisement(self, advertisement):
        if advertisement.is_scan_response:
            return
        adv = advertisement_data(advertisement.data, advertisement.rssi, platform_data=(advertisement,))
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address.to_string(False)
        device = self.create_or_update_device(address, address, adv.local_name, advertisement, adv)
        self.call_detection_callbacks(device, adv)


_UUID_LISTS = {
    AdvertisingData.Type.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    AdvertisingData.Type.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    AdvertisingData.Type.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
    AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
}
_SERVICE_DATA = {
    AdvertisingData.Type.SERVICE_DATA_16_BIT_UUID: 2,
    AdvertisingData.Type.SERVICE_DATA_32_BIT_UUID: 4,
    AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID: 16,
}


def _uuid_str(raw):
    """bleak's form of a little-endian UUID of 2, 4 or 16 bytes."""
    if len(raw) == 16:
        return str(uuid.UUID(bytes=raw[::-1]))
    value = int.from_bytes(raw, "little")
    return normalize_uuid_16(value) if len(raw) == 2 else normalize_uuid_32(value)


def advertisement_data(ad, rssi, platform_data=()):
    """bleak's ``AdvertisementData`` for bumble's parsed ``AdvertisingData``, as BlueZ gives it:
    manufacturer data keyed by company id without the id; the complete name over the short;
    TX power only from the advertised TX power level."""
    names = {}
    tx_power = None
    manufacturer, service_data, service_uuids = {}, {}, []
    for ad_type, data in ad.ad_structures:
        if ad_type == AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA and len(data) >= 2:
            manufacturer[data[0] | data[1] << 8] = bytes(data[2:])
        elif ad_type in (AdvertisingData.Type.COMPLETE_LOCAL_NAME, AdvertisingData.Type.SHORTENED_LOCAL_NAME):
            names[ad_type] = data.decode("utf-8", "replace")
        elif ad_type in _UUID_LISTS:
            size = _UUID_LISTS[ad_type]
            service_uuids += [_uuid_str(data[i:i + size]) for i in range(0, len(data) - size + 1, size)]
        elif ad_type in _SERVICE_DATA and len(data) >= _SERVICE_DATA[ad_type]:
            size = _SERVICE_DATA[ad_type]
            service_data[_uuid_str(data[:size])] = bytes(data[size:])
        elif ad_type == AdvertisingData.Type.TX_POWER_LEVEL and len(data) == 1:
            tx_power = int.from_bytes(data, "little", signed=True)
    name = names.get(AdvertisingData.Type.COMPLETE_LOCAL_NAME,
                     names.get(AdvertisingData.Type.SHORTENED_LOCAL_NAME))
    return AdvertisementData(local_name=name, manufacturer_data=manufacturer, service_data=service_data,
                             service_uuids=service_uuids, tx_power=tx_power, rssi=rssi,
                             platform_data=platform_data)


class ThreadedAir:
    """A ``VirtualAir`` on an event loop of its own thread, served over TCP, for code that is
    not asyncio (the agent's BLE intake joins it with ``bleak_backend_for(spec)``)."""

    def __init__(self, timeout=10.0):
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="virtual-air", daemon=True)
        self._thread.start()
        self.air = self.call(_new_air())
        self.spec = self.call(self.air.serve())

    def call(self, coroutine):
        """Run a coroutine on the air's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def close(self):
        self.call(self.air.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _new_air():
    return VirtualAir()

"""BLE transmitter: the agent relays a downlink frame (the center's acknowledgement) to a
wearable as a broadcast advertisement carrying the sealed frame (SPEC.md 6.1).

Why not bleak: bleak is a central (scanner / GATT client) library and has no advertising
(peripheral) role. On the Pi the agent therefore asks BlueZ itself, over D-Bus (dbus-fast,
the library bleak already uses):

1. export an object implementing ``org.bluez.LEAdvertisement1`` on the agent's own bus
   connection: ``Type`` "broadcast" (non-connectable), ``ManufacturerData`` ``{company_id: frame}``
   (the site's ``[ble] company_id``; 0xFFFF, the Bluetooth SIG's test id, by default),
   ``Includes`` empty, a ``Release()`` method;
2. call ``org.bluez.LEAdvertisingManager1.RegisterAdvertisement(path, {})`` on the adapter
   object ``/org/bluez/<adapter>``; BlueZ reads the object's properties back over D-Bus
   (``Properties.GetAll``) before it answers;
3. after the duration call ``UnregisterAdvertisement(path)`` and drop the object.

BlueZ's rules, and how this module follows them:

- Properties are parsed once, at registration; later changes are ignored (so: one object per
  advertisement, never an update in place).
- An advertisement belongs to the bus connection that registered it (owner + path). BlueZ
  drops all of them when that connection closes, so a crashed agent does not leave its
  acknowledgements on the air. ``UnregisterAdvertisement`` from another connection fails
  with ``DoesNotExist``.
- ``Release()`` is BlueZ telling us it already removed the advertisement (adapter gone,
  ``Timeout`` expired): no ``UnregisterAdvertisement`` must follow.
- A "broadcast" advertisement must not carry the LE discoverable flags, so BlueZ sends no
  Flags AD structure (the kernel adds ``02 01 04`` only on an LE-only adapter): on the air is
  the manufacturer data alone, ``1B FF FF FF <24-byte frame>`` under 0xFFFF (``on_air_data``),
  which every receiver following SPEC.md 6.1 parses (it looks for manufacturer data under its
  configured company id).
- BlueZ has a limited number of advertising instances per adapter (``SupportedInstances``;
  5 with the kernel's software rotation on a Pi's controller, shared with every other
  program). When they are all taken, ``RegisterAdvertisement`` fails with
  ``org.bluez.Error.NotPermitted`` ("Maximum advertisements reached"). Policy here: **replace
  the oldest** of this agent's own advertisements (it has been on the air longest, so the
  wearable most probably heard it already) and retry; if the agent holds none, advertise()
  raises ``AdvertiseError``.
- With several instances the kernel rotates between them (``Duration``, 2 s each by
  default), so each is on the air only part of the time.
- ``MinInterval``/``MaxInterval`` (ms) ask for a faster advertising interval than the
  kernel's default of 1.28 s; BlueZ versions that do not know them ignore them, and
  controllers without extended advertising keep the kernel's interval.

``VirtualAdvertiser`` has the same interface for the simulators: it puts the same on-air
bytes on a ``ansim_simulators.hardware.ble_radio`` virtual air, so tests and the demo hear the agent
with bleak and ``BleIntake``. ``HciAdvertiser`` does the same from an agent in a process of its
own (as systemd runs it in a scenario), through a controller of that air served as HCI over TCP
(``[ble] virtual_air_tx``), with bumble as the host stack.
"""

import asyncio
import itertools
import logging

from dbus_fast import BusType, DBusError, Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property
from bleak.exc import BleakBluetoothNotAvailableReason

from ansim_protocol.ble import COMPANY_ID, FRAME_MAX, check_company_id

from .ble_intake import _ADAPTER_HINTS, _DENIED, _OFF, _START_BLUEZ, _SYSTEM_BUS
from .intake import IntakeUnavailable

log = logging.getLogger("ansim.agent.ble_tx")

BLUEZ = "org.bluez"
MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEFAULT_INTERVAL_MS = 100
CALL_TIMEOUT_S = 10.0  # BlueZ answers RegisterAdvertisement after a round trip to the kernel

_PROPERTIES = "org.freedesktop.DBus.Properties"
_NOT_RUNNING = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")
_DENIED_ERRORS = ("org.freedesktop.DBus.Error.AccessDenied", "org.bluez.Error.NotAuthorized")
_NO_OBJECT = ("org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
              "org.freedesktop.DBus.Error.UnknownInterface")
_GONE = ("org.bluez.Error.DoesNotExist",) + _NOT_RUNNING
_FULL = "org.bluez.Error.NotPermitted"
_CHECK_BLUEZ = "check `systemctl status bluetooth`, `journalctl -u bluetooth` and `bluetoothctl show`"


class AdvertiseError(RuntimeError):
    """One advertisement could not go on the air. The message says why and what to do;
    ``dbus_error`` is BlueZ's error name (None if it did not come from D-Bus)."""

    def __init__(self, message, dbus_error=None):
        super().__init__(message)
        self.dbus_error = dbus_error


def on_air_data(frame, company_id=COMPANY_ID):
    """The legacy advertising data BlueZ sends for our broadcast advertisement of ``frame``:
    manufacturer data under ``company_id`` only (no Flags AD structure: see the module doc)."""
    frame = bytes(frame)
    _check_frame(frame)
    return bytes([len(frame) + 3, 0xFF, company_id & 0xFF, company_id >> 8]) + frame


def _check_frame(frame):
    if not frame or len(frame) > FRAME_MAX:
        raise ValueError("a frame of %d bytes does not fit a legacy advertisement (1 to %d bytes)"
                         % (len(frame), FRAME_MAX))


class Advertisement:
    """One advertisement on the air (what ``advertise()`` returns).

    ``ended`` is set once it is off the air (duration over, replaced, released by BlueZ, or
    ``stop()``); ``replaced`` tells whether a newer one took its instance.
    """

    def __init__(self, owner, frame, duration_s, path):
        self._owner = owner
        self.frame = frame
        self.duration_s = duration_s
        self.path = path
        self.ended = asyncio.Event()
        self.replaced = False
        self.released = False
        self._timer = None
        self._handle = None  # the transmitter's own state (D-Bus object, virtual advertiser)

    async def wait(self, timeout=None):
        """Wait until it is off the air."""
        await asyncio.wait_for(self.ended.wait(), timeout)

    async def cancel(self):
        """Take it off the air now."""
        await self._owner._end(self)

    def __repr__(self):
        return "Advertisement(%s, %d bytes, %ss)" % (self.path, len(self.frame), self.duration_s)


class _NoFreeInstance(Exception):
    """The radio has no free advertising instance (BlueZ's NotPermitted)."""

    def __init__(self, message, dbus_error=None):
        super().__init__(message)
        self.dbus_error = dbus_error


class _Transmitter:
    """What both transmitters share: the replace-the-oldest policy, durations and shutdown.
    Subclasses implement ``_register`` (may raise ``_NoFreeInstance``) and ``_unregister``."""

    def __init__(self, name, company_id=COMPANY_ID):
        self.name = name
        self.company_id = check_company_id(company_id)
        self._active = {}  # path -> Advertisement, oldest first
        self._serial = itertools.count(1)
        self._lock = asyncio.Lock()
        self._started = False
        self._tasks = set()  # Release handling in flight
        self.sent = 0  # advertisements that went on the air
        self.replaced = 0  # taken off early to make room for a newer one

    @property
    def active(self):
        """The advertisements on the air now, oldest first."""
        return list(self._active.values())

    async def advertise(self, frame, duration_s):
        """Put ``frame`` on the air for ``duration_s`` seconds (counted from when it is on the
        air) and return its ``Advertisement`` at once; several may run at the same time.
        Raises ``AdvertiseError`` if it cannot go on the air."""
        frame = bytes(frame)
        _check_frame(frame)
        if not duration_s > 0:
            raise ValueError("duration_s must be positive, not %r" % (duration_s,))
        if not self._started:
            raise RuntimeError("%s: call start() before advertise()" % type(self).__name__)
        ad = Advertisement(self, frame, duration_s, "%s/ad%d" % (self._path_prefix(), next(self._serial)))
        async with self._lock:
            while True:
                try:
                    await self._register(ad)
                    break
                except _NoFreeInstance as full:
                    if not self._active:
                        raise AdvertiseError(str(full), full.dbus_error) from None
                    oldest = next(iter(self._active.values()))
                    log.info("%s: no free advertising instance; replacing %r by %r", self.name, oldest, ad)
                    oldest.replaced = True
                    self.replaced += 1
                    await self._end(oldest)
            self._active[ad.path] = ad
        self.sent += 1
        ad._timer = asyncio.ensure_future(self._expire(ad))
        log.debug("%s: %r on the air", self.name, ad)
        return ad

    async def stop(self):
        """Take every advertisement off the air."""
        for ad in list(self._active.values()):
            await self._end(ad)
        self._started = False

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    async def _expire(self, ad):
        await asyncio.sleep(ad.duration_s)
        await self._end(ad)

    async def _end(self, ad, unregister=True):
        """Off the air, once; never raises (timers call it)."""
        if self._active.pop(ad.path, None) is None:
            return
        if ad._timer is not None and ad._timer is not asyncio.current_task():
            ad._timer.cancel()
        try:
            await self._unregister(ad, unregister)
        except Exception:  # noqa: BLE001 - logged; the advertisement is forgotten either way
            log.warning("%s: could not take %r off the air", self.name, ad, exc_info=True)
        ad.ended.set()

    def _released(self, ad):
        """The radio dropped ``ad`` by itself (BlueZ's Release)."""
        ad.released = True
        log.info("%s: BlueZ released %r", self.name, ad)
        task = asyncio.ensure_future(self._end(ad, unregister=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _LEAdvertisement(ServiceInterface):
    """The exported ``org.bluez.LEAdvertisement1`` object BlueZ reads at registration."""

    def __init__(self, frame, interval_ms, on_release, company_id=COMPANY_ID):
        super().__init__(ADVERTISEMENT_IFACE)
        self._frame = frame
        self._company_id = company_id
        self._interval_ms = interval_ms
        self._on_release = on_release

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> "s":  # noqa: N802 - D-Bus names
        return "broadcast"

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> "a{qv}":  # noqa: N802
        return {self._company_id: Variant("ay", self._frame)}

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> "as":  # noqa: N802
        return []

    @dbus_property(access=PropertyAccess.READ)
    def MinInterval(self) -> "u":  # noqa: N802
        return self._interval_ms

    @dbus_property(access=PropertyAccess.READ)
    def MaxInterval(self) -> "u":  # noqa: N802
        return self._interval_ms

    @dbus_method()
    def Release(self):  # noqa: N802
        self._on_release()


class BlueZAdvertiser(_Transmitter):
    """Broadcast advertisements through BlueZ's ``LEAdvertisingManager1`` (the Pi).

    ``adapter``: "hci0"... ``bus_address``: a D-Bus address ("unix:path=...") for tests; None
    is the system bus. ``interval_ms``: the advertising interval asked for (20 ms or more).
    ``company_id``: the site's BLE company id (default 0xFFFF, the test id).
    """

    component = "ble_advertiser"

    def __init__(self, adapter="hci0", bus_address=None, interval_ms=DEFAULT_INTERVAL_MS, company_id=COMPANY_ID):
        super().__init__("ble-tx " + adapter, company_id)
        if interval_ms < 20:
            raise ValueError("advertising interval %r ms below the 20 ms minimum" % interval_ms)
        self.adapter = adapter
        self.adapter_path = "/org/bluez/" + adapter
        self.bus_address = bus_address
        self.interval_ms = int(interval_ms)
        self._bus = None

    def _path_prefix(self):
        return "/org/ansim/advertiser/" + self.adapter

    async def start(self):
        """Connect and check that BlueZ can advertise on the adapter; raises
        ``IntakeUnavailable`` naming what is missing and the fix."""
        if self._started:
            return
        self._bus = await self._connect()
        self._started = True
        log.info("BLE transmitter on %s ready", self.adapter)

    async def stop(self):
        await super().stop()
        bus, self._bus = self._bus, None
        if bus is not None:
            await _close(bus)  # BlueZ would drop whatever is left anyway

    async def _connect(self):
        where = self.bus_address or _SYSTEM_BUS
        try:
            bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect()
        except PermissionError as err:
            raise _unavailable("no access to the D-Bus system bus (%s: %s): %s"
                               % (where, err.strerror or err, _DENIED)) from None
        except OSError as err:  # nothing listening there
            raise _unavailable("no BlueZ system bus (%s: %s): %s" % (where, err.strerror or err, _START_BLUEZ)) from None
        except AuthError as err:
            raise _unavailable("D-Bus refused this user (%s: %s): %s" % (where, err, _DENIED)) from None
        except InvalidAddressError as err:
            raise _unavailable("bad D-Bus address %r (%s)" % (where, err)) from None
        try:
            await self._check_adapter(bus)
        except BaseException:
            await _close(bus)
            raise
        return bus

    async def _check_adapter(self, bus):
        try:
            node = await bus.introspect(BLUEZ, self.adapter_path, timeout=CALL_TIMEOUT_S)
        except DBusError as err:
            raise _unavailable(self._problem(err, "answer")) from None
        except asyncio.TimeoutError:
            raise _unavailable("BlueZ did not answer within %gs: %s" % (CALL_TIMEOUT_S, _CHECK_BLUEZ)) from None
        interfaces = {interface.name for interface in node.interfaces}
        if MANAGER_IFACE not in interfaces:
            if ADAPTER_IFACE not in interfaces:
                raise _unavailable(self._no_adapter())
            raise _unavailable("BlueZ offers no LE advertising on %s (no %s): use a Bluetooth 4.0+ (LE) adapter; "
                               "an old BlueZ needs bluetoothd started with --experimental" % (self.adapter, MANAGER_IFACE))
        if ADAPTER_IFACE in interfaces:
            try:
                powered = await _call(bus, self.adapter_path, _PROPERTIES, "Get", "ss", [ADAPTER_IFACE, "Powered"])
            except DBusError as err:
                raise _unavailable(self._problem(err, "answer")) from None
            if not powered.body[0].value:
                raise _unavailable(_ADAPTER_HINTS[BleakBluetoothNotAvailableReason.POWERED_OFF])

    def _no_adapter(self):
        return ("adapter %r not found: fix [ble] adapter in the config (`bluetoothctl list` shows the adapters)"
                % self.adapter)

    def _problem(self, err, doing):
        """One line for a D-Bus error from BlueZ."""
        if err.type in _NOT_RUNNING:
            return "BlueZ (bluetoothd) is not running: %s" % _START_BLUEZ
        if err.type in _DENIED_ERRORS:
            return "D-Bus denied access to BlueZ (%s): %s" % (err.text, _DENIED)
        if err.type in _NO_OBJECT:
            return self._no_adapter()
        return "BlueZ did not %s on %s (%s: %s): %s" % (doing, self.adapter, err.type, err.text, _CHECK_BLUEZ)

    async def _register(self, ad):
        if self._bus is None or not self._bus.connected:
            self._active.clear()  # BlueZ dropped them with the old connection
            try:
                self._bus = await self._connect()
            except IntakeUnavailable as err:
                raise AdvertiseError(str(err)) from None
        interface = _LEAdvertisement(ad.frame, self.interval_ms, lambda: self._released(ad), self.company_id)
        self._bus.export(ad.path, interface)
        ad._handle = interface
        try:
            await _call(self._bus, self.adapter_path, MANAGER_IFACE, "RegisterAdvertisement", "oa{sv}", [ad.path, {}])
        except DBusError as err:
            self._bus.unexport(ad.path, interface)
            if err.type == _FULL:
                raise _NoFreeInstance("BlueZ has no free advertising instance on %s (%s: %s) and this agent holds "
                                      "none: other programs are advertising (`bluetoothctl advertise off`, "
                                      "`btmgmt advinfo` shows the instances)" % (self.adapter, err.type, err.text),
                                      err.type) from None
            if err.type == "org.bluez.Error.InvalidLength":
                raise AdvertiseError("BlueZ finds the advertisement too long for %s (%s)" % (self.adapter, err.text),
                                     err.type) from None
            raise AdvertiseError("Bluetooth advertising: " + self._problem(err, "accept the advertisement"),
                                 err.type) from None
        except (asyncio.TimeoutError, OSError, EOFError) as err:
            self._bus.unexport(ad.path, interface)
            raise AdvertiseError("Bluetooth advertising: BlueZ did not answer RegisterAdvertisement (%s): %s"
                                 % (type(err).__name__, _CHECK_BLUEZ)) from None

    async def _unregister(self, ad, unregister):
        bus = self._bus
        if bus is None:
            return
        try:
            if unregister and bus.connected:
                await _call(bus, self.adapter_path, MANAGER_IFACE, "UnregisterAdvertisement", "o", [ad.path])
        except DBusError as err:
            if err.type not in _GONE:
                raise
            log.debug("%s: %r was already gone (%s)", self.name, ad, err.type)
        finally:
            if ad._handle is not None and bus.connected:
                bus.unexport(ad.path, ad._handle)


async def _call(bus, path, interface, member, signature="", body=()):
    """A method call on BlueZ; returns the reply, raises DBusError for an error reply."""
    reply = await asyncio.wait_for(bus.call(Message(destination=BLUEZ, path=path, interface=interface, member=member,
                                                    signature=signature, body=list(body))), CALL_TIMEOUT_S)
    if reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name or "unknown", reply.body[0] if reply.body else "", reply=reply)
    return reply


async def _close(bus):
    """Disconnect and wait until the socket is closed."""
    bus.disconnect()
    try:
        await asyncio.wait_for(bus.wait_for_disconnect(), CALL_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a connection that died on its own ends the same way
        log.debug("D-Bus connection ended with an error", exc_info=True)


def _unavailable(what):
    return IntakeUnavailable("Bluetooth advertising: %s, %s" % (what, _OFF))


class VirtualAdvertiser(_Transmitter):
    """The same interface on a virtual radio (``ansim_simulators.hardware.ble_radio``), for tests and
    the demo: each advertisement is an ``Advertiser`` on ``air`` sending ``on_air_data(frame)``.

    ``air``: a ``VirtualAir`` on this event loop, or a ``ThreadedAir`` (its own thread).
    ``max_instances``: like BlueZ's limit (None: no limit), with the same replace-the-oldest
    policy. ``rssi``: what scanners report for it (the air's default if None). Each
    advertisement comes from a new random static address. ``company_id``: as for BlueZ.
    """

    component = "ble_advertiser"

    def __init__(self, air, rssi=None, interval_ms=DEFAULT_INTERVAL_MS, max_instances=None, company_id=COMPANY_ID):
        super().__init__("ble-tx virtual", company_id)
        self.air = air
        self.rssi = rssi
        self.interval_ms = interval_ms
        self.max_instances = max_instances

    def _path_prefix(self):
        return "/virtual"

    async def start(self):
        if not hasattr(self.air, "add_advertiser") and not hasattr(self.air, "loop"):
            raise IntakeUnavailable("Bluetooth advertising: %r is not a VirtualAir or ThreadedAir" % (self.air,))
        self._started = True

    async def _on_air(self, coroutine):
        if hasattr(self.air, "loop") and hasattr(self.air, "air"):  # ThreadedAir: run on its loop
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.air.loop))
        return await coroutine

    def _virtual_air(self):
        return self.air.air if hasattr(self.air, "loop") and hasattr(self.air, "air") else self.air

    async def _register(self, ad):
        if self.max_instances is not None and len(self._active) >= self.max_instances:
            raise _NoFreeInstance("the virtual radio has no free advertising instance (%d in use by others)"
                                  % self.max_instances, _FULL)
        kwargs = {"interval_ms": self.interval_ms}
        if self.rssi is not None:
            kwargs["rssi"] = self.rssi
        data = on_air_data(ad.frame, self.company_id)
        ad._handle = await self._on_air(self._virtual_air().add_advertiser(data, **kwargs))

    async def _unregister(self, ad, unregister):
        air = self._virtual_air()
        if hasattr(air, "remove_advertiser"):
            await self._on_air(air.remove_advertiser(ad._handle))
        else:
            await self._on_air(ad._handle.stop())


class HciAdvertiser(_Transmitter):
    """The same interface on a bumble-driven HCI controller reached through a bumble transport
    spec: the virtual air of a simulator in another process (``[ble] virtual_air_tx``, a spec
    ``VirtualAir.serve`` returned), for an agent that runs as its own process in scenarios.

    Each advertisement is an advertising set with legacy non-connectable PDUs from a new
    random static address, as ``VirtualAdvertiser`` sends them; a controller out of sets makes
    room by the same replace-the-oldest policy.
    """

    component = "ble_advertiser"

    def __init__(self, transport_spec, interval_ms=DEFAULT_INTERVAL_MS, company_id=COMPANY_ID):
        super().__init__("ble-tx hci", company_id)
        self.transport_spec = transport_spec
        self.interval_ms = interval_ms
        self._transport = None
        self._device = None

    def _path_prefix(self):
        return "/hci"

    async def start(self):
        from bumble import hci
        from bumble.device import Device
        from bumble.transport import open_transport
        try:
            self._transport = await open_transport(self.transport_spec)
        except Exception as err:  # noqa: BLE001 - any transport failure means the same to the operator
            raise IntakeUnavailable("Bluetooth advertising: cannot open the HCI transport %s (%s): check "
                                    "[ble] virtual_air_tx" % (self.transport_spec, err)) from None
        self._device = Device.with_hci("ansim-agent", hci.Address("F0:00:00:00:00:01"),
                                       self._transport.source, self._transport.sink)
        await self._device.power_on()
        self._started = True

    async def _register(self, ad):
        from bumble import hci
        from bumble.core import OutOfResourcesError
        from bumble.device import AdvertisingEventProperties, AdvertisingParameters
        params = AdvertisingParameters(
            advertising_event_properties=AdvertisingEventProperties(is_connectable=False, is_scannable=False,
                                                                    is_legacy=True),
            primary_advertising_interval_min=self.interval_ms, primary_advertising_interval_max=self.interval_ms,
            own_address_type=hci.OwnAddressType.RANDOM)
        try:
            ad._handle = await self._device.create_advertising_set(
                advertising_parameters=params, random_address=hci.Address.generate_static_address(),
                advertising_data=on_air_data(ad.frame, self.company_id))
        except OutOfResourcesError as err:
            raise _NoFreeInstance("the controller has no free advertising set (%s)" % err) from None
        except hci.HCI_Error as err:
            if err.error_code in (hci.HCI_MEMORY_CAPACITY_EXCEEDED_ERROR, hci.HCI_LIMIT_REACHED_ERROR):
                raise _NoFreeInstance("the controller has no free advertising set (%s)" % err) from None
            raise AdvertiseError("the controller refused the advertisement: %s" % err) from None

    async def _unregister(self, ad, unregister):
        await ad._handle.stop()
        await ad._handle.remove()

    async def stop(self):
        await super().stop()
        if self._transport is not None:
            await self._transport.close()
            self._transport = self._device = None

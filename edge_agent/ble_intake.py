"""BLE intake: every advertisement carrying an ansim frame becomes a ``Reception`` (SPEC.md 6.1).

An ansim frame is manufacturer data under the site's company id (``[ble] company_id``, the
one ``ansim provision`` gave the wearables; default 0xFFFF, the Bluetooth SIG's test id).
Manufacturer data under any other company is not ours: counted in ``ignored``, never decoded.

Scanning goes through bleak's public API only, so the same code runs on BlueZ (the Pi) and on
any custom bleak backend (``ansim_simulators.hardware.ble_radio`` for tests and the demo). It hands the
raw frame to the core and decodes nothing: verification, dedup and replay checks are the
core's.

Every advertisement counts, repeats included (they drive dedup and latency), but BlueZ by
default emits a D-Bus signal only when advertising data changes; active scans therefore ask
for ``DuplicateData``. BlueZ picks the scan timing itself (discovery listens continuously).
"""

import logging
import os

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.exc import (BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakDBusError,
                       BleakError)

from ansim_protocol.ble import COMPANY_ID, check_company_id

from .intake import IntakeUnavailable, Reception

log = logging.getLogger("ansim.agent.ble")

_OFF = "or disable [ble] in the config"
_SYSTEM_BUS = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "/run/dbus/system_bus_socket")
_START_BLUEZ = "install and start BlueZ (`sudo apt-get install bluez && sudo systemctl start bluetooth`)"
_DENIED = ("run the agent as a user in the bluetooth group "
           "(`sudo usermod -aG bluetooth USER`, then log in again)")
_ADAPTER_HINTS = {
    BleakBluetoothNotAvailableReason.NO_BLUETOOTH:
        "no Bluetooth adapter found: plug one in or enable the on-board one (`bluetoothctl list`)",
    BleakBluetoothNotAvailableReason.NO_BLE_CENTRAL_ROLE:
        "the Bluetooth adapter cannot scan for BLE: use a Bluetooth 4.0+ adapter",
    BleakBluetoothNotAvailableReason.POWERED_OFF:
        "the Bluetooth adapter is off: `sudo rfkill unblock bluetooth && bluetoothctl power on`",
    BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM: "D-Bus denied access to BlueZ: " + _DENIED,
}


def _unavailable(err):
    """One IntakeUnavailable naming what is missing and the fix, for whatever bleak raised."""
    if isinstance(err, PermissionError):
        what = "no access to the D-Bus system bus (%s: %s): %s" % (_SYSTEM_BUS, err.strerror or err, _DENIED)
    elif isinstance(err, OSError):  # dbus-fast found no system bus to connect to
        what = "no BlueZ system bus (%s: %s): %s" % (_SYSTEM_BUS, err.strerror or err, _START_BLUEZ)
    elif isinstance(err, BleakDBusError) and err.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown":
        what = "BlueZ (bluetoothd) is not running: %s" % _START_BLUEZ
    elif isinstance(err, BleakDBusError):
        what = "BlueZ refused to scan (%s): check `systemctl status bluetooth` and `bluetoothctl show`" % err
    elif isinstance(err, BleakBluetoothNotAvailableError):
        what = _ADAPTER_HINTS.get(err.reason, "Bluetooth not available (%s)" % err.args[0])
    elif str(err).startswith("adapter "):  # bleak: "adapter 'hci1' not found"
        what = "%s: fix [ble] adapter in the config (`bluetoothctl list` shows the adapters)" % err
    else:
        what = str(err)
    return IntakeUnavailable("Bluetooth: %s, %s" % (what, _OFF))


class BleIntake:
    """Scans continuously; each advertisement with manufacturer data under ``company_id``
    becomes ``submit(Reception(frame, "ble", receiver, rssi=...))`` on the event loop.

    ``backend``: a bleak scanner backend class (None: the platform's, BlueZ on the Pi).
    ``adapter``: BlueZ adapter name ("hci0"; None: the first powered one). ``scanning_mode``:
    "active" or "passive" (BlueZ >= 5.56 with --experimental, filtering on ``company_id``; BlueZ
    has no DuplicateData there, so it may fold repeats of unchanged data). ``company_id``: the
    site's BLE company id (0 to 0xFFFF; default 0xFFFF, the test id).
    Counters for metrics: ``adverts`` seen, ``frames`` submitted, ``ignored`` (not ansim).
    """

    component = "ble"

    def __init__(self, submit, receiver="ble0", backend=None, adapter=None, scanning_mode="active",
                 company_id=COMPANY_ID):
        self._submit = submit
        self.receiver = receiver
        self.company_id = check_company_id(company_id)
        company_le = bytes([company_id & 0xFF, company_id >> 8])  # on air, as BlueZ matches it
        self.adverts = 0
        self.frames = 0
        self.ignored = 0
        bluez = {"filters": {"DuplicateData": True},
                 "or_patterns": [OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, company_le)]}
        if adapter:
            bluez["adapter"] = adapter
        self._scanner = BleakScanner(self._on_advert, scanning_mode=scanning_mode, bluez=bluez,
                                     backend=backend)
        self._running = False

    async def start(self):
        """Start scanning; raises IntakeUnavailable if there is no usable Bluetooth."""
        try:
            await self._scanner.start()
        except (OSError, BleakError) as err:
            log.debug("BLE scanner failed to start", exc_info=True)
            raise _unavailable(err) from None
        self._running = True
        log.info("BLE intake %s scanning", self.receiver)

    async def stop(self):
        if self._running:
            self._running = False
            await self._scanner.stop()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    def _on_advert(self, device, adv):
        self.adverts += 1
        frame = adv.manufacturer_data.get(self.company_id)
        if frame is None:
            self.ignored += 1
            return
        self.frames += 1
        self._submit(Reception(frame, "ble", self.receiver, rssi=adv.rssi))

"""A virtual board's BLE radio on a virtual air: what the firmware advertises goes on the air
(``ble_radio``, bumble), where the agent hears it through bleak; what is on the air reaches the
firmware's ``gap_scan`` as ``_IRQ_SCAN_RESULT``.

Why: a wearable's firmware uses only MicroPython's ``bluetooth`` API (board/_vb_bluetooth.py),
which reports to the host over the board's control socket. This bridge turns those reports
into a bumble radio of its own on the air, as the board's ESP32 would be:

- ``{"ev": "adv"}`` starts, updates or stops an advertising set from the board's address
  (public, random static or non-resolvable private), at the board's interval; a new address
  makes a new set (a board changes it only while not advertising);
- ``{"ev": "scan", "on": true}`` starts forwarding every advertisement the radio hears (its
  own excepted: a controller does not hear itself) to the board as ``{"cmd": "scan_result"}``,
  with the RSSI the air gives its advertiser; ``"on": false`` stops it;
- light sleep (``{"ev": "sleep"}`` .. ``{"ev": "wake"}``) turns the radio off meanwhile;
- a VM that exits or reboots (``vm_exit``, ``hello``) leaves the air.

It reacts to the board's events as they are read (``Control.listeners``), without polling, so
what the firmware advertises is on the air within a few milliseconds. Commands to the board go
through a thread of their own, so that a board that stops reading (main.py ended, the REPL
waits on the console) never blocks the air's event loop; at most ``QUEUE_MAX`` wait, the rest
are dropped (counted in ``dropped``), as a controller's buffer overflows.

Usage: ``BoardRadio(board, air, rssi=-60)`` with a ``ThreadedAir`` and ``start()``/``stop()``
(or ``with``), or with a ``VirtualAir`` on the running loop and ``await astart()``/``astop()``
(or ``async with``).
"""

from __future__ import annotations

import asyncio
import binascii
import queue
import threading

from bumble import hci
from bumble.device import Device

from .ble_radio import DEFAULT_RSSI, SCAN_WINDOW_MS

QUEUE_MAX = 1000
ADV_NONCONN_IND = 3  # the air's advertisers are all non-connectable
_EVENTS = ("adv", "scan", "sleep", "wake", "hello", "vm_exit")


def _address(hex_be: str, addr_type: int) -> hci.Address:
    """The bumble address of a board's ``config('mac')`` bytes (most significant first)."""
    raw = binascii.unhexlify(hex_be)[::-1]
    return hci.Address(raw, hci.Address.PUBLIC_DEVICE_ADDRESS if addr_type == 0 else hci.Address.RANDOM_DEVICE_ADDRESS)


class BoardRadio:
    """The BLE radio of ``board`` (a started ``VirtualBoard``) on ``air`` (a ``ThreadedAir``, or
    a ``VirtualAir`` on the loop that calls ``astart``).

    ``rssi``: what receivers on the air report for the board's advertisements (settable at any
    time; the air's RSSI model is one value per advertiser, whoever listens). ``address``: the
    board's address on the air as bleak shows it, None while it does not advertise.
    ``forwarded``/``dropped``: scan results sent to the board / lost because it did not read.
    ``on_advertiser(advertiser)``: called on the air's loop with each new ``ble_radio.Advertiser``
    of the board (a new address makes one) before it first sends, e.g. to tell the air's
    ``rssi_model`` where the board is.
    """

    def __init__(self, board, air, rssi: int = DEFAULT_RSSI, on_advertiser=None) -> None:
        self.board = board
        self.on_advertiser = on_advertiser
        self.control = board.control
        self._threaded = hasattr(air, "loop") and hasattr(air, "air")
        self._threaded_air = air if self._threaded else None
        self._air = air.air if self._threaded else air
        self._rssi = rssi
        self.forwarded = 0
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._device = None  # the board's bumble radio
        self._advertiser = None  # ble_radio.Advertiser of the board's current address
        self._adv = None  # the board's last "adv" event while it advertises
        self._scan = None  # the board's last "scan" start while it scans
        self._asleep = False
        self._seen = set()  # ids of events replayed at start (the listener may bring them again)
        self._outbox: queue.Queue = queue.Queue(QUEUE_MAX)
        self._sender: threading.Thread | None = None

    # -- public ---------------------------------------------------------------------------
    @property
    def rssi(self) -> int:
        return self._rssi

    @rssi.setter
    def rssi(self, value: int) -> None:
        self._rssi = value
        advertiser = self._advertiser
        if advertiser is not None:
            advertiser.rssi = value  # read by the air for every report

    @property
    def address(self) -> str | None:
        advertiser = self._advertiser
        return advertiser.address if advertiser is not None and advertiser.advertising else None

    @property
    def advertising(self) -> bool:
        return self.address is not None

    @property
    def scanning(self) -> bool:
        return self._scan is not None and not self._asleep

    def start(self) -> BoardRadio:
        """Start on a ``ThreadedAir`` (from any thread but its own)."""
        if not self._threaded:
            raise TypeError("start() needs a ThreadedAir; with a VirtualAir use `await astart()`")
        self._threaded_air.call(self.astart())
        return self

    def stop(self) -> None:
        if self._threaded and self._worker is not None:
            self._threaded_air.call(self.astop())

    def __enter__(self) -> BoardRadio:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def __aenter__(self) -> BoardRadio:
        return await self.astart()

    async def __aexit__(self, *exc_info) -> None:
        await self.astop()

    async def astart(self) -> BoardRadio:
        """Put the board's radio on the air (run on the air's loop) and catch up with what the
        board is doing already (events since its last boot)."""
        if self._worker is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        uid = binascii.unhexlify(self.board.uid)  # the board's public BLE address, as board.py sets it
        public = uid[:5] + bytes([(uid[5] + 2) & 0xFF])
        self._device = await self._air.open_scanner(public_address=_address(public.hex(), 0))
        self._device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self._sender = threading.Thread(target=self._send_loop, name="board-radio-send", daemon=True)
        self._sender.start()
        with self.control._cond:  # no event slips between the snapshot and the listener
            backlog = self.control._events
            first = max((i for i, e in enumerate(backlog) if e.get("ev") == "hello"), default=0)
            replay = [e for e in backlog[first:] if e.get("ev") in _EVENTS]
            self._seen = {id(e) for e in replay}
            self.control.listeners.append(self._listen)
        for event in replay:
            self._events.put_nowait(event)
        self._worker = asyncio.create_task(self._work())
        return self

    async def astop(self) -> None:
        """Take the board's radio off the air."""
        if self._worker is None:
            return
        if self._listen in self.control.listeners:
            self.control.listeners.remove(self._listen)
        # not cancel(): bumble swallows a CancelledError in the middle of an HCI command, and
        # the worker would go on to wait for its next event forever
        self._events.put_nowait(None)
        await self._worker
        self._worker = None
        if self._advertiser is not None:
            await self._air.remove_advertiser(self._advertiser)
            self._advertiser = None
        self._device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        if self._scan is not None or self._device.is_scanning:
            await self._device.stop_scanning()
        self._air.close_scanner(self._device)
        self._device = None
        self._outbox.put(None)
        self._sender.join(5)

    # -- board events ---------------------------------------------------------------------
    def _listen(self, event: dict) -> None:
        """On the control socket's reader thread: hand the event to the air's loop."""
        if event.get("ev") not in _EVENTS:
            return
        if self._seen and id(event) in self._seen:
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the air is gone
            pass

    async def _work(self) -> None:
        while True:
            event = await self._events.get()
            if event is None:
                return
            self._seen.discard(id(event))
            await self._handle(event)

    async def _handle(self, event: dict) -> None:
        kind = event["ev"]
        if kind in ("hello", "vm_exit"):  # a new VM starts with its radio off
            self._adv = self._scan = None
            self._asleep = False
            await self._off_air()
        elif kind == "adv":
            if event.get("data") is None:
                self._adv = None
                await self._off_air()
            else:
                self._adv = event
                await self._on_air()
        elif kind == "scan":
            self._scan = event if event.get("on") else None
            await self._listen_on_air()
        elif kind == "sleep":
            self._asleep = True
            await self._off_air()
        elif kind == "wake":
            self._asleep = False
            await self._on_air()

    async def _on_air(self) -> None:
        """Advertise what the board's last adv event says, unless it sleeps."""
        adv = self._adv
        if adv is None or self._asleep:
            return
        address = _address(adv["addr"], adv["addr_type"])
        data = binascii.unhexlify(adv["data"])
        interval_ms = adv["interval_us"] / 1000
        advertiser = self._advertiser
        if advertiser is not None and (bytes(advertiser._address) != bytes(address)
                                       or advertiser.interval_ms != interval_ms):
            await self._air.remove_advertiser(advertiser)
            self._advertiser = advertiser = None
        if advertiser is None:
            self._advertiser = advertiser = await self._air.add_advertiser(
                data, address=address, interval_ms=interval_ms, rssi=self._rssi, device=self._device, start=False)
            if self.on_advertiser is not None:
                self.on_advertiser(advertiser)
        elif advertiser.data != data:
            await advertiser.update(data)
        await advertiser.start()

    async def _off_air(self) -> None:
        if self._advertiser is not None:
            await self._advertiser.stop()

    async def _listen_on_air(self) -> None:
        if self._scan is not None and not self._device.is_scanning:
            await self._device.start_scanning(active=bool(self._scan.get("active")), scan_interval=SCAN_WINDOW_MS,
                                              scan_window=SCAN_WINDOW_MS, filter_duplicates=False)
        elif self._scan is None and self._device.is_scanning:
            await self._device.stop_scanning()

    # -- the air --------------------------------------------------------------------------
    def _on_advertisement(self, advertisement) -> None:
        if self._scan is None or self._asleep or advertisement.is_scan_response:
            return
        address = advertisement.address
        own = self._advertiser
        if own is not None and bytes(own._address) == bytes(address):
            return
        cmd = {"cmd": "scan_result", "addr_type": 1 if address.is_random else 0,
               "addr": bytes(address)[::-1].hex(), "adv_type": ADV_NONCONN_IND,
               "rssi": advertisement.rssi, "data": bytes(advertisement.data_bytes).hex()}
        try:
            self._outbox.put_nowait(cmd)
        except queue.Full:
            self.dropped += 1

    def _send_loop(self) -> None:
        while True:
            cmd = self._outbox.get()
            if cmd is None:
                return
            if self.control.send(cmd):
                self.forwarded += 1
            else:
                self.dropped += 1

"""The wearable's radio (SPEC.md 3.2 and 6.1): sealed frames out as non-connectable BLE
advertisements, sealed downlink frames (the center's acks, ``time``) in by scanning.

Privacy: the advertising address is a non-resolvable private address (NRPA) that is replaced
whenever the rotating id changes epoch (``config(addr_mode=3)`` makes a fresh one on NimBLE),
so the address never links two rotating ids. Within an epoch address and rid stay together.

Adverts go out, and are heard, under the site's BLE company id (``company_id`` in the config,
written by ``ansim provision``; default 0xFFFF, the Bluetooth SIG's test id).

The scan handler runs as a soft IRQ for every advertisement nearby, so it only keeps frames
that could be ours (sealed downlink under one of our three current rids), and at most a few.
"""

import bluetooth
from ansim_protocol import ble
from ansim_protocol.crypto import rotating_id
from ansim_protocol.errors import FrameError

_IRQ_SCAN_RESULT, _IRQ_SCAN_DONE = 5, 6
ADDR_NRPA = 3
SEALED_DOWN = 0x13  # version 1, sealed downlink header byte
SCAN_US = 30000  # interval = window: listen all the time while an answer is awaited
INBOX_MAX = 4


class Beacon:
    def __init__(self, keys, company_id=ble.COMPANY_ID):
        self.keys = keys
        self.company_id = ble.check_company_id(company_id)
        self.ble = bluetooth.BLE()
        self.ble.active(True)
        self.ble.irq(self._irq)
        self.epoch = None  # the epoch whose address is in use
        self.advertising = False
        self.scanning = False
        self._rids = ()
        self._last = None  # the last frame kept: the agent repeats the same advert many times
        self.inbox = []  # sealed downlink frames heard, for the main loop to verify

    def advertise(self, frame, epoch, interval_ms):
        """Advertise ``frame`` (sealed under ``epoch``) from the address of that epoch."""
        if epoch != self.epoch:
            # a controller refuses a new random address while it advertises or scans
            scanning = self.scanning
            self.stop()
            self._scan(False)
            self.ble.config(addr_mode=ADDR_NRPA)
            self.epoch = epoch
            self._scan(scanning)
        self.ble.gap_advertise(interval_ms * 1000, ble.advertisement(frame, self.company_id),
                              connectable=False)
        self.advertising = True

    def stop(self):
        if self.advertising:
            self.ble.gap_advertise(None)
            self.advertising = False

    def listen(self, epoch):
        """Scan for frames sealed to us under ``epoch`` or its neighbours (clock skew)."""
        self._rids = tuple(rotating_id(self.keys, e) for e in (epoch - 1, epoch, epoch + 1))
        self._scan(True)

    def deafen(self):
        self._scan(False)
        self.inbox = []

    def _scan(self, on):
        if on and not self.scanning:
            self.ble.gap_scan(0, SCAN_US, SCAN_US, False)
        elif not on and self.scanning:
            self.ble.gap_scan(None)
        self.scanning = on

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            adv = data[4]
            if len(adv) < 28:  # 24-byte frame + 4 bytes of manufacturer data header
                return
            try:
                frame = ble.frame_from_advertisement(bytes(adv), self.company_id)
            except FrameError:
                return
            if len(frame) != 24 or frame[0] != SEALED_DOWN or frame[1:6] not in self._rids:
                return
            if frame != self._last and len(self.inbox) < INBOX_MAX:
                self._last = frame
                self.inbox.append(frame)
        elif event == _IRQ_SCAN_DONE:
            self.scanning = False

"""Resolves a sealed frame's rotating id to the wearable that sent it (SPEC.md 3.2).

A hash table holds, for every wearable, the rids of the epochs a frame made *now* can carry:
``E-1 .. E+1`` around the agent's epoch ``E``, always, and the same shifted by the device's
clock offset ``d``. ``d`` is learnt only from frames found in these windows, so a frame held
back and replayed later matches nothing and cannot teach an offset that would hide the
genuine frames. A wearable whose clock is not set (its RTC lost power) uses clockless epochs
``CLOCKLESS + n`` instead; the table holds the next few ``n`` after the highest heard. A
lookup is one dictionary access whatever the number of devices; tables are rebuilt once per
epoch.
"""

from ansim_protocol.crypto import CLOCKLESS, epoch_of, rotating_id

CLOCKLESS_AHEAD = 4  # clockless starts a wearable may make unheard before the agent hears one


class _Wearable:
    def __init__(self, device_id, keys, last_epoch, offset, clockless):
        self.device_id = device_id
        self.keys = keys
        self.last_epoch = last_epoch  # of the last frame resolved, clockless or not
        self.offset = offset
        self.clockless = clockless  # the highest clockless start n heard
        self.rids = ()
        self.clockless_rids = (None, [])  # (clockless, [(rid, epoch)]): they do not move with time


class RotatingIdResolver:
    def __init__(self):
        self._devices = {}
        self._table = {}  # rid -> [(device_id, epoch)]
        self._epoch = None

    def __len__(self):
        return len(self._devices)

    def add(self, device_id, keys, now, last_epoch=None, offset=0, clockless=0):
        """Register a wearable (``keys``: its DeviceKeys); the rest as ``state`` gave it."""
        self.remove(device_id)
        device = _Wearable(device_id, keys, last_epoch, offset, clockless)
        self._devices[device_id] = device
        self._epoch = epoch_of(now)
        self._index(device)

    def remove(self, device_id):
        device = self._devices.pop(device_id, None)
        if device is not None:
            self._unindex(device)

    def tick(self, now):
        """Call at least once per epoch: moves every window when the agent's epoch changes."""
        epoch = epoch_of(now)
        if epoch != self._epoch:
            self._epoch = epoch
            for device in self._devices.values():
                self._unindex(device)
                self._index(device)

    def candidates(self, rid):
        """``[(device_id, keys, epoch)]`` that may own ``rid``: usually one, empty if none."""
        return [(device_id, self._devices[device_id].keys, epoch)
                for device_id, epoch in self._table.get(bytes(rid), ())]

    def confirm(self, device_id, epoch):
        """A frame under ``epoch`` (one of ``candidates``) was verified: learn from it."""
        device = self._devices[device_id]
        if epoch >= CLOCKLESS:
            device.clockless = max(device.clockless, epoch - CLOCKLESS)
        else:
            device.offset = epoch - self._epoch
        device.last_epoch = epoch
        self._unindex(device)
        self._index(device)

    def epoch_now(self, device_id):
        """The epoch the wearable is using now, for frames to it: its clockless epoch if its
        last frame had one, else the agent's shifted by the device's offset."""
        device = self._devices[device_id]
        if device.last_epoch is not None and device.last_epoch >= CLOCKLESS:
            return device.last_epoch
        return self._epoch + device.offset

    def state(self, device_id):
        """``(last_epoch, offset, clockless)`` to persist, so that a restarted agent resolves at once."""
        device = self._devices[device_id]
        return device.last_epoch, device.offset, device.clockless

    def _rids(self, device):
        """``[(rid, epoch)]`` of the epochs a frame of ``device`` made now can carry."""
        epochs = set()
        for centre in (self._epoch, self._epoch + device.offset):
            epochs.update(e for e in (centre - 1, centre, centre + 1) if 0 <= e < CLOCKLESS)
        if device.clockless_rids[0] != device.clockless:
            device.clockless_rids = (device.clockless, [
                (rotating_id(device.keys, CLOCKLESS + n), CLOCKLESS + n)
                for n in range(device.clockless, min(device.clockless + CLOCKLESS_AHEAD + 1, CLOCKLESS))])
        return [(rotating_id(device.keys, e), e) for e in sorted(epochs)] + device.clockless_rids[1]

    def _index(self, device):
        rids = []
        for rid, epoch in self._rids(device):
            self._table.setdefault(rid, []).append((device.device_id, epoch))
            rids.append(rid)
        device.rids = tuple(rids)

    def _unindex(self, device):
        for rid in device.rids:
            owners = [o for o in self._table.get(rid, ()) if o[0] != device.device_id]
            if owners:
                self._table[rid] = owners
            else:
                self._table.pop(rid, None)
        device.rids = ()

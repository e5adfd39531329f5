"""Resolves a sealed frame's rotating id to the wearable that sent it (SPEC.md 3.2).

A hash table holds, for every wearable, the rids of the epochs it can be in right now:
``E+d-1 .. E+d+1`` around the agent's epoch ``E`` shifted by the device's learnt clock
offset ``d``, plus ``last+1`` and ``last+2`` after the last epoch heard (a device whose clock
was reset resumes from its persisted last epoch). A lookup is one dictionary access whatever
the number of devices; tables are rebuilt once per epoch.
"""

from ansim_protocol.crypto import epoch_of, rotating_id


class _Wearable:
    def __init__(self, device_id, keys, last_epoch, offset):
        self.device_id = device_id
        self.keys = keys
        self.last_epoch = last_epoch
        self.offset = offset
        self.rids = ()


class RotatingIdResolver:
    def __init__(self):
        self._devices = {}
        self._table = {}  # rid -> [(device_id, epoch)]
        self._epoch = None

    def __len__(self):
        return len(self._devices)

    def add(self, device_id, keys, now, last_epoch=None, offset=0):
        """Register a wearable (``keys``: its DeviceKeys); ``last_epoch``/``offset`` from the store."""
        self.remove(device_id)
        device = _Wearable(device_id, keys, last_epoch, offset)
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
        """A frame under ``epoch`` was verified: learn the device's clock offset and last epoch."""
        device = self._devices[device_id]
        if device.last_epoch is not None and epoch <= device.last_epoch and device.offset == epoch - self._epoch:
            return
        device.offset = epoch - self._epoch
        device.last_epoch = epoch if device.last_epoch is None else max(epoch, device.last_epoch)
        self._unindex(device)
        self._index(device)

    def state(self, device_id):
        """``(last_epoch, offset)`` to persist, so that a restarted agent resolves at once."""
        device = self._devices[device_id]
        return device.last_epoch, device.offset

    def _epochs(self, device):
        centre = self._epoch + device.offset
        epochs = {centre - 1, centre, centre + 1}
        if device.last_epoch is not None:
            epochs.update((device.last_epoch + 1, device.last_epoch + 2))
        return sorted(e for e in epochs if 0 <= e <= 0xFFFFFFFF)

    def _index(self, device):
        rids = []
        for epoch in self._epochs(device):
            rid = rotating_id(device.keys, epoch)
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

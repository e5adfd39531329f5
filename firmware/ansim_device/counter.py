"""Frame counters that survive power loss without wearing out the flash (SPEC.md section 5).

MicroPython has no database, so this is written here. The counter is reserved in blocks:
before the first value of a block is used, the end of the block is written to flash. After a
reboot counting resumes at the last written end, so a value is never used twice, whatever the
moment power was lost, at the price of skipping at most one block per reboot. Writes go to two
slots in turn, each with a checksum: a write torn by power loss leaves the other slot, whose
reservation was never exceeded.
"""

import binascii
import os

from ansim_protocol import frames
from ansim_protocol.errors import FrameError

COUNTER_MAX = (1 << 28) - 1


class CounterError(Exception):
    pass


def _encode(limit):
    text = "%d" % limit
    return "%s %08x\n" % (text, binascii.crc32(text.encode()) & 0xFFFFFFFF)


def _decode(line):
    parts = line.split()
    if len(parts) != 2 or ("%08x" % (binascii.crc32(parts[0].encode()) & 0xFFFFFFFF)) != parts[1]:
        return None
    try:
        return int(parts[0])
    except ValueError:
        return None


def _make_parent(path):
    parent = path[:path.rfind("/")]
    if parent:
        try:
            os.mkdir(parent)
        except OSError:
            pass  # exists


class PersistentCounter:
    """``next()`` gives 1, 2, 3, ... across reboots, never repeating a value."""

    def __init__(self, path, block=64):
        self.block = block
        _make_parent(path)
        self._slots = (path + ".a", path + ".b")
        found = []
        for i in range(2):
            limit = self._read(self._slots[i])
            if limit is not None:
                found.append((limit, i))
        if found:
            found.sort()
            self._limit, self._slot = found[-1]
        else:
            self._limit, self._slot = 1, 1
        self._next = self._limit  # values below the stored limit may have been used

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                return _decode(f.read())
        except OSError:
            return None

    def next(self):
        if self._next >= self._limit:
            self._reserve(self._next + self.block)
        value = self._next
        self._next += 1
        return value

    def resume(self, value):
        """Go on at ``value`` (kept in RTC memory across a deep sleep) rather than after the
        reservation, if the reservation covers it (limit - block < value <= limit) and nothing
        was used since the start: a wake then neither skips a block nor writes the flash.
        False, and nothing changes, otherwise."""
        if self._next == self._limit and self._limit - self.block < value <= self._limit:
            self._next = value
            return True
        return False

    def peek(self):
        """The value ``next()`` will return."""
        return self._next

    def skip_past(self, value):
        """Never return ``value`` or anything below it; persisted before returning."""
        if value >= self._next:
            if value >= self._limit - 1:
                self._reserve(value + self.block)
            self._next = value + 1

    def _reserve(self, limit):
        if limit > COUNTER_MAX:
            raise CounterError("counter exhausted: re-provision the device with a new key")
        slot = 1 - self._slot
        with open(self._slots[slot], "w") as f:
            f.write(_encode(limit))
        if hasattr(os, "sync"):
            os.sync()
        self._limit, self._slot = limit, slot


class ReplayGuard:
    """The last counter accepted from the agent (commands, acks), persisted on every accept:
    commands are rare, and a replayed command must never be obeyed after a reboot.

    ``late``: also accept, once, a counter up to 63 below the last that was not accepted yet
    (the replay window of SPEC.md 5, ``frames.accept_counter``): a wearable hears the agent's
    ``time`` and ``center_ack``, sent together, in either order (SPEC.md 3.2). Which of those
    were accepted is kept in RAM only, so after a reboot nothing below the last is new."""

    def __init__(self, path, late=False):
        self._counter = PersistentCounter(path, block=1)
        self.last = self._counter.peek() - 1
        self._late = late
        self._seen = (1 << frames.REPLAY_WINDOW) - 1  # after a boot: the whole window counts as seen

    def accept(self, counter):
        """True and remembered if ``counter`` is new; False for a replay."""
        if not self._late:
            if counter <= self.last:
                return False
        else:
            try:
                highest, self._seen = frames.accept_counter(counter, self.last if self.last > 0 else None,
                                                            self._seen)
            except FrameError:
                return False
            if highest != counter:
                return True  # a late one: accepted, nothing new to persist
        self._counter.skip_past(counter)
        self.last = counter
        return True

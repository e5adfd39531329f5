"""The heap half of ``ansim bench firmware`` (bench_firmware): per role and for an empty board
(main.py an idle loop), how much heap the firmware needs, bounded for a 32-bit ESP32. board.py,
the _vb_* fakes and the REPL live in the same heap as the firmware; the empty board is the
baseline. The VM is the 64-bit unix port (a word is 8 bytes); the targets are for a 32-bit ESP32.

- MICROPY_MEM_STATS is built in (``micropython.mem_peak()``), but it counts allocations
  minus explicit frees: memory the GC reclaims is never subtracted, so its "peak" grows
  with garbage and is no high-water mark. Not used.
- live: a boot.py adds a tick to _vb_ctl that runs ``gc.collect()`` and reads
  ``gc.mem_alloc()`` at every wait (every sleep and asyncio poll) while the role runs its
  scenario: boot, online, the latency cycle once, a heartbeat. Live data only, but peaks
  between two waits (modules being compiled, a frame being built) are missed.
- smallest: the smallest ``-X heapsize`` at which the same scenario completes, without
  the probe: bisection in ``--heap-resolution`` KB steps upward from 95 % of the live peak
  (no heap holds less than what is live in it), the result run once more to confirm
  ("flaky" if that failed and a step more was needed); a MemoryError printed by the
  firmware, even one it survives, is a failure. It includes every transient,
  fragmentation and the GC's tables (~1.5 %), and the board's own needs (it reads host
  commands 512 bytes at a time: with 4 KB reads, that block was what a fragmented heap
  lacked first, and the bound was tens of KB looser), so it is an upper bound.
- the firmware's share, 64-bit: LOW = its live peak minus the empty board's live peak;
  HIGH = its smallest heap minus what the board always holds (the empty board's lowest
  live reading, minus the probe's own bytes): at every moment board + firmware fitted in
  that heap, and the board never held less. The empty board's own smallest heap is
  printed, not subtracted: it is the board's boot, a transient that is over before the
  firmware starts (smaller since the board runs precompiled: 75 -> 50 KB on 32-bit). LOW
  also carries the fakes' state for the pins and the radio the firmware set up (0.7 KB for
  the wearable's), so verdicts take ``FAKES_KB`` off it.
- 32-bit: an object takes at most as many bytes on a 32-bit port (GC blocks are 4 words:
  32 B here, 16 B there) and at least half (only words shrink; strings and bytecode do
  not). So an ESP32 needs between (LOW - FAKES_KB) / 2 and HIGH: a target is "met" if
  HIGH is within it, "MISSED" if (LOW - FAKES_KB) / 2 is over it, else "unproven". The
  estimate (LOW - FAKES_KB) / 2 .. HIGH / 2 uses MicroPython's own factor (the unix
  port's ``-X heapsize=<n>w`` doubles a heap on 64-bit); an estimate, not evidence.
- a 32-bit VM: ``make vm32`` (tools/build_vm32.sh) builds the unix port with gcc -m32 from
  Debian's micropython source; ``ANSIM_MICROPYTHON=<it>`` makes the virtual board run it,
  and the heap is then read in the ESP32's word size (the header says "32-bit"): the
  bounds are then LOW - FAKES_KB .. HIGH themselves, no halving.
- what the firmware keeps: one more board imports the role's modules one by one and builds
  the role's object, with ``gc.mem_alloc()`` after ``gc.collect()`` each time. A module's
  figure also carries the qstr pool growth it happened to trigger (a few KB either way).
"""

import json
import time

from ansim_simulators.hardware.virtual_board import BoardError
from ansim_tools.firmware_rig import (LATENCY_HEAP, Failing, ScenarioFailed, check_alive, expect, main_script,
                                      printed, start_board)

FAKES_KB = 1.0  # the _vb_* fakes' own state for a firmware's pins and radio (measured: 0.7 KB)

EMPTY_MAIN = """
import time
print("idle")
while True:
    time.sleep_ms(100)
"""

# boot.py of the heap runs: the live heap after a collection at every wait point.
HEAP_PROBE = """
import gc
import _vb_ctl
gc.collect()
_hwm = [0, 0, 1 << 30, gc.mem_alloc()]  # peak, samples, lowest, (then) the probe's own size

def _probe():
    gc.collect()
    a = gc.mem_alloc()
    if a > _hwm[0]:
        _hwm[0] = a
    if a < _hwm[2]:
        _hwm[2] = a
    _hwm[1] += 1

def _report(msg):
    gc.collect()
    _vb_ctl.send({"ev": "heap", "peak": _hwm[0], "lowest": _hwm[2], "samples": _hwm[1], "probe": _hwm[3],
                  "now": gc.mem_alloc()})

_vb_ctl.ticks.append(_probe)
_vb_ctl.handlers["heap"] = _report
gc.collect()
_hwm[3] = gc.mem_alloc() - _hwm[3]
"""

# main.py of the breakdown run: what each module keeps after import, then the role's object.
BREAKDOWN_MAIN = """
import gc, json, time
gc.collect()
out = []
base = gc.mem_alloc()
for name in MODULES:
    __import__(name)
    gc.collect()
    a = gc.mem_alloc()
    out.append((name, a - base))
    base = a
from ansim_device import config as config_module
obj = getattr(__import__(ROLE), CLASS)(config_module.load())
gc.collect()
out.append((ROLE + "." + CLASS + "(config)", gc.mem_alloc() - base))
print("BREAKDOWN " + json.dumps(out))
while True:
    time.sleep_ms(100)
"""


class Scenario:
    """Boot, come online, one latency cycle, one heartbeat: what a heap must be big enough for.
    ``role`` None is the empty board (main.py an idle loop)."""

    def __init__(self, role, rig, tmp):
        self.role, self.rig, self.tmp = role, rig, tmp
        self.count = 0

    def flash(self, directory, boot=None):
        if self.role is None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "main.py").write_text(EMPTY_MAIN)
            if boot is not None:
                (directory / "boot.py").write_text(boot)
        else:
            self.role.flash(directory, self.rig.port, heartbeat_s=1, boot=boot)

    def run(self, heap_kb, probe=False):
        """None if the scenario completed in ``heap_kb`` (the probe's reading with ``probe``);
        else ScenarioFailed/BoardError is raised."""
        self.count += 1
        name = "%s-%d" % (self.role.name if self.role else "empty", self.count)
        flash_dir = self.tmp / (name + "-flash")
        self.flash(flash_dir, HEAP_PROBE if probe else None)
        since = self.rig.mark()
        board = start_board(flash_dir, self.tmp / (name + "-vm"), "%dk" % heap_kb, start_timeout=5.0)
        try:
            with Failing(board, "%s in a %d KB heap" % (name, heap_kb)):
                if self.role is None:
                    printed(board, "idle", 0)
                    time.sleep(1.0)  # as long as a role's heartbeat period: the board idles
                else:
                    self.role.ready(self.rig, board, since)
                    self.role.measure(self.rig, board)
                    self.role.heartbeat(self.rig, board)
                if probe:
                    mark = board.control.mark()
                    board.control.send({"cmd": "heap"})
                    return expect(board, mark, ev="heap")
                check_alive(board)
                return None
        finally:
            board.stop()

    def works(self, heap_kb):
        try:
            self.run(heap_kb)
            return True
        except (ScenarioFailed, BoardError):
            return False


def smallest_heap(scenario, lo_kb, hi_kb, resolution):
    """Bisection between ``lo_kb`` (assumed too small) and ``hi_kb`` (known to work), then the
    result run once more; a failure there moves it up one step (at most three times)."""
    runs = 0
    while hi_kb - lo_kb > resolution:
        mid = (lo_kb + hi_kb) // 2
        runs += 1
        if scenario.works(mid):
            hi_kb = mid
        else:
            lo_kb = mid
    confirmed = False
    for _ in range(3):
        runs += 1
        if scenario.works(hi_kb):
            confirmed = True
            break
        hi_kb += resolution
    return {"kb": hi_kb, "confirmed": confirmed, "runs": runs}


def heap_for(role, rig, tmp, resolution):
    """The probe's readings (live heap at wait points) and the smallest working heap, in KB
    (64-bit, the whole VM heap: board and firmware)."""
    scenario = Scenario(role, rig, tmp)
    if role is not None:
        for topic in role.subscriptions():
            rig.subscribe(topic)
    probe = scenario.run(int(LATENCY_HEAP[:-1]), probe=True)
    live_kb = probe["peak"] / 1024
    search = smallest_heap(scenario, max(1, int(live_kb * 0.95)), int(LATENCY_HEAP[:-1]), resolution)
    return {"live_peak_kb": live_kb, "live_lowest_kb": probe["lowest"] / 1024, "probe_kb": probe["probe"] / 1024,
            "probe_samples": probe["samples"], "smallest_heap_kb": search["kb"], "confirmed": search["confirmed"],
            "search_runs": search["runs"]}


def firmware_share(h, empty):
    """The firmware's part of the heap, 64-bit KB: (low, high).

    low: its live peak at wait points minus the empty board's (transients between waits
    missed). high: the smallest heap it ran in minus what the board always holds (the empty
    board's lowest live reading without the probe): at any moment live(board) + live(firmware)
    fitted in that heap, and live(board) never went below that."""
    return (h["live_peak_kb"] - empty["live_peak_kb"],
            h["smallest_heap_kb"] - (empty["live_lowest_kb"] - empty["probe_kb"]))


def breakdown(role, rig, tmp):
    """[(what, bytes kept)] for the role's modules imported one by one, then its object."""
    directory = tmp / "breakdown-flash"
    role.flash(directory, rig.port, main=main_script(BREAKDOWN_MAIN, MODULES=list(role.modules), ROLE=role.name,
                                                   CLASS=role.cls))
    board = start_board(directory, tmp / "breakdown-vm", LATENCY_HEAP)
    try:
        with Failing(board, "%s breakdown" % role.name):
            e = printed(board, "BREAKDOWN ", 0)
    finally:
        board.stop()
    return [tuple(x) for x in json.loads(e["text"].split("BREAKDOWN ", 1)[1])]


def range_32bit(low_kb, high_kb, bits):
    """What an ESP32 needs, bounded from the VM's figures: on a 64-bit VM between half and all
    of them, on a 32-bit VM the figures themselves (module docstring)."""
    return [(low_kb - FAKES_KB) / (2 if bits == 64 else 1), high_kb]


def verdict(low_kb, high_kb, target_kb, bits=64):
    lowest, highest = range_32bit(low_kb, high_kb, bits)
    if highest <= target_kb:
        return "met"
    if lowest > target_kb:
        return "MISSED"
    return "unproven"

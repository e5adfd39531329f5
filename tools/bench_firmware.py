"""The benchmark behind ``ansim bench firmware``: each role's firmware on the virtual board
(the real MicroPython unix VM, simulators/hardware/virtual_board.py) against a real mosquitto, printed
next to a baseline measured in the same run, because these machines are shared and noisy:
compare columns, not runs. This module runs it and prints the report; firmware_rig is the
broker and the boards, firmware_roles each role's cycle and its baseline, firmware_heap the
heap search and its 32-bit bounds.

1. Latency, ``--runs`` times per role (p50 / p95 / max), all on the host's monotonic clock:
   the start is taken just before the host sends the command (``Control.set_pin`` to the
   board, or paho's ``publish``); the end is ``Control.note``'s receive time ``t`` of the
   board's event, or the time paho's ``on_message`` runs in the subscriber. Beside it, a
   minimal main.py doing the same visible thing (firmware_roles): the difference is what
   the firmware adds. The VM runs on a PC: this is the firmware's structure (poll
   intervals, task order), not an ESP32's CPU time, which is slower, notably for the
   pure-Python HMAC.

2. Heap, per role and for an empty board: the live heap at every wait and the smallest heap
   that runs the scenario, the firmware's share of them bounded for a 32-bit ESP32 against
   its target, and what the firmware keeps module by module; firmware_heap says how.

With ``--mpy`` the modules are flashed precompiled, as ``ansim flash --mpy`` does: nothing
is compiled on the board. ``--frozen`` with a VM that has the firmware frozen in (``make
vm32`` builds ``micropython-frozen``; firmware/manifest.py is the same list for an ESP32
image) flashes only main.py and config.json: module code then stays in the image, not in the
heap, as on a board whose firmware image holds it.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ansim_simulators.hardware.micropython_vm import binary as micropython_binary
from ansim_simulators.hardware.virtual_board import BoardError
from ansim_tools.firmware_heap import FAKES_KB, breakdown, firmware_share, heap_for, range_32bit, verdict
from ansim_tools.firmware_rig import LATENCY_HEAP, Failing, Rig, ScenarioFailed, start_board
from ansim_tools.firmware_roles import ROLE_CLASSES, ROLES
from ansim_tools.flash import FlashError, firmware_files

LATENCY_TARGET_MS = 50.0
HEAP_TARGETS_KB = {"wearable": 24, "bell": 48, "streetlight": 48}


def say(text=""):
    print(text, flush=True)


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples):
    return {"n": len(samples), "p50": statistics.median(samples), "p95": percentile(samples, 0.95),
            "max": max(samples)}


def bench_latency(role, rig, tmp, runs):
    for topic in role.subscriptions():
        rig.subscribe(topic)
    base, fw = {m: [] for m in role.metrics}, {m: [] for m in role.metrics}
    role.flash_baseline(tmp / "baseline-flash", rig.port)
    board = start_board(tmp / "baseline-flash", tmp / "baseline-vm", LATENCY_HEAP)
    try:
        with Failing(board, "%s baseline" % role.name):
            role.ready_baseline(board)
            for _ in range(runs):
                for m, v in role.measure_baseline(rig, board).items():
                    base[m].append(v)
    finally:
        board.stop()
    role.flash(tmp / "flash", rig.port)
    since = rig.mark()
    board = start_board(tmp / "flash", tmp / "vm", LATENCY_HEAP)
    try:
        with Failing(board, "%s firmware" % role.name):
            role.ready(rig, board, since)
            for _ in range(runs):
                for m, v in role.measure(rig, board).items():
                    fw[m].append(v)
    finally:
        board.stop()
    result = {}
    for m, what in role.metrics.items():
        b, f = summary(base[m]), summary(fw[m])
        result[m] = {"what": what, "baseline": b, "firmware": f, "added_p50": f["p50"] - b["p50"],
                     "added_p95": f["p95"] - b["p95"], "baseline_ms": base[m], "firmware_ms": fw[m]}
        say("   %s: %s" % (role.name, what))
        for label, s in (("minimal main.py (baseline)", b), ("%s firmware" % role.name, f)):
            say("     %-28s p50 %6.1f ms   p95 %6.1f ms   max %6.1f ms" % (label, s["p50"], s["p95"], s["max"]))
        say("     added by the firmware: p50 %+.1f ms, p95 %+.1f ms" % (result[m]["added_p50"], result[m]["added_p95"]))
    return result


def vm_info():
    out = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.maxsize > 1 << 32, "
                          "'.'.join(str(v) for v in sys.implementation.version[:3]))"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    frozen = subprocess.run([micropython_binary(), "-c", "import ansim_protocol.frames, ansim_device.clock"],
                            capture_output=True, text=True, timeout=30, env=dict(os.environ, MICROPYPATH=".frozen"))
    return {"bits": 64 if out[0] == "True" else 32, "version": out[1], "frozen": frozen.returncode == 0}


def run(args):
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLE_CLASSES]
    if unknown or not roles:
        say("ansim bench firmware: unknown role(s) %s (known: %s)" % (", ".join(unknown), ", ".join(ROLES)))
        return 2
    missing = []
    for r in roles:
        try:
            firmware_files(r)
        except FlashError as err:
            missing.append(r)
            say("ansim bench firmware: %s skipped: %s" % (r, err))
    roles = [r for r in roles if r not in missing]
    if not roles:
        return 2
    vm = vm_info()
    if args.frozen and not vm["frozen"]:
        say("ansim bench firmware: --frozen needs a VM with the firmware frozen in (make vm32, then "
            "ANSIM_MICROPYTHON=/tmp/ansim-vm32/micropython-frozen); %s has none" % micropython_binary())
        return 2
    results = {"vm": vm, "runs": args.runs, "mpy": bool(args.mpy), "frozen": bool(args.frozen), "roles": {},
               "missing": missing}
    say("ansim bench firmware (%d cores, MicroPython %s unix VM, %d-bit; %d runs per role)"
        % (os.cpu_count(), vm["version"], vm["bits"], args.runs))
    with tempfile.TemporaryDirectory(prefix="ansim-bench-fw-") as tmp:
        tmp = Path(tmp)
        rig = Rig(tmp)
        try:
            objects = {r: ROLE_CLASSES[r]() for r in roles}
            for r in roles:
                objects[r].frozen = bool(args.frozen)
                if args.mpy:
                    objects[r].mpy_dir = tmp / ("mpy-" + r)
            say("\n1. latency on the virtual board (host monotonic clock: command sent -> event received)")
            for r in roles:
                results["roles"][r] = {"latency": bench_latency(objects[r], rig, tmp / ("latency-" + r), args.runs)}
            if not args.no_heap:
                results["empty_board"] = _heap_section(objects, roles, rig, tmp, args.heap_resolution, results)
        except (ScenarioFailed, BoardError) as err:
            print("ansim bench firmware: %s" % err, file=sys.stderr)
            return 1
        finally:
            rig.close()
    _summary(results, roles, args.no_heap)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _heap_section(objects, roles, rig, tmp, resolution, results):
    say("\n2. heap on the virtual board, KB of the %d-bit VM's heap%s"
        % (results["vm"]["bits"], " (modules frozen in the VM image, ansim flash --frozen)" if results["frozen"] else
           " (modules precompiled, ansim flash --mpy)" if results["mpy"] else
           " (modules as .py, as ansim flash copies them by default)"))
    say("   scenario: boot, online, one cycle of 1., a heartbeat. live: gc.mem_alloc() after gc.collect() at every")
    say("   wait point; smallest: the smallest -X heapsize that runs the scenario (bisection, %d KB steps)"
        % resolution)
    empty = heap_for(None, rig, tmp / "heap-empty", resolution)
    say("     %-24s live %6.1f (lowest %.1f, probe %.1f)   smallest %4d%s"
        % ("empty board (baseline)", empty["live_peak_kb"], empty["live_lowest_kb"], empty["probe_kb"],
           empty["smallest_heap_kb"], "" if empty["confirmed"] else " (flaky)"))
    for r in roles:
        h = heap_for(objects[r], rig, tmp / ("heap-" + r), resolution)
        low, high = firmware_share(h, empty)
        bits = results["vm"]["bits"]
        estimate = [low - FAKES_KB, high] if bits == 32 else [(low - FAKES_KB) / 2, high / 2]
        h.update(share_kb=[low, high], range_32bit_kb=range_32bit(low, high, bits), estimate_32bit_kb=estimate,
                 target_kb=HEAP_TARGETS_KB[r], verdict=verdict(low, high, HEAP_TARGETS_KB[r], bits))
        results["roles"][r]["heap"] = h
        say("     %-24s live %6.1f   smallest %4d%s   firmware's share %.1f .. %.1f"
            % (r + " firmware", h["live_peak_kb"], h["smallest_heap_kb"], "" if h["confirmed"] else " (flaky)",
               low, high))
    say("   firmware's share: from its live peak minus the empty board's, to its smallest heap minus what the")
    if results["vm"]["bits"] == 32:
        say("   board always holds (%.1f KB), in 32-bit words as on an ESP32 (less %.0f KB of the fakes' state)"
            % (empty["live_lowest_kb"] - empty["probe_kb"], FAKES_KB))
    else:
        say("   board always holds (%.1f KB). A 32-bit ESP32 needs between half (less %.0f KB of the fakes' state)"
            % (empty["live_lowest_kb"] - empty["probe_kb"], FAKES_KB))
        say("   and all of it; halving is an estimate")
    say("\n3. what the firmware keeps, KB (%d-bit; gc.mem_alloc() after gc.collect() around each import)"
        % results["vm"]["bits"])
    for r in roles:
        parts = breakdown(objects[r], rig, tmp / ("breakdown-" + r))
        results["roles"][r]["breakdown"] = parts
        kept = sum(p[1] for p in parts) / 1024
        biggest = sorted(parts, key=lambda p: -p[1])
        say("   %-12s %s" % (r, ", ".join("%s %.1f" % (name, size / 1024) for name, size in biggest)))
        say("   %-12s total %.1f; while running another %.1f (live peak minus the board minus this)"
            % ("", kept, results["roles"][r]["heap"]["share_kb"][0] - kept))
    return empty


def _summary(results, roles, no_heap):
    say("\nsummary against the targets")
    for r in roles:
        for m, lat in results["roles"][r]["latency"].items():
            ok = lat["firmware"]["p95"] <= LATENCY_TARGET_MS
            say("  %-28s %6.1f ms p95 (baseline %.1f)           target <= %d ms  %s"
                % ("%s %s latency" % (r, m), lat["firmware"]["p95"], lat["baseline"]["p95"], LATENCY_TARGET_MS,
                   "ok" if ok else "MISSED"))
        if no_heap:
            continue
        h = results["roles"][r]["heap"]
        say("  %-28s %4.1f-%.1f KB on 32-bit, estimate %.1f-%.1f  target <= %d KB  %s"
            % ("%s heap" % r, h["range_32bit_kb"][0], h["range_32bit_kb"][1], h["estimate_32bit_kb"][0],
               h["estimate_32bit_kb"][1], h["target_kb"], h["verdict"]))
    say("  (%s host; the VM is not an ESP32: latency shows the firmware's structure, not an ESP32's CPU time)"
        % platform.machine())

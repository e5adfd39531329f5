"""``ansim bench firmware`` on the bell with a few runs and a coarse heap search: the report has
every section, the numbers are sane (ordered percentiles, bounds in order, the firmware heavier
than the empty board). Structure only: timing and memory targets are the benchmark's to judge,
never a test's."""

import json

from ansim_tools.cli import main
from ansim_tools.firmware_heap import FAKES_KB, verdict
from ansim_tools.firmware_rig import WAIT_S

RUNS = 3


def test_bench_firmware_reports_latency_and_heap_for_the_bell(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "firmware", "--roles", "bell", "--runs", str(RUNS), "--heap-resolution", "64",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    for text in ("1. latency on the virtual board", "bell: button press -> bell_press", "bell: button press -> siren pin",
                 "minimal main.py (baseline)", "2. heap on the virtual board", "empty board (baseline)",
                 "3. what the firmware keeps", "summary against the targets", "bell publish latency",
                 "bell siren latency", "bell heap"):
        assert text in printed, text

    results = json.loads(out_json.read_text())
    assert results["vm"]["bits"] in (32, 64) and results["runs"] == RUNS
    bell = results["roles"]["bell"]
    for metric in ("publish", "siren"):
        latency = bell["latency"][metric]
        for side in ("baseline", "firmware"):
            s = latency[side]
            assert s["n"] == RUNS and len(latency[side + "_ms"]) == RUNS
            assert 0 < s["p50"] <= s["p95"] <= s["max"] < WAIT_S * 1000, (metric, side, s)
        assert latency["added_p95"] == latency["firmware"]["p95"] - latency["baseline"]["p95"]

    empty, heap = results["empty_board"], bell["heap"]
    assert 0 < empty["probe_kb"] < empty["live_lowest_kb"] <= empty["live_peak_kb"] < empty["smallest_heap_kb"]
    assert empty["live_peak_kb"] < heap["live_peak_kb"] and heap["probe_samples"] > 0
    assert heap["live_peak_kb"] * 0.95 < heap["smallest_heap_kb"] <= 512
    low, high = heap["share_kb"]
    assert 0 < low < high
    assert heap["range_32bit_kb"] == [(low - FAKES_KB) / 2, high]
    assert heap["target_kb"] == 48 and heap["verdict"] == verdict(low, high, 48)

    parts = dict(bell["breakdown"])
    assert {"ansim_protocol.frames", "ansim_device.mqtt", "bell", "bell.Bell(config)"} <= set(parts)
    assert all(size > 0 for size in parts.values()), parts


def test_verdicts_follow_the_32_bit_bounds():
    assert verdict(30.0, 40.0, 48) == "met"  # even the 64-bit upper bound fits
    assert verdict(2 * 48 + FAKES_KB + 1, 200.0, 48) == "MISSED"  # half the lower bound is over
    assert verdict(2 * 48 + FAKES_KB, 200.0, 48) == "unproven"
    assert verdict(70.0, 110.0, 48) == "unproven"


def test_heap_verdicts_bound_an_esp32_from_a_64_bit_vm_and_read_a_32_bit_vm_as_is():
    assert verdict(50.2, 106.4, 24, bits=64) == "MISSED"  # even half of it is over
    assert verdict(45.0, 96.1, 48, bits=64) == "unproven"
    assert verdict(33.7, 89.1, 24, bits=32) == "MISSED"  # no halving in 32-bit words
    assert verdict(45.0, 96.1, 48, bits=32) == "unproven"
    assert verdict(20.9, 40.6, 48, bits=32) == "met"

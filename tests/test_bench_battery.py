"""``ansim bench battery``: its figures come from what the board did (the counts of its events
times the currents), never from a number written in; a short time-warped run on the real
wearable firmware has every part of the report. The targets are the benchmark's to judge."""

import json
import re

import pytest

from ansim_tools import bench_battery
from ansim_tools.cli import main

CURRENTS = {"deep_sleep": 0.01, "light_sleep": 0.1, "cpu": 10.0, "tx": 100.0, "rx": 50.0}


def test_the_charge_is_the_time_in_each_state_times_its_current():
    events = [{"ev": "hello", "vt": 0.0},
              {"ev": "adv", "vt": 1.0, "interval_us": 30000, "data": "ab" * 31},
              {"ev": "scan", "vt": 2.0, "on": True},
              {"ev": "adv", "vt": 4.0, "interval_us": None, "data": None},
              {"ev": "scan", "vt": 5.0, "on": False},
              {"ev": "sleep", "mode": "light", "vt": 10.0},
              {"ev": "wake", "vt": 110.0},
              {"ev": "sleep", "mode": "deep", "vt": 111.0},
              {"ev": "wake", "mode": "deep", "vt": 1111.0},
              {"ev": "hello", "vt": 1111.1}]
    c = bench_battery.integrate(events, 0.0, 1112.0, CURRENTS)
    assert c["light_s"] == pytest.approx(100.0) and c["deep_s"] == pytest.approx(1000.0)
    assert c["awake_s"] == pytest.approx(12.0) and c["wakes"] == 2
    per_event = bench_battery.advert_on_air_us(31) / 1e6
    adverts = 3.0 / 0.035  # 3 s at 30 ms plus the mean advDelay
    assert c["adverts"] == round(adverts) and c["advert_bytes"] == 31
    assert c["tx_s"] == pytest.approx(adverts * per_event)
    assert c["rx_s"] == pytest.approx(3.0 - 2.0 / 0.035 * per_event)  # scanning, less its share of TX
    expected = (0.01 * 1000 + 0.1 * 100 + 100 * c["tx_s"] + 50 * c["rx_s"]
                + 10 * (12.0 - c["tx_s"] - c["rx_s"]))
    assert c["charge_mas"] == pytest.approx(expected)
    # a stretch that starts in deep sleep counts from its start
    assert bench_battery.integrate(events, 500.0, 600.0, CURRENTS)["deep_s"] == pytest.approx(100.0)


def test_the_life_is_the_capacity_over_the_weekly_average():
    avg_ma, months = bench_battery.life(7 * 86400 * 0.1, 1000.0)
    assert avg_ma == pytest.approx(0.1)
    assert months == pytest.approx(10000.0 / bench_battery.HOURS_PER_MONTH)


def test_bench_battery_reports_a_warped_day_and_its_figures_from_the_counts(tmp_path, capsys):
    out_json = tmp_path / "battery.json"
    assert main(["bench", "battery", "--hours", "9", "--sos-timeout", "4", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    for text in ("ESP32-C3 Series Datasheet", "baseline: deep sleep 6 h, wake", "of which the SOS",
                 "of which the cancelled SOS", "goal >= 12 months", "light sleep only"):
        assert text in printed, text
    r = json.loads(out_json.read_text())
    currents = {k: v[0] for k, v in r["currents"].items()}
    w, f = r["wearable"], r["figures"]
    for part in (w["day"], w["sos"], w["cancel"], w["rest"], r["baseline"]):
        awake_cpu = part["awake_s"] - part["tx_s"] - part["rx_s"]
        assert part["charge_mas"] == pytest.approx(
            currents["deep_sleep"] * part["deep_s"] + currents["light_sleep"] * part["light_s"]
            + currents["tx"] * part["tx_s"] + currents["rx"] * part["rx_s"] + currents["cpu"] * awake_cpu,
            rel=1e-6, abs=1e-6)
    assert w["day"]["deep_s"] > 0.9 * 9 * 3600 and w["sos"]["rx_s"] > 0 and w["sos"]["adverts"] > 0
    assert r["baseline"]["deep_s"] > 0.99 * 9 * 3600 and r["baseline"]["wakes"] >= 1
    kinds = [k for k, _, _ in w["sent"]]
    assert "sos" in kinds and "cancel" in kinds
    # the week and the life, recomputed from the counts
    week_s = 7 * 86400
    week = (w["rest"]["charge_mas"] / w["rest_s"] * (week_s - w["sos_s"] - w["cancel_s"])
            + w["sos"]["charge_mas"] + w["cancel"]["charge_mas"])
    assert f["week_mas"] == pytest.approx(week)
    assert f["avg_ma"] == pytest.approx(week / week_s)
    assert f["months"] == pytest.approx(1000.0 / f["avg_ma"] / bench_battery.HOURS_PER_MONTH)
    assert f["met"] == (f["months"] >= 12)
    assert f["baseline_ma"] == pytest.approx(r["baseline"]["charge_mas"] / (9 * 3600))
    assert f["baseline_months"] > f["months"] > f["light_only_months"]
    line = re.search(r"wearable:  average ([\d.]+) uA -> ([\d.]+) months", printed)
    assert float(line.group(1)) == pytest.approx(f["avg_ma"] * 1000, abs=0.06)
    assert float(line.group(2)) == pytest.approx(f["months"], abs=0.06)
    day = re.search(r"wearable: the whole day(?:\s+[\d.]+){6}\s+([\d.]+)", printed)
    assert float(day.group(1)) == pytest.approx(w["day"]["charge_mas"] / 3600, abs=0.0006)

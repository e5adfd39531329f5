"""The fault run of issue 8, short form (`make test-faults` runs the long one): bell presses
at ~290/s through the real agent while it is killed (kill -9), the Pi's broker is restarted,
the Pi rebooted, the center dropped and taken away; counted at the center and at the bells by
observers of their own (ansim_simulators.world.faults). Nothing may be lost, the first arrivals of
each device's alerts come in counter order, and every ack the center's broker accepted reaches
its bell as a center_ack frame the bell accepts. Duplicates by alert id are allowed (at least
once) and printed with the report."""

import os

import pytest

from ansim_simulators.world.fault_schedule import KINDS, draw_schedule
from ansim_simulators.world.faults import FaultRun

SEED = os.environ.get("ANSIM_SEED", "ci-1")


def test_the_schedule_comes_from_the_seed_and_keeps_each_lane_sequential():
    first = draw_schedule("s", 30, kills=6, broker_restarts=1, reboots=1, drops=2, outages=1)
    assert first == draw_schedule("s", 30, kills=6, broker_restarts=1, reboots=1, drops=2, outages=1)
    assert first != draw_schedule("t", 30, kills=6, broker_restarts=1, reboots=1, drops=2, outages=1)
    assert {f.kind for f in first} == set(KINDS)
    for lane in (("kill9", "broker_restart", "reboot"), ("drop", "outage")):
        faults = [f for f in first if f.kind in lane]
        for before, after in zip(faults, faults[1:]):
            assert after.at >= before.at + before.occupies() - 1e-6
        assert all(f.at + f.occupies() <= 0.92 * 30 + 1e-6 for f in faults)
    with pytest.raises(ValueError):
        draw_schedule("s", 5, kills=40)


def test_kills_restarts_reboots_and_center_outages_lose_nothing_and_every_ack_reaches_its_bell(tmp_path):
    run = FaultRun(SEED, duration=30, rate=290, bells=4, kills=5, broker_restarts=1, reboots=1, drops=1,
                   outages=1, outage_s=(2.0, 4.0), drain_timeout=60, workdir=tmp_path, escalation_s=3600)
    report = run.run()
    print(report.summary())
    assert {f.kind for f in report.faults} == set(KINDS), report.summary()
    assert report.sent > 2000, report.summary()
    assert not report.unsent, report.summary()
    assert not report.lost, report.summary()
    assert not report.out_of_order, report.summary()
    assert not report.acks_not_relayed, report.summary()
    assert report.acks_sent == report.received, report.summary()
    assert not report.agent_exits, report.summary()
    assert not report.down_counter_reused, report.summary()
    assert report.drained and report.ok, report.summary()

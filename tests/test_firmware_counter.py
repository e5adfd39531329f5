"""On the MicroPython VM: a power cycle never reuses a frame counter, a torn write to flash
falls back safely, and an accepted command counter is never accepted again after a reboot."""

import json
import random

import pytest

from ansim_simulators.hardware import micropython_vm

SCRIPT = micropython_vm.REPO / "tests" / "micropython" / "counter_run.py"


def power_on(board, frames, commands=(), block=8):
    (board / "run.json").write_text(json.dumps({"frames": frames, "commands": list(commands), "block": block}))
    result = micropython_vm.run(SCRIPT, board, extra_path=[micropython_vm.FIRMWARE_DIR])
    assert result.returncode == 0, result.stderr


def used(board):
    return [int(line) for line in (board / "used.log").read_text().split() if line.isdigit()]


@pytest.fixture
def board(tmp_path):
    (tmp_path / "state").mkdir()
    return tmp_path


def test_counters_never_repeat_across_power_cycles(board):
    rng = random.Random(7)
    for _ in range(25):
        power_on(board, rng.randrange(0, 20))
    values = used(board)
    assert values == sorted(set(values)) and values[0] == 1
    # At most one block is skipped per power-on: the flash is written once per 8 frames.
    assert values[-1] <= len(values) + 25 * 8


def test_a_torn_write_falls_back_to_the_other_slot_without_reuse(board):
    power_on(board, 16)  # the block ends at 17: the next frame reserves a new block ...
    older = min((board / "state").glob("counter.*"), key=lambda p: int(p.read_text().split()[0]))
    older.write_text(older.read_text()[:3])  # ... into the older slot, and power fails mid-write
    power_on(board, 5)
    values = used(board)
    assert values == sorted(set(values))


def test_an_accepted_command_is_refused_after_a_reboot(board):
    power_on(board, 0, commands=[5, 6, 6, 4])
    power_on(board, 0, commands=[6, 7])
    lines = (board / "used.log").read_text().split("\n")
    accepted = [tuple(map(int, l.split()[1:])) for l in lines if l.startswith("cmd")]
    assert accepted == [(5, 1), (6, 1), (6, 0), (4, 0), (6, 0), (7, 1)]

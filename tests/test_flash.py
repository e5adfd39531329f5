"""`ansim flash` with the real mpremote against a virtual board: copy, verify by SHA-256,
reset into the firmware; dry runs, reruns after an interrupted copy, and clear errors."""

import ast
import calendar
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.usefixtures("quick_timeout")

from ansim_simulators.hardware.virtual_board import VirtualBoard
from ansim_tools import flash
from ansim_tools.provision import Site

LIGHT = "00030001"
FIRMWARE_MAIN = """
import json
import machine
from machine import Pin
from ansim_protocol import frames
from ansim_device.counter import PersistentCounter
with open('/config.json') as f:
    config = json.load(f)
print('booted', config['device_id'], config['role'], frames.VERSION_1)
print('clock', machine.RTC().datetime())
Pin(2, Pin.OUT).on()
"""


@pytest.fixture
def setup(tmp_path):
    site = Site(tmp_path / "site")
    site.add("streetlight", 1, [37.5663, 126.9779], None, "127.0.0.1:1883")
    firmware = tmp_path / "firmware"
    shutil.copytree(flash.REPO / "firmware" / "ansim_device", firmware / "ansim_device")
    (firmware / "main.py").write_text(FIRMWARE_MAIN)
    (firmware / "streetlight.py").write_text("# the role module\n")
    with VirtualBoard(tmp_path / "board") as board:
        board.control.wait_for(lambda e: e.get("ev") == "repl", timeout=10)
        yield board, flash.files_for("streetlight", tmp_path / "site", LIGHT, firmware)


def test_flash_copies_verifies_and_resets_into_the_firmware(setup, capsys):
    board, plan = setup
    mark = board.control.mark()
    flash.flash(board.port, plan, dry_run=False)
    out = capsys.readouterr().out
    assert "verified %d files (SHA-256), set the board's clock to UTC and reset the board" % len(plan) in out
    assert out.count("new ") == len(plan)
    board.control.wait_for(lambda e: e.get("ev") == "pin" and e.get("pin") == 2 and e.get("value") == 1,
                           since=mark, timeout=10)
    # The RTC runs in UTC (wearable epochs and expiries are Unix time), not the host's zone.
    clock = board.control.wait_for(lambda e: e["text"].startswith("clock"), since=mark, ev="print")
    y, mo, d, _, h, mi, s, _ = ast.literal_eval(clock["text"].split(" ", 1)[1])
    board_utc = calendar.timegm((y, mo, d, h, mi, s))
    assert abs(board_utc - time.time()) < 30
    assert (board.board_dir / "lib" / "ansim_protocol" / "frames.py").exists()


def test_dry_run_changes_nothing_and_a_rerun_copies_only_what_differs(setup, capsys):
    board, plan = setup
    flash.flash(board.port, plan, dry_run=True)
    assert "dry run: %d of %d files would be copied" % (len(plan), len(plan)) in capsys.readouterr().out
    assert not (board.board_dir / "main.py").exists()
    mark = board.control.mark()
    flash.flash(board.port, plan, dry_run=False)
    board.control.wait_for(since=mark, ev="exit", file="main.py", timeout=10)  # rebooted, main.py done
    capsys.readouterr()
    (board.board_dir / "lib" / "ansim_device" / "counter.py").write_text("# torn by an interrupted copy\n")
    flash.flash(board.port, plan, dry_run=False)
    out = capsys.readouterr().out
    assert out.count("changed   :") == 1 and "changed   :lib/ansim_device/counter.py" in out
    assert (board.board_dir / "lib" / "ansim_device" / "counter.py").read_bytes() == plan[
        "lib/ansim_device/counter.py"].read_bytes()


def test_mpy_precompiles_the_modules(setup, tmp_path):
    board, plan = setup
    compiled = flash.precompile(plan, tmp_path)
    assert "lib/ansim_protocol/frames.mpy" in compiled and "main.py" in compiled and "config.json" in compiled
    flash.flash(board.port, compiled, dry_run=False)
    assert (board.board_dir / "lib" / "ansim_protocol" / "frames.mpy").exists()


@pytest.mark.parametrize("args, message", [
    (["--role", "bell", "--device", LIGHT], "is a streetlight, not a bell"),
    (["--role", "streetlight", "--device", "00039999"], "no config for device 00039999"),
])
def test_mistakes_give_one_clear_line(tmp_path, args, message):
    Site(tmp_path).add("streetlight", 1, [37.5, 127.0], None, None)
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "flash", "--site", str(tmp_path),
                             "--port", "/dev/ttyNOPE9", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_frozen_needs_an_image_with_the_code_and_leaves_a_board_without_it_untouched(tmp_path):
    Site(tmp_path / "site").add("streetlight", 1, [37.5, 127.0], None, None)
    cli = [sys.executable, "-m", "ansim_tools.cli", "flash", "--site", str(tmp_path / "site"), "--role",
           "streetlight", "--device", LIGHT]
    with VirtualBoard(tmp_path / "board") as board:
        board.control.wait_for(lambda e: e.get("ev") == "repl", timeout=10)
        dry = subprocess.run(cli + ["--port", board.port, "--frozen", "--dry-run"], capture_output=True, text=True,
                             timeout=120)
        assert dry.returncode == 0 and "dry run: 2 of 2 files would be copied" in dry.stdout, dry.stderr
        assert subprocess.run(cli + ["--port", board.port], capture_output=True, text=True, timeout=120).returncode == 0
        before = sorted(p.relative_to(board.board_dir) for p in board.board_dir.rglob("*.py"))
        board.control.wait_for(ev="run", file="main.py", timeout=10)  # rebooted into it
        result = subprocess.run(cli + ["--port", board.port, "--frozen"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "no ansim code frozen in its firmware image" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert sorted(p.relative_to(board.board_dir) for p in board.board_dir.rglob("*.py")) == before


def test_freeze_stages_the_device_code_as_a_manifest(tmp_path):
    from ansim_tools import freeze
    manifest = freeze.stage(tmp_path / "frozen")
    text = manifest.read_text()
    assert 'include("$(PORT_DIR)/boards/manifest.py")' in text
    assert 'package("ansim_protocol", base_path="modules")' in text and 'module("wearable.py"' in text
    staged = tmp_path / "frozen" / "modules"
    assert (staged / "ansim_protocol" / "frames.py").read_bytes() == (flash.REPO / "protocol" / "frames.py").read_bytes()
    assert (staged / "ansim_device" / "beacon.py").exists() and (staged / "bell.py").exists()


def test_no_board_at_the_port_says_what_to_check():
    with pytest.raises(flash.FlashError, match="no device answers at /dev/ttyNOPE9.*mpremote connect list"):
        flash.board_hashes("/dev/ttyNOPE9", ["main.py"])


@pytest.fixture
def quick_timeout(monkeypatch):
    """A virtual board answers within a second; do not wait two minutes for a hung one."""
    monkeypatch.setattr(flash, "MPREMOTE_TIMEOUT_S", 20)


def test_a_provisioned_light_flashed_with_ansim_flash_boots_into_its_firmware(tmp_path, mqtt_client):
    """The technician's path: provision, `ansim flash` (real mpremote), reset, and the light
    joins the broker on its own."""
    from ansim_simulators.fixtures.broker import MosquittoBroker
    from ansim_protocol import topics
    with MosquittoBroker(workdir=tmp_path / "broker") as broker:
        Site(tmp_path / "site").add("streetlight", 1, [37.5663, 126.9779], None, "127.0.0.1:%d" % broker.port)
        watcher = mqtt_client(broker)
        watcher.subscribe(topics.topic(int(LIGHT, 16), topics.STATE))
        with VirtualBoard(tmp_path / "board") as board:
            board.control.wait_for(lambda e: e.get("ev") == "repl", timeout=10)
            mark = board.control.mark()
            result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "flash", "--port", board.port,
                                     "--role", "streetlight", "--device", LIGHT, "--site", str(tmp_path / "site")],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "verified" in result.stdout
            board.control.wait_for(since=mark, ev="run", file="main.py", timeout=10)
            board.control.wait_for(since=mark, ev="pwm", pin=5, timeout=10)  # the lamp driver is up
            assert watcher.next_message(10).payload == b"online"

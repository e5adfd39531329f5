"""`make demo` tells the true story: device code on the VM, a real broker, verification."""

import subprocess
import sys


def test_demo_verifies_the_sos_and_the_bell_and_refuses_replay_and_forgery():
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "demo"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "On the micropython VM" in out
    assert "VERIFIED SOS from wearable" in out and "VERIFIED BELL_PRESS from bell 00020001" in out
    assert "REJECTED (replay:" in out and "REJECTED (unknown:" in out
    assert "position 37.566" in out
    assert "2 frames verified, 2 refused" in out

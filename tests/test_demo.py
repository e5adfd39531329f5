"""`make demo` tells the true story and says so only when every step held."""

import subprocess
import sys


def test_demo_story_holds_end_to_end():
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "demo"],
                            capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "The real firmware runs on 4 virtual boards" in out
    assert "The child presses SOS (three presses): first advertisement after" in out
    assert "within 6 m (gnss)" in out and "nearest CCTV: CCTV-" in out
    assert "streetlights within 50 m blink: 00030001" in out
    assert "flash 100% / 10% every 250 ms" in out
    assert "someone is calling for help: no identity, no position" in out
    assert "the wearable vibrates: acknowledged, " in out
    assert "Forgeries are refused" in out
    assert "경찰관을 연결 중입니다" in out and "경찰관이 연결되었습니다" in out
    assert "00030002 and 00030003 are back at 60%" in out
    assert "Home: the last 6 lights return to their schedule." in out
    assert "The story held" in out
    assert result.stderr == "", "the demo's own logs stay quiet"

"""`make demo` tells the headline story from simulators/scenarios/demo.toml, the console's map
live, and says so only when every step held; `ansim demo --firmware` tells the real firmware's
story on virtual boards."""

import json
import re
import subprocess
import sys
import threading
import urllib.request

from ansim_simulators.world import scenario
from ansim_tools import demo


def test_the_scenario_demo_holds_end_to_end_with_the_console_live():
    proc = subprocess.Popen([sys.executable, "-m", "ansim_tools.cli", "demo", "--headless", "--http-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, proc.kill)
    timer.start()
    try:
        lines, state = [], None
        for line in proc.stdout:
            lines.append(line)
            url = re.match(r"console: (http://127\.0\.0\.1:\d+/)", lines[0])
            if url and state is None and "unanswered: bell2 presses sos" in line:  # the story is on the map
                with urllib.request.urlopen(url.group(1) + "api/state", timeout=5) as answer:
                    state = json.load(answer)
                with urllib.request.urlopen(url.group(1), timeout=5) as answer:
                    assert answer.status == 200
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        timer.cancel()
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out + err
    assert url, "the console's URL comes first: " + lines[0]
    assert state is not None, out
    assert any(a["type"] == "sos" for a in state["alerts"]), state["alerts"]
    assert "FAIL" not in out and "HELD demo" in out and "The story held: " in out
    expects = scenario.load(demo.default_scenario()).expects
    assert out.count("PASS") == len(expects)
    story = out.split("The story, as measured:")[1]
    for ex in expects:
        assert "✓ %s: " % ex.narrate in story
    assert "(gnss); nearest cameras: CCTV-001" in story
    assert re.search(r"reaches the center: after \d+\.\d+ s", story)
    assert "Exactly one alert for that press: nothing lost, nothing doubled: 1 distinct, 1 copy" in story
    assert err == "", "the demo's own logs stay quiet"


def test_the_firmware_story_holds_end_to_end():
    result = subprocess.run([sys.executable, "-m", "ansim_tools.cli", "demo", "--firmware"],
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

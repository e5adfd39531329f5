"""Every scenario in simulators/scenarios/ holds under ``ansim sim run`` (each file is a test);
a false expectation makes the run exit 1 naming it and what was seen; a broken file exits 2
with one line naming the line, table and key; ``ansim sim load`` loses nothing and prints
numbers that come from its counts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ansim_simulators.world import locate, scenario
from ansim_simulators.world.place import Place
from ansim_simulators.world.radio_model import PathLoss

SCENARIOS = Path(__file__).resolve().parent.parent / "simulators" / "scenarios"
FILES = sorted(SCENARIOS.glob("*.toml"))


def sim(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "ansim_tools.cli", "sim", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_the_required_scenarios_are_there():
    names = {f.stem for f in FILES}
    assert {"sos_with_cancel", "bell_during_uplink_outage", "walk_home", "escalation", "device_offline",
            "two_agents_one_wearable", "power_loss_mid_alarm"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario_holds(path):
    result = sim("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    expects = scenario.load(path).expects
    assert result.stdout.count("PASS") == len(expects)
    if any(x.what == "position" for x in expects):  # the fused position's accuracy is stated
        line = next(l for l in result.stdout.splitlines() if l.startswith("PASS") and " position " in l)
        assert "m from the true position; the alert's own location (receiver)" in line


def test_a_false_expectation_fails_the_run_saying_which_and_what_was_seen(tmp_path):
    text = (SCENARIOS / "escalation.toml").read_text()
    # the district center never answers: an ack to the bell is false
    false = tmp_path / "false.toml"
    false.write_text(text.replace('duration_s = 10', 'duration_s = 6') + '\n[[expect]]\nwhat = "ack"\n'
                     'device = "bell"\nafter = "press"\nwithin_s = 3\n')
    result = sim("run", false)
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("FAIL"))
    assert "ack device=bell within 3s of press" in line and "no center_ack reached bell" in line
    assert "DID NOT HOLD" in result.stdout


LOCATED = """
[scenario]
duration_s = 5
[[agent]]
id = "edge-a"
[[wearable]]
name = "child"
at = { east = 10 }
%s
[[event]]
at_s = 0.5
do = "press"
device = "child"
name = "sos"
[[expect]]
what = "alert"
device = "child"
location = "gnss"
cameras = ["CCTV-001", "CCTV-003"]
after = "sos"
within_s = 3
[[expect]]
what = "alert"
device = "child"
location = "receiver"
after = "sos"
within_s = 3
[[expect]]
what = "alert"
device = "child"
cameras = ["CCTV-004"]
after = "sos"
within_s = 3
""" % "".join('[[camera]]\nid = "CCTV-%03d"\nat = { east = %d }\n' % (n, east)
              for n, east in ((1, 12), (2, 20), (3, 30), (4, 300)))


TWO_WALKS = """[scenario]
duration_s = 12

[[agent]]
id = "edge-a"

[[wearable]]
name = "kid"
at = { east = 0 }

[[streetlight]]
name = "lamp"
at = { east = 0 }
count = 6
step = { east = 20 }

[[event]]
at_s = 0.5
do = "walk"
device = "kid"
path = [{ east = 40 }]
speed_mps = 20
name = "first"

[[event]]
at_s = 4
do = "walk"
device = "kid"
path = [{ east = 100 }]
speed_mps = 20
monitor = true
name = "second"

[[expect]]
what = "light"
action = "brighten"
device = "lamp5"
after = "second"
within_s = 4
"""


def test_a_second_walk_goes_on_from_where_the_first_ended(tmp_path):
    """40 m east, then on to 100 m: the second walk is 60 m, and the lamp at 80 m brightens
    ahead of the walker (its route starts where the first walk ended, not at the start)."""
    path = tmp_path / "walks.toml"
    path.write_text(TWO_WALKS)
    result = sim("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kid walks 40 m" in result.stdout and "kid walks 60 m" in result.stdout


def test_an_alerts_location_source_and_cameras_are_checked(tmp_path):
    """The child's SOS carries her GNSS fix and the agent lists the 3 nearest of 4 cameras: the
    true location and cameras hold, a wrong source or a far camera fails the run."""
    path = tmp_path / "located.toml"
    path.write_text(LOCATED)
    result = sim("run", path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert len(lines) == 3 and lines[0].startswith("PASS") and "location=gnss cameras=CCTV-001,CCTV-003" in lines[0]
    assert lines[1].startswith("FAIL") and "location=receiver" in lines[1] and "(jung-gu, location gnss)" in lines[1]
    assert lines[2].startswith("FAIL") and "(jung-gu, cameras CCTV-001,CCTV-002,CCTV-003)" in lines[2]


BROKEN = [
    ("[[agent]]\nid = \"a\"\n[[bell]]\nname = \"b\"\n", "[[bell]] #1 at: missing: write at = { east = 0, north = 0 }"),
    ("[[agent]]\nid = \"a\"\n[[bell]]\nat = { east = 1 }\nheartbeat = 3\n",
     "[[bell]] #1 heartbeat: unknown key (did you mean heartbeat_s?): rename it"),
    ("[[agent]]\nid = \"a\"\n[[bell]]\nat = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"pres\"\ndevice = \"00020001\"\n",
     "[[event]] #1 do: 'pres' is not one of press, walk, ack, outage (did you mean press?)"),
    ("[[agent]]\nid = \"a\"\n[[bell]]\nat = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"press\"\ndevice = \"bel\"\n",
     "[[event]] #1 device: 'bel' is no device of this scenario"),
    ("[[agent]]\nid = \"a\"\n[[bell]]\nat = { x = 1 }\n", "[[bell]] #1 at: {'x': 1} is not a position"),
    ("[[agent]]\nid = \"a\"\n[[expect]]\nwhat = \"alert\"\nwithin_s = \"3\"\n",
     "[[expect]] #1 within_s: '3' is not a number: write within_s = 3 (a number without quotes)"),
    ("[[agent]]\nid = \"a\"\n[[expect]]\nwhat = \"light\"\naction = \"blink\"\n", "which lights?"),
    ("[agent]\nid = \"a\"\n", "write [[agent]] (double brackets)"),
    ("[[agent]]\nid = \"a\"\n", "no expectation"),
    ("[[agent]]\nid = \"a\"\nsettings = { centre = { escalation_s = 2 } }\n[[expect]]\nwhat = \"alert\"\n",
     "'centre': settings hold agent.toml sections"),
    ("[[agent]\n", "not valid TOML"),
    ("[[agent]]\nid = \"a\"\n[[wearable]]\nat = { east = 1 }\nboard = true\ncount = 2\n",
     "[[wearable]] #1 board: a board runs one device (each is a MicroPython VM): set count = 1"),
    ("[[agent]]\nid = \"a\"\n[[expect]]\nwhat = \"alert\"\nlocation = \"gps\"\n",
     "[[expect]] #1 location: 'gps' is not one of gnss, registered, receiver"),
    ("[[agent]]\nid = \"a\"\n[[camera]]\nid = \"CCTV-001\"\nat = { east = 1 }\n[[expect]]\nwhat = \"alert\"\n"
     "cameras = [\"CCTV-01\"]\n", "'CCTV-01' is no [[camera]] of this scenario (did you mean CCTV-001?)"),
    # settings of what the runner sets itself: an error naming the key, not a confusing run
    ("[[agent]]\nid = \"a\"\nsettings = { ble = { enabled = false } }\n[[expect]]\nwhat = \"alert\"\n",
     "broken.toml:3: [[agent]] #1 settings: [ble] enabled: the runner sets it itself (to true, the agent's radio on "
     "the virtual air): remove it from settings"),
    ("[[agent]]\nid = \"a\"\nsettings = { agent = { id = \"other\" } }\n[[expect]]\nwhat = \"alert\"\n",
     "[agent] id: the runner sets it itself (to the [[agent]]'s id): remove it from settings and write id = \"...\" "
     "in the [[agent]] table"),
    ("[[agent]]\nid = \"a\"\nsettings = { center = { district = \"x\" } }\n[[expect]]\nwhat = \"alert\"\n",
     "[center] district: the runner sets it itself (to [place] district): remove it from settings and write "
     "district = \"...\" under [place]"),
    ("[[agent]]\nid = \"a\"\nsettings = { metrics = { port = 9 } }\n[[expect]]\nwhat = \"alert\"\n",
     "[metrics] port: the runner sets it itself"),
    # every message says what to write
    ("[[agent]]\nid = \"a\"\nsettings = { supervision = { mains_s = 5 } }\n[[expect]]\nwhat = \"alert\"\n",
     "[supervision] mains_s: must be at least 10, got 5 (the default is 90): write mains_s = 10 or more in settings"),
    ("[[agent]]\nid = \"edge a\"\n[[expect]]\nwhat = \"alert\"\n",
     "[[agent]] #1 id: 'edge a': letters, digits, '.', '_', '-', at most 58 characters: write e.g. id = \"edge-a\""),
    ("[[agent]]\nid = \"a\"\n[[wearable]]\nname = \"mia\"\nat = { east = 1 }\n[[streetlight]]\nname = \"lamp\"\n"
     "at = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"press\"\ndevice = \"maa\"\n[[expect]]\nwhat = \"alert\"\n",
     "[[event]] #1 device: 'maa' is no device of this scenario (did you mean mia?); the wearables and bells are mia: "
     "write device = \"mia\""),
    ("[[agent]]\nid = \"a\"\n[[wearable]]\nname = \"w\"\nat = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"press\"\n"
     "device = \"bob\"\n[[expect]]\nwhat = \"alert\"\n",
     "'bob' is no device of this scenario; the devices are w: write device = \"w\""),
    ("[[agent]]\nid = \"a\"\n[[wearable]]\nname = \"w\"\nat = { east = 1 }\n[[streetlight]]\nname = \"lamp\"\n"
     "at = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"press\"\ndevice = \"lamp\"\n[[expect]]\nwhat = \"alert\"\n",
     "lamp is a streetlight; here it must be a wearable or bell: write device = \"w\" (one of w)"),
    ("[[agent]]\nid = \"a\"\n[[streetlight]]\nname = \"lamp\"\nat = { east = 1 }\n[[expect]]\nwhat = \"light\"\n"
     "action = \"blink\"\nradius_m = 50\n", "broken.toml:9: [[expect]] #1 radius_m: radius_m is the radius around "
     "near, which is missing: add near = { east = .., north = .. }"),
]


def test_every_scenario_file_loads_with_the_settings_it_gives():
    """The runner-owned keys are refused, yet what the folder's scenarios set still loads."""
    for path in FILES:
        scenario.load(path)


@pytest.mark.parametrize("text, message", BROKEN)
def test_a_broken_file_says_what_is_wrong_and_where(tmp_path, text, message):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(path)
    assert str(err.value).startswith(str(path) + ":")
    assert message in str(err.value)


def test_a_broken_file_exits_2_before_anything_starts(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN[1][0])
    result = sim("run", path)
    assert result.returncode == 2
    assert "broken.toml:5: [[bell]] #1 heartbeat: unknown key" in result.stdout


def test_errors_name_the_line_of_the_key_or_of_the_table_when_a_key_is_missing(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[agent]]\nid = \"a\"\n\n[[bell]]\nat = { east = 1 }\n\n[[bell]]\nat = { east = 2 }\ncount = 0\n")
    with pytest.raises(scenario.ScenarioError, match=r"broken.toml:9: \[\[bell\]\] #2 count: 0 is below 1: "
                       r"write count = 1 or more"):
        scenario.load(path)
    path.write_text("[[agent]]\nid = \"a\"\n\n[[bell]]\nname = \"b\"\n\n[[streetlight]]\nat = { east = 2 }\n")
    with pytest.raises(scenario.ScenarioError, match=r"broken.toml:4: \[\[bell\]\] #1 at: missing"):
        scenario.load(path)


HEAD = "[[agent]]\nid = \"a\"\n[[bell]]\nname = \"bell\"\nat = { east = 1 }\n[[event]]\nat_s = 1\ndo = \"press\"\n" \
       "device = \"bell\"\nname = \"press\"\n"  # 10 lines
KEYED = [  # the tester's mistakes: a key the expectation's what (or the event's do) does not take
    ("[[expect]]\nwhat = \"alert\"\ntype = \"bell_press\"\nafter = \"press\"\nradius_m = 50\n",
     "broken.toml:15: [[expect]] #1 radius_m: does not apply to what = \"alert\" (it is for what = \"light\", "
     "\"no_light\"): remove it; the keys of what = \"alert\" are what, after, within_s, narrate, type, device, agent, "
     "center, count, location, cameras"),
    ("[[expect]]\nwhat = \"alert\"\n# the ack's status\nstatus = \"recieved\"\n",
     "broken.toml:14: [[expect]] #1 status: does not apply to what = \"alert\" (it is for what = \"ack\")"),
    ("[[expect]]\nwhat = \"alert\"\ndevices = [\"bell\"]\n",
     "broken.toml:13: [[expect]] #1 devices: does not apply to what = \"alert\" (did you mean device?) "
     "(it is for what = \"light\", \"no_light\")"),
    ("[[expect]]\nwhat = \"ack\"\ndevice = \"bell\"\nmax_error_m = 3\n",
     "broken.toml:14: [[expect]] #1 max_error_m: does not apply to what = \"ack\" (it is for what = \"position\")"),
    ("[[event]]\nat_s = 2\ndo = \"press\"\ndevice = \"bell\"\nstatus = \"received\"\n[[expect]]\nwhat = \"alert\"\n",
     "broken.toml:15: [[event]] #2 status: does not apply to do = \"press\" (it is for do = \"ack\")"),
    ("[[event]]\nat_s = 2\ndo = \"outage\"\nof = \"uplink\"\ndevice = \"bell\"\n[[expect]]\nwhat = \"alert\"\n",
     "broken.toml:15: [[event]] #2 device: does not apply to of = \"uplink\" (it is for of = \"wifi\", \"power\")"),
    ("[[expect]]\nwhat = \"alert\"\nwithin_s = -1\n",
     "broken.toml:13: [[expect]] #1 within_s: -1 is below 0: write within_s = 0 or more"),
    ("[[event]]\nat_s = 2\ndo = \"press\"\ndevice = \"bell\"\nbutton = \"cancel\"\n[[expect]]\nwhat = \"alert\"\n",
     "broken.toml:15: [[event]] #2 button: 'cancel' is not one of sos (a bell's buttons): write button = \"sos\""),
    ("[[expect]]\nwhat = \"alert\"\ncount = \"6\"\n",
     "broken.toml:13: [[expect]] #1 count: '6' is not a whole number: write count = 6 (a number without quotes)"),
    ("[[expect]]\nwhat = \"alert\"\ntype = \"bellpress\"\n",
     "broken.toml:13: [[expect]] #1 type: 'bellpress' is not one of sos, test_sos, bell_press, cancel, tamper, "
     "low_battery, monitor, lamp_fault, device_offline, device_online (did you mean bell_press?): write type = "
     "\"bell_press\""),
]


@pytest.mark.parametrize("text, message", KEYED)
def test_a_key_in_the_wrong_place_is_an_error_on_its_line(tmp_path, text, message):
    path = tmp_path / "broken.toml"
    path.write_text(HEAD + text)
    with pytest.raises(scenario.ScenarioError) as err:
        scenario.load(path)
    assert str(err.value) == str(path.parent) + "/" + message if message.endswith("cameras") \
        else message in str(err.value)


def test_an_outage_of_one_agent_says_which_when_there_are_several(tmp_path):
    path = tmp_path / "broken.toml"
    outage = "[[event]]\nat_s = 2\ndo = \"outage\"\nof = \"%s\"\n[[expect]]\nwhat = \"alert\"\n"
    path.write_text(HEAD + outage % "uplink")
    assert scenario.load(path).events[1].agent == "a"  # one agent: it is the one
    path.write_text(HEAD.replace("[[bell]]", "[[agent]]\nid = \"b\"\n[[bell]]") + outage % "local_broker")
    with pytest.raises(scenario.ScenarioError, match=r"broken.toml:13: \[\[event\]\] #2 agent: missing: an outage "
                       r"of local_broker is one agent's and there are 2: write agent = \"a\" \(one of a, b\)"):
        scenario.load(path)
    path.write_text(HEAD.replace("[[bell]]", "[[agent]]\nid = \"b\"\n[[bell]]") + outage % "center_broker")
    assert scenario.load(path).events[1].of == "center_broker"


def test_agent_settings_are_checked_as_the_agent_checks_its_config_before_anything_starts(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[agent]]\nid = \"a\"\n\n[[agent]]\nid = \"b\"\nat = { east = 5 }\n"
                    "settings = { center = { escalation = 2 } }\n[[expect]]\nwhat = \"alert\"\n")
    result = sim("run", path)
    assert result.returncode == 2 and result.stdout.startswith("ERROR "), result.stdout + result.stderr
    assert "broken.toml:7: [[agent]] #2 settings: [center] escalation: unknown key (did you mean escalation_s?)" \
        in result.stdout
    path.write_text('[[agent]]\nid = "a"\nsettings = { center = { escalation_s = 0 } }\n[[expect]]\nwhat = "alert"\n')
    with pytest.raises(scenario.ScenarioError, match=r"broken.toml:3: \[\[agent\]\] #1 settings: \[center\] "
                       r"escalation_s: must be between 1 and 3600"):
        scenario.load(path)
    path.write_text("[place]\nfallback = \"jung-gu\"\n[[agent]]\nid = \"a\"\n[[expect]]\nwhat = \"alert\"\n")
    with pytest.raises(scenario.ScenarioError, match=r"broken.toml:2: \[place\] fallback: 'jung-gu' is also the "
                       r"district"):
        scenario.load(path)


def test_path_loss_model_is_reproducible_and_has_a_range():
    a, b = PathLoss(seed=3), PathLoss(seed=3)
    assert [a.rssi(30) for _ in range(20)] == [b.rssi(30) for _ in range(20)]
    quiet = PathLoss(sigma=0)
    assert quiet.rssi(1) == -59 and quiet.rssi(10) == -81
    assert quiet.rssi(quiet.range_m() * 1.1) is None and quiet.rssi(quiet.range_m() * 0.9) is not None


def test_fused_position_leans_to_the_stronger_receiver():
    place = Place((37.5663, 126.9779))
    west, east = place.latlon(0, 0), place.latlon(60, 0)
    assert locate.fuse([]) is None
    assert locate.fuse([(*west, -70)]) == pytest.approx(west)
    fused = locate.fuse([(*west, -70), (*east, -90)])
    east_m, _ = place.metres(*fused)
    assert 0 < east_m < 10  # nearer the one that heard it at -70 dBm
    assert locate.fuse([(*west, -80), (*east, -80)]) == pytest.approx(place.latlon(30, 0), abs=1e-7)


def test_sim_load_loses_nothing_and_its_numbers_are_counts(tmp_path):
    out = tmp_path / "load.json"
    result = sim("load", "--devices", 200, "--rate", 100, "--duration", 3, "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = json.loads(out.read_text())
    for run in ("agent", "baseline"):
        r = numbers[run]
        assert r["sent"] == 300 and r["received"] == 300 and r["lost"] == 0 and r["duplicates"] == 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert "sent 300, received 300, lost 0, duplicates 0" in result.stdout
    assert "p99 %7.1f ms" % numbers["agent"]["p99_ms"] in result.stdout


def test_the_documented_example_holds(tmp_path):
    """The annotated example of simulators/scenarios/README.md, as a tester would copy it."""
    readme = (SCENARIOS / "README.md").read_text()
    example = tmp_path / "example.toml"
    example.write_text(readme.split("```toml\n", 1)[1].split("```", 1)[0])
    result = sim("run", example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 4


def fused_and_single_errors(agents_m, trials=2000, seed=1):
    """Errors (m) of the fused estimate and of the strongest receiver's position, for random
    wearable positions around ``agents_m`` (east, north), under the scenarios' radio model."""
    import random
    place, model, rng = Place((37.5663, 126.9779)), PathLoss(seed=2), random.Random(seed)
    fused, single = [], []
    for _ in range(trials):
        east, north = rng.uniform(0, 60), rng.uniform(-10, 20)
        receptions = [(*place.latlon(*a), rssi) for a in agents_m
                      if (rssi := model.rssi(((a[0] - east) ** 2 + (a[1] - north) ** 2) ** 0.5)) is not None]
        if receptions:
            truth = place.latlon(east, north)
            fused.append(place.distance_m(locate.fuse(receptions), truth))
            single.append(place.distance_m(max(receptions, key=lambda r: r[2])[:2], truth))
    return sorted(fused), sorted(single)


def test_fused_position_is_better_than_one_receiver_under_the_model():
    """The numbers in simulators/scenarios/README.md ("How accurate the fused position is")."""
    for agents, fused_median, single_median in (([(0, 0), (60, 0)], 13, 19), ([(0, 0), (60, 0), (30, 50)], 11, 19)):
        fused, single = fused_and_single_errors(agents)
        assert round(fused[len(fused) // 2]) == fused_median and round(single[len(single) // 2]) == single_median



def _judge(tmp_path, expects):
    """A Judge over a one-agent scenario with wearables w and v, a bell b and the given [[expect]]s."""
    from ansim_simulators.world.expect import Judge, Record
    path = tmp_path / "judged.toml"
    path.write_text("[scenario]\nduration_s = 10\n[[agent]]\nid = \"edge-a\"\n[[wearable]]\nname = \"w\"\n"
                    "at = { east = 1 }\n[[wearable]]\nname = \"v\"\nat = { east = 2 }\n[[bell]]\nname = \"b\"\n"
                    "at = { east = 3 }\n" + expects)
    s = scenario.load(path)
    record = Record()
    return Judge(s, record, {}, {"edge-a": s.place.origin}, start=1000.0), record


def _alert(kind, device, n):
    return {"type": kind, "alert_id": "%s-%d" % (device, n), "device": {"id": device}, "agent": {"id": "edge-a"},
            "location": {"source": "gnss"}}


def test_an_ack_that_fails_says_which_acks_did_reach_the_device(tmp_path, capsys):
    from types import SimpleNamespace
    judge, record = _judge(tmp_path, '[[expect]]\nwhat = "ack"\ndevice = "w"\nstatus = "dispatched"\n'
                                     '[[expect]]\nwhat = "ack"\ndevice = "b"\nstatus = "resolved"\n'
                                     '[[expect]]\nwhat = "ack"\ndevice = "v"\n')
    record.wearable_acks.append((1001.03, "w", "received"))
    record.commands.append((1002.5, "b", SimpleNamespace(kind="center_ack", fields={"status": "received"})))
    judge.step(1011, final=True)
    lines = capsys.readouterr().out.splitlines()
    assert "no center_ack dispatched reached w in the window; it got: received at +1.03 s" in lines[0]
    assert "no center_ack resolved reached b in the window; it got: received at +2.50 s" in lines[1]
    assert "no center_ack reached v in the window; it got no ack at all" in lines[2]


def test_an_alert_that_fails_shows_the_alerts_of_its_device_and_type_first(tmp_path, capsys):
    judge, record = _judge(tmp_path, '[[expect]]\nwhat = "alert"\ntype = "sos"\ndevice = "w"\nlocation = "receiver"\n'
                                     '[[expect]]\nwhat = "alert"\ntype = "sos"\ndevice = "v"\n')
    record.alerts += [(1001.0 + n, "jung-gu", _alert("bell_press", "00020001", n)) for n in range(1, 7)]
    record.alerts.append((1008.0, "jung-gu", _alert("sos", "00010001", 1)))
    judge.step(1011, final=True)
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("none arrived; seen: sos 00010001-1 from edge-a at +8.00 s (jung-gu, location gnss) "
                          "(and 6 unrelated alerts)"), first
    assert "none arrived; seen: no sos of v alert at all; unrelated: bell_press 00020001-1 from edge-a at +2.00 s " \
        "(jung-gu); bell_press 00020001-2" in second and second.endswith("(+4)"), second

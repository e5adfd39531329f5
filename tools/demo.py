"""``ansim demo``: the headline story, from a scenario file, with the console's map live.

    ansim demo [--scenario FILE] [--headless] [--http-port 8080]
    ansim demo --firmware        the real firmware on virtual boards (demo_story)

The story is ``simulators/scenarios/demo.toml`` (copy and change it): the scenario runner
(``ansim sim run``) plays it on real agents and brokers and prints its own lines; the
control-center console runs in this process against the scenario's center broker, its URL
printed first, so the map shows the story as it happens. At the end each ``[[expect]]``'s
``narrate`` line is told with the time the runner measured. Without ``--headless`` and with a
terminal (stdin and stdout) it waits for Enter (or Ctrl-C) before tearing down, the street's
bells and lights going on with their heartbeats meanwhile so that the map does not fill with
devices reported offline; exit 0 if every expectation held, 1 if one did not, 2 if the file is
not a valid scenario.

The simulators and their test-only dependencies load only when the command runs."""

import errno
import os
import re
import sys
import threading
import time


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the headline story (simulators/scenarios/demo.toml) with the console's "
                              "map live; --firmware: the real firmware on virtual boards")
    p.add_argument("--scenario", metavar="FILE", help="the scenario to tell (default: simulators/scenarios/demo.toml)")
    p.add_argument("--headless", action="store_true",
                   help="exit when the story ends (no waiting for Enter, no browser): for CI")
    p.add_argument("--http-port", type=int, default=8080,
                   help="the console page's port on 127.0.0.1 (default 8080, any free one if it is taken; 0: any)")
    p.add_argument("--firmware", action="store_true",
                   help="instead: the real firmware on 4 virtual boards, the story of tools/demo_story.py")
    p.set_defaults(run=run)


def default_scenario():
    import ansim_simulators
    from pathlib import Path
    return Path(ansim_simulators.__file__).resolve().parent / "scenarios" / "demo.toml"


def run(args):
    if args.firmware:
        from . import demo_story
        return demo_story.run(args)
    return run_scenario(args.scenario or default_scenario(), headless=args.headless, http_port=args.http_port)


def run_scenario(path, headless=False, http_port=8080):
    from ansim_simulators.world.scenario import ScenarioError, load

    from .console.model import Console
    from .console.web import ConsoleServer

    try:
        scenario = load(path)
    except ScenarioError as err:
        print("ERROR %s" % err, flush=True)
        return 2
    console = Console()
    try:
        server = ConsoleServer(("127.0.0.1", http_port), console, None)
    except OSError as err:
        if err.errno != errno.EADDRINUSE or http_port == 0:
            print("ansim demo: cannot serve the console on 127.0.0.1:%d: %s" % (http_port, err), file=sys.stderr)
            return 2
        server = ConsoleServer(("127.0.0.1", 0), console, None)
    server.serve_in_thread()
    wait = not headless and all(f is not None and f.isatty() for f in (sys.stdin, sys.stdout))  # a person
    print("console: %s  (the map shows the story live)" % server.url, flush=True)
    if wait and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import webbrowser
        webbrowser.open(server.url)
    try:
        return 0 if demo_world(scenario, console, server, wait).run() else 1
    finally:
        server.close()


def demo_world(scenario, console, server, wait):
    """The runner's ``World`` with the console linked to its center broker once that is up,
    and the narration (and the wait for Enter) before it tears everything down."""
    from ansim_simulators.world.runner import World

    from .console import site as site_module
    from .console.broker import CenterLink

    class DemoWorld(World):
        def _setup(self, stack, workdir):
            super()._setup(stack, workdir)
            try:
                console.site = site_module.load(workdir / "registry.toml")  # devices and cameras on the map
            except Exception as err:  # the map without them still shows alerts
                self.say("  (the console's map has no registry: %s)" % err)
            link = CenterLink(console, "127.0.0.1", self.center_broker.port, None,
                              client_id="ansim-demo-console-%d" % os.getpid(), on_event=lambda text: None)
            server.link = link
            link.start()
            stack.callback(link.stop)

        def _summary(self):
            super()._summary()
            judge = getattr(self, "judge", None)
            if judge is None:
                return
            with self.lock:
                alerts = list(self.record.alerts)
            self.say("")
            self.say("The story, as measured:")
            for line in narration(self.s, judge.verdicts, alerts, self.start_wall):
                self.say(line)
            failed = len(judge.failed()) + len(self.s.expects) - len(judge.verdicts)
            self.say("The story held: %d of %d steps as expected." % (len(self.s.expects), len(self.s.expects))
                     if not failed else "The story did not hold: %d of %d steps did not." % (failed,
                                                                                              len(self.s.expects)))
            if wait:
                self._wait_for_enter("\nThe map stays at %s: press Enter to end. " % server.url)

        def _wait_for_enter(self, prompt):
            from ansim_simulators.world import devices

            done = threading.Event()

            fixed = [device for device in self.devices.values() if isinstance(device, devices.Fixed)]

            def live():
                due = dict.fromkeys(fixed, 0.0)
                while not done.wait(1.0):
                    now = time.monotonic()
                    for device in fixed:
                        if due[device] <= now:
                            device.heartbeat()
                            due[device] = now + device.spec.heartbeat_s

            heartbeats = threading.Thread(target=live, name="demo-heartbeats", daemon=True)
            heartbeats.start()
            try:
                input(prompt)
            except (EOFError, KeyboardInterrupt):
                print()
            finally:
                done.set()
                heartbeats.join()

    return DemoWorld(scenario)


def narration(scenario, verdicts, alerts, start):
    """One line per ``[[expect]]`` that has ``narrate``, in file order, with the measured time
    (and for an alert, where the center was told it is and which cameras are near)."""
    lines = []
    for i, ex in enumerate(scenario.expects):
        if not ex.narrate:
            continue
        ok, text = verdicts.get(i, (False, "FAIL  not decided"))
        detail = text.split(": ", 2)[-1]
        lines.append("  %s %s: %s" % ("✓" if ok else "✗ DID NOT HOLD:", ex.narrate, measured(detail) if ok else detail))
        if ok and ex.what == "alert" and ex.count is None and ex.type in ("sos", "test_sos"):
            alert_id = re.search(r"\((\S+) from ", detail)
            body = next((b for _, _, b in alerts if alert_id and b.get("alert_id") == alert_id.group(1)), None)
            if body:
                lines.append("      %s" % where(body))
    return lines


def measured(detail):
    """The runner's measured time, as a story says it (the runner's detail, its ids left out)."""
    m = re.match(r"[\d.]+ s \(", detail)
    if m:  # an alert or an ack: "0.01 s (00010001-1 from edge-a)"
        return "after %s" % detail.split(" (", 1)[0]
    if re.fullmatch(r"[\d.]+ s", detail):
        return "after %s" % detail
    return re.sub(r" \([^)]*\)", "", detail)


def where(body):
    loc = body.get("location") or {}
    cams = [c.get("id") for c in body.get("cameras", [])][:3]
    place = ("at %.5f, %.5f ±%s m (%s)" % (loc["lat"], loc["lon"], round(loc["accuracy_m"])
                                          if loc.get("accuracy_m") is not None else "?", loc.get("source"))
             if "lat" in loc and "lon" in loc else "no location")
    return "%s; nearest cameras: %s" % (place, ", ".join(cams) or "none")

"""``ansim center``: the control-center console (see tools/console/__init__.py).

    ansim center --host center.example --port 8883 --tls --cafile ca.crt --certfile center.crt \\
        --keyfile center.key --registry site/registry.toml [--http-port 8080] [--headless]

Prints the page's URL, then one line per change (alert, its state, an ack's result, agent,
light, offline device, walk). Commands typed on the terminal do what the page's buttons do
(``help`` lists them). Exit status 2 for a setting that cannot work (a port outside 1-65535,
plain MQTT toward another machine without --allow-plaintext, missing or bad TLS files, a bad
registry, the HTTP port in use); an unreachable broker is retried, one line per attempt, until
the console is stopped.

Stopping (exit 0): Ctrl-C (SIGINT), SIGTERM, ``quit`` typed on its input, or Ctrl-D when that
input is a terminal. End of a non-terminal input (systemd, ``< /dev/null``, a closed pipe) only
ends the commands: the console and its page go on.
"""

import errno
import os
import signal
import sys
import threading
import time


def add_parser(subparsers):
    p = subparsers.add_parser("center", help="the control-center console: live alerts, a map on localhost, acks")
    p.add_argument("--host", default="127.0.0.1", help="the center's MQTT broker (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="its port (default 8883 with --tls, else 1883)")
    p.add_argument("--tls", action="store_true", help="TLS with a client certificate (--cafile --certfile --keyfile)")
    p.add_argument("--cafile", help="the CA that signed the broker's certificate (PEM)")
    p.add_argument("--certfile", help="the console's client certificate (PEM; its CN is the center's user)")
    p.add_argument("--keyfile", help="its private key (PEM)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="allow plain MQTT toward a broker that is not this machine (a lab network)")
    p.add_argument("--client-id", default="ansim-center-console",
                   help="MQTT client id: a persistent session, so alerts wait at the broker (a day) while the "
                        "console restarts; each console needs its own")
    p.add_argument("--registry", help="the site's registry.toml: devices, cameras and facilities on the map")
    p.add_argument("--http-host", default="127.0.0.1", help="where the page is served (default 127.0.0.1: this machine only)")
    p.add_argument("--http-port", type=int, default=8080, help="the page's port (default 8080; 0: any free one)")
    p.add_argument("--headless", action="store_true", help="never open a browser (the URL is printed either way)")
    p.set_defaults(run=run)


_OUT = threading.Lock()


def write(text):
    """Whole lines, one writer at a time: paho's, the page's and the input's threads all print."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def say(text):
    write("%s %s" % (time.strftime("%H:%M:%S"), text))


def describe(event, acks=True):
    """One terminal line for a model event, or None for those not worth a line (``acks``: an
    alert's line ends with its latest ack)."""
    kind, d = event["kind"], event["data"]
    if kind == "alert":
        loc = d["estimate"] or d["location"]
        where = ("%.5f,%.5f ±%s m (%s%s)" % (loc["lat"], loc["lon"], "?" if loc["accuracy_m"] is None
                                             else round(loc["accuracy_m"]), loc["source"],
                                             " of %d receivers" % loc["receivers"] if d["estimate"] else "")
                 if loc else "no location")
        cams = ",".join(c["id"] for c in d["cameras"][:3]) or "-"
        last = d["acks"][-1] if d["acks"] else None
        acked = " ack %s->%s %s" % (last["status"], last["agent"], last["result"]) if last and acks else ""
        return "ALERT %s %s %s %s at %s cameras %s via %s [%s]%s" % (
            d["alert_id"], d["type"], d["device"]["id"], d["device"]["name"], where, cams,
            ",".join(d["agents"]), d["state"], acked)
    if kind == "agent":
        return "AGENT %s %s session %d" % (d["agent"], d["state"], d["session"])
    if kind == "offline":
        return "OFFLINE %s (%s, last heard %s) via %s" % (d["device"], d["reason"], d["last_heard"], d["agent"])
    if kind == "online":
        return "ONLINE %s via %s" % (d["device"], d["agent"])
    if kind == "light":
        return "LIGHT %s %s %d%% (commanded %d%%)%s" % (d["device"], d["mode"], d["actual_pct"], d["commanded_pct"],
                                                       " faults %d" % d["faults"] if d["faults"] else "")
    if kind == "walk":
        return "WALK %s -> %s %s at %.5f,%.5f" % (d["session"], d["agent"], d["state"], *d["position"])
    if kind == "malformed":
        return "MALFORMED on %s (%s): ignored, %d on %s so far" % (d["topic"], d["reason"], d["count"], d["channel"])
    return None


class Lines:
    """The terminal's lines for model events: one per change. An alert's full line when it
    arrives or what it says changes, ``ALERT id now <state>`` when only its state moved, and
    one ``ACK`` line per ack once the broker answered it (or another center client sent it)."""

    def __init__(self):
        self._alerts = {}  # alert id -> (its last full line, {ack index: result printed})

    def lines(self, event):
        if event["kind"] == "forget":
            self._alerts.pop(event["data"]["alert_id"], None)
            return []
        if event["kind"] != "alert":
            line = describe(event)
            return [line] if line else []
        d = event["data"]
        full = describe(event, acks=False)
        last, printed = self._alerts.get(d["alert_id"], (None, {}))
        out = []
        if last is None:
            out.append(full)
        elif full != last:
            before, after = last.rsplit(" [", 1)[0], full.rsplit(" [", 1)[0]
            out.append("ALERT %s now %s" % (d["alert_id"], d["state"]) if before == after else full)
        for i, ack in enumerate(d["acks"]):
            if ack["result"] != "sent" and printed.get(i) != ack["result"]:
                printed[i] = ack["result"]
                out.append("ACK %s of %s to %s: %s" % (ack["status"], d["alert_id"], ack["agent"], ack["result"]))
        self._alerts[d["alert_id"]] = (full, printed)
        return out


COMMANDS = """commands:
  ack ID | dispatch ID | resolve ID          acknowledge, dispatch, resolve alert ID (to every agent that reported it)
  walk start SESSION AGENT LAT,LON LAT,LON...   start walk-home monitoring along the route
  walk update SESSION LAT,LON | walk stop SESSION | walk arrived SESSION
  alerts                                     the open alerts
  help                                       this list
  quit                                       stop the console (so do Ctrl-C and, on a terminal, Ctrl-D)"""
QUIT = ("quit", "exit")


def command(link, console, line, echo=True):
    """One terminal command; returns the line to print (``echo=False``: none for an ack that went
    out, whose state change and per-agent ``ACK`` lines the model's events print)."""
    words = line.split()
    if not words:
        return None
    try:
        if words[0] in ("ack", "dispatch", "resolve") and len(words) == 2:
            sent = link.act(words[1], words[0])
            if sent["agents"] and not echo:
                return None
            return "sent %s of %s to %s" % (sent["status"], sent["alert_id"], ", ".join(sent["agents"]) or "no agent")
        if words[0] == "walk" and len(words) >= 3:
            action, session = words[1], words[2]
            body = {"session": session, "action": action}
            if action == "start" and len(words) >= 4:
                body["agent"] = words[3]
                body["route"] = [[float(v) for v in p.split(",")] for p in words[4:]]
            elif action == "update" and len(words) == 4:
                body["position"] = [float(v) for v in words[3].split(",")]
            walk = link.monitor(body)
            return "walk %s %s sent to %s" % (walk["session"], action, walk["agent"])
        if words == ["alerts"]:
            open_ = [a for a in console.snapshot()["alerts"] if a["state"] != "resolved"]
            return "\n".join(describe({"kind": "alert", "data": a}) for a in open_) or "no open alerts"
    except KeyError as err:
        return "unknown alert or session %s" % err
    except ValueError as err:
        return "refused: %s" % err
    if words in (["help"], ["?"]):
        return COMMANDS
    if words[0] in ("ack", "dispatch", "resolve", "walk"):
        return "%s: wrong arguments\n%s" % (" ".join(words), COMMANDS)
    return "unknown command %s\n%s" % (words[0], COMMANDS)


def read_commands(link, console, stop, stdin):
    """The terminal's commands until ``quit`` (stops the console), or end of input: Ctrl-D on a
    terminal stops it too; the end of anything else (/dev/null, a pipe) leaves it running."""
    for line in stdin:
        if line.strip() in QUIT:
            stop.set()
            return
        answer = command(link, console, line, echo=False)
        if answer:
            write(answer)
    if stdin.isatty():
        stop.set()


def run(args):
    from ansim_agent.config import ConfigError, is_loopback

    from . import site as site_module
    from .broker import CenterLink, ConsoleError
    from .model import Console
    from .web import ConsoleServer

    def fail(text):
        print("ansim center: %s" % text, file=sys.stderr)
        return 2

    port = args.port or (8883 if args.tls else 1883)
    if not 1 <= port <= 65535:
        return fail("--port %d: a port is 1 to 65535 (the center's broker: 8883 with TLS, 1883 plain)" % port)
    if not 0 <= args.http_port <= 65535:
        return fail("--http-port %d: a port is 1 to 65535 (0: any free one)" % args.http_port)
    missing = [name for name, value in (("--cafile", args.cafile), ("--certfile", args.certfile),
                                        ("--keyfile", args.keyfile)) if not value]
    if args.tls and missing:
        return fail("--tls needs %s" % (" and ".join(missing) if len(missing) < 3
                                        else "--cafile, --certfile and --keyfile"))
    if not args.tls and not args.allow_plaintext and not is_loopback(args.host):
        return fail("plain MQTT toward %s, which is not this machine, would send alerts unencrypted: use --tls "
                    "with --cafile, --certfile and --keyfile, or --allow-plaintext on a lab network" % args.host)
    if not args.tls and (args.cafile or args.certfile or args.keyfile):
        return fail("--cafile, --certfile and --keyfile need --tls")
    console = Console()
    if args.registry:
        try:
            console.site = site_module.load(args.registry)
        except ConfigError as err:
            return fail(str(err))
    try:
        link = CenterLink(console, args.host, port, (args.cafile, args.certfile, args.keyfile) if args.tls else None,
                          client_id=args.client_id, on_event=say)
    except ConsoleError as err:
        return fail(str(err))
    try:
        server = ConsoleServer((args.http_host, args.http_port), console, link)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return fail("%s:%d is in use (another console?): pick another --http-port, or 0 for any free one"
                        % (args.http_host, args.http_port))
        return fail("cannot serve the page on %s:%d: %s" % (args.http_host, args.http_port, err.strerror or err))
    if not server.loopback:
        print("ansim center: warning: the page on %s has no login: anyone who can reach it can acknowledge, "
              "dispatch and resolve alerts and start walks; keep --http-host 127.0.0.1 unless that network is "
              "the operators' only" % server.url, file=sys.stderr, flush=True)
    lines = Lines()
    console.listen(lambda event: [say(line) for line in lines.lines(event)])
    stop = threading.Event()
    # Set explicitly: a shell without job control starts background commands with SIGINT
    # ignored, and Python then never raises KeyboardInterrupt, so Ctrl-C did nothing.
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say("console: %s (center broker %s:%d%s%s)" % (server.url, args.host, port, ", TLS" if args.tls else ", plain",
                                                   ", registry %s" % args.registry if args.registry else ""))
    server.serve_in_thread()
    link.start()
    threading.Thread(target=read_commands, args=(link, console, stop, sys.stdin), name="console-commands",
                     daemon=True).start()
    if not args.headless and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import webbrowser
        webbrowser.open(server.url)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
        server.close()
    say("console stopped")
    return 0

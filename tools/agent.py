"""``ansim agent``: run the edge agent, or show its state to a person at a terminal.

Exit status: 0; 1 when the agent could not start (or status found no state to show); 2 for
a bad configuration or registry, reported as one line on stderr naming the file, the key,
the problem and the fix.
"""

import getpass
import logging
import os
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ansim_agent import config as config_module
from ansim_agent import registry as registry_module
from ansim_agent.intake import IntakeUnavailable

STATES = (  # alert states in the store, as a person reads them
    ("pending", "waiting for the center (not delivered yet)"),
    ("delivered", "delivered, not yet acknowledged by the center"),
    ("acked", "acknowledged by the center"),
    ("closed", "closed"),
)
OFFLINE_SHOWN = 20


def add_parser(subparsers):
    p = subparsers.add_parser("agent", help="run the edge agent (or: agent status)",
                              description="Run the edge agent with a TOML config; "
                              "`ansim agent status --config FILE` shows its state.")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run")
    p.add_argument("--config", required=True, help="the agent's TOML file")
    p.set_defaults(run=run)


def run(args):
    try:
        config = config_module.load(args.config)
        if args.action == "run":
            preflight(config)
    except config_module.ConfigError as err:
        print("ansim agent: bad configuration: %s" % _one_line(err), file=sys.stderr)
        return 2
    if args.action == "status":
        return status(config)
    from ansim_agent import logs, service
    logs.setup(config.agent["log_level"])
    try:
        service.run(config)
    except (IntakeUnavailable, config_module.ConfigError, OSError) as err:
        logging.getLogger("ansim.agent").error("%s", err)
        print("ansim agent: cannot start: %s" % _one_line(err), file=sys.stderr)
        return 1
    return 0


def preflight(config):
    """What the agent would otherwise find out while starting, with a traceback: the registry
    and its key files, the TLS files, a free metrics port and a writable data directory."""
    registry_module.load(config.agent["registry"], config.supervision, config_source=config.source)
    config_module.check_tls_files(config)
    port = config.metrics["port"]
    if port:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server does
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as err:
                raise config_module.ConfigError(
                    "%s: [metrics] port: 127.0.0.1:%d is in use (%s): stop what uses it (another agent? "
                    "`ss -ltnp 'sport = :%d'`), or set another port (0 turns metrics off)"
                    % (config.source, port, err.strerror or err, port)) from None
    data_dir = config.agent["data_dir"]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise config_module.ConfigError("%s: [agent] data_dir: cannot create %s: %s: create it for the agent's "
                                        "user, or choose another directory" % (config.source, data_dir,
                                                                               err.strerror or err)) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise config_module.ConfigError("%s: [agent] data_dir: %s is not writable by %s: `chown %s %s`, or "
                                        "choose another directory" % (config.source, data_dir, _user(),
                                                                      _user(), data_dir))


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "this user"


def _one_line(err):
    return " ".join(str(err).split())


# -- status ------------------------------------------------------------------------------------


def status(config, now=None):
    now = time.time() if now is None else now
    db_path = config.agent["data_dir"] / "agent.db"
    print("agent %s (site %s)" % (config.agent["id"], config.agent["site"]))
    print("  config:  %s" % Path(config.source).resolve())
    print("  data:    %s" % db_path)
    print("  process: %s" % _process_state(config))
    if not db_path.exists():
        print("no alerts or devices recorded: %s does not exist (has the agent run with this config?)"
              % db_path)
        return 1
    try:
        counts, oldest, devices = _read_store(db_path)
    except sqlite3.Error as err:
        print("cannot read %s: %s (run as the agent's user, e.g. `sudo -u ansim ansim agent status ...`)"
              % (db_path, err))
        return 1
    print(_alerts_summary(counts, oldest, now))
    for state, label in STATES:
        if state != "closed" or counts.get(state):
            print("  %6d %s" % (counts.pop(state, 0), label))
    for state, count in sorted(counts.items()):
        print("  %6d %s" % (count, state))
    _print_devices(config, devices, now)
    return 0


def _read_store(db_path):
    """(alerts by state, {state: oldest created}, [(device_id, last_heard, offline)]), read-only."""
    db = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    try:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state"))
        oldest = dict(db.execute("SELECT state, MIN(created) FROM alerts WHERE state IN ('pending', 'delivered') "
                                 "GROUP BY state"))
        devices = db.execute("SELECT device_id, last_heard, offline FROM devices ORDER BY device_id").fetchall()
    finally:
        db.close()
    return counts, oldest, devices


def _alerts_summary(counts, oldest, now):
    waiting = counts.get("pending", 0)
    unacked = counts.get("delivered", 0)
    if waiting:
        return ("alerts: %d WAITING for the center, the oldest for %s (since %s)"
                % (waiting, _age(now - oldest["pending"]), _clock(oldest["pending"])))
    if unacked:
        return ("alerts: all delivered; %d not yet acknowledged by the center, the oldest for %s"
                % (unacked, _age(now - oldest["delivered"])))
    if counts:
        return "alerts: none waiting for the center or its acknowledgement"
    return "alerts: none recorded"


def _print_devices(config, devices, now):
    known, problem = _registered(config)
    heard = [d for d in devices if d[1] is not None]
    offline = [d for d in devices if d[2]]
    registered = "%d registered, " % len(known) if known is not None else ""
    print("devices: %s%d heard, %d offline" % (registered, len(heard), len(offline)))
    if problem:
        print("  registry: %s" % problem)
    for device_id, last_heard, _ in offline[:OFFLINE_SHOWN]:
        role, name = (known or {}).get(device_id, ("unregistered", ""))
        print("  offline: %08x %s%s, last heard %s" % (device_id, role, ' "%s"' % name if name else "",
                                                      "%s ago" % _age(now - last_heard) if last_heard else "never"))
    if len(offline) > OFFLINE_SHOWN:
        print("  ... and %d more offline" % (len(offline) - OFFLINE_SHOWN))


def _registered(config):
    """({device_id: (role, name)}, None) from the registry's text (its key files are the
    agent's alone, so they are not read here), or (None, the problem)."""
    try:
        raw = config_module.read_toml(config.agent["registry"], "fix [agent] registry in %s" % config.source)
    except config_module.ConfigError as err:
        return None, _one_line(err)
    known = {}
    for entry in raw.get("device", []):
        try:
            known[int(entry["id"], 16)] = (entry.get("role", "?"), entry.get("name", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return known, None


def _process_state(config):
    """Whether the agent answers on its metrics port, and whether it has the center."""
    port = config.metrics["port"]
    if not port:
        return "unknown ([metrics] port = 0; try `systemctl status ansim-agent`)"
    url = "http://127.0.0.1:%d/metrics" % port
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return "not running (nothing answers on %s)" % url
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("ansim_center_connected", "ansim_outbox_depth"):
            values[name] = float(value)
    if "ansim_center_connected" not in values:
        return "unknown (%s answers, but not with an agent's metrics)" % url
    center = "%s:%d" % (config.center["host"], config.center["port"])
    if values["ansim_center_connected"]:
        return "running, connected to the center %s" % center
    return "running, NOT connected to the center %s: alerts wait in the outbox" % center


def _age(seconds):
    seconds = max(0, int(seconds))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %d s" % divmod(seconds, 60)
    if seconds < 86400:
        return "%d h %d min" % (seconds // 3600, seconds % 3600 // 60)
    return "%d d %d h" % (seconds // 86400, seconds % 86400 // 3600)


def _clock(timestamp):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))

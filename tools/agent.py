"""``ansim agent``: run the edge agent, or show its state to a person at a terminal (or to a
monitoring script).

    ansim agent run    --config FILE
    ansim agent status --config FILE [--json]
    ansim agent alerts --config FILE [--state S] [--limit N] [--json]

Exit status of ``run``: 0 stopped; 1 could not start; 2 a bad configuration or registry, or
another agent already uses the same ``[agent] data_dir``, reported as one line on stderr
naming the file, the key, the problem and the fix; 70 after an internal fault (systemd
restarts the agent).

Exit status of ``status`` (the same with ``--json``):

- 0: running and healthy: every component it reports on /metrics (``ansim_up``) is up,
  the center is connected, and no alert has waited for the center longer than
  ``[center] escalation_s``;
- 1: not running (nothing answers on the metrics port and no process holds the data
  directory), or no state to show (the agent never ran with this config);
- 2: a bad configuration (one line on stderr);
- 3: running but degraded: a component down (``DOWN: <component>`` at the top), the center
  not connected, alerts waiting for the center longer than ``escalation_s``, the agent's
  metrics not answering, or its store unreadable.

With ``[metrics] port = 0`` only the data directory's lock and the store are checked.

Exit status of ``alerts``: 0 (also when no alert matches); 1 no store, or it cannot be read;
2 a bad configuration or an unknown ``--state``.

``status`` and ``alerts`` only read: the store is opened read-only, nothing is created.
"""

import argparse
import datetime
import getpass
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ansim_agent import config as config_module
from ansim_agent import datadir_lock
from ansim_agent import registry as registry_module
from ansim_agent.intake import IntakeUnavailable
from ansim_agent.store import StorageError

EXIT_OK, EXIT_NOT_RUNNING, EXIT_CONFIG, EXIT_DEGRADED = 0, 1, 2, 3

STATES = (  # alert states in the store, as a person reads them
    ("pending", "waiting for the center (not delivered yet)"),
    ("delivered", "delivered, not yet acknowledged by the center"),
    ("acked", "acknowledged by the center"),
    ("closed", "closed"),
)
OFFLINE_SHOWN = 20
ALERTS_SHOWN = 50


def add_parser(subparsers):
    p = subparsers.add_parser("agent", help="run the edge agent (or: agent status, agent alerts)",
                              description="Run the edge agent with a TOML config; "
                              "`ansim agent status --config FILE` shows its state (exit 0 running and "
                              "healthy, 1 not running, 2 bad config, 3 running but degraded); "
                              "`ansim agent alerts --config FILE` lists its alerts.")
    p.add_argument("action", nargs="?", choices=("run", "status", "alerts"), default="run")
    p.add_argument("--config", required=True, help="the agent's TOML file")
    p.add_argument("--json", action="store_true", help="status, alerts: one JSON object on stdout")
    p.add_argument("--state", help="alerts: only those in this state (pending, delivered, acked, closed)")
    p.add_argument("--limit", type=_positive, default=None,
                   help="alerts: the newest N (default %d)" % ALERTS_SHOWN)
    p.set_defaults(run=run)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1, got %r" % text)
    return value


def run(args):
    misplaced = [flag for flag, given, actions in (("--json", args.json, ("status", "alerts")),
                                                   ("--state", args.state is not None, ("alerts",)),
                                                   ("--limit", args.limit is not None, ("alerts",)))
                 if given and args.action not in actions]
    if misplaced:
        print("ansim agent: %s does not go with `ansim agent %s`: it is an option of `ansim agent %s`"
              % (misplaced[0], args.action, "alerts" if misplaced[0] != "--json" else "status` or `alerts"),
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = config_module.load(args.config)
        if args.action == "run":
            preflight(config)
    except config_module.ConfigError as err:
        print("ansim agent: bad configuration: %s" % _one_line(err), file=sys.stderr)
        return EXIT_CONFIG
    except StorageError as err:
        print("ansim agent: cannot start: %s" % _one_line(err), file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.action == "status":
        return status(config, as_json=args.json)
    if args.action == "alerts":
        return alerts(config, state=args.state, limit=args.limit or ALERTS_SHOWN, as_json=args.json)
    data_dir = config.agent["data_dir"]
    try:
        lock = datadir_lock.DataDirLock(data_dir).acquire()  # held for the life of the process
    except datadir_lock.DataDirBusy as err:
        print("ansim agent: %s" % err, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:
        print("ansim agent: cannot start: cannot lock %s: %s: check the data directory (`ls -l %s`)"
              % (data_dir / datadir_lock.LOCK_NAME, err.strerror or err, data_dir), file=sys.stderr)
        return EXIT_NOT_RUNNING
    from ansim_agent import logs, service
    try:
        logs.setup(config.agent["log_level"])
        try:
            code = service.run(config)
        except (IntakeUnavailable, config_module.ConfigError, StorageError, OSError) as err:
            logging.getLogger("ansim.agent").error("%s", err)
            print("ansim agent: cannot start: %s" % _one_line(err), file=sys.stderr)
            return EXIT_NOT_RUNNING
        return code or EXIT_OK
    finally:
        lock.release()


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
    if os.statvfs(data_dir).f_flag & os.ST_RDONLY:
        raise StorageError("[agent] data_dir %s: the filesystem holding it is mounted read-only (often after disk "
                           "errors: check `dmesg`, run fsck, then `mount -o remount,rw`), or choose another "
                           "directory" % data_dir)
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


def status(config, now=None, as_json=False):
    """Print the agent's state (text, or one JSON object) and return the exit status."""
    facts = gather(config, time.time() if now is None else now)
    if as_json:
        print(json.dumps(facts, indent=2))
    else:
        _print_status(config, facts)
    return facts["exit_status"]


def gather(config, now):
    """Everything status shows, as a JSON-ready dict; ``exit_status`` and ``problems`` say
    what a monitoring script should act on."""
    data_dir = config.agent["data_dir"]
    db_path = data_dir / "agent.db"
    process = _probe_process(config)
    facts = {
        "agent": config.agent["id"],
        "site": config.agent["site"],
        "config": str(Path(config.source).resolve()),
        "data": str(db_path),
        "process": process,
        "components": process.pop("components"),
        "center": {"host": config.center["host"], "port": config.center["port"],
                   "connected": process.pop("center_connected")},
        "store": {"exists": db_path.exists(), "error": None},
        "alerts": None,
        "devices": None,
    }
    running = process["state"] == "running"
    problems = ["DOWN: %s" % name for name, state in facts["components"].items() if state == "down"]
    if running and process["metrics"] == "not answering":
        problems.append("its metrics do not answer on %s" % process["metrics_url"])
    if facts["center"]["connected"] is False:
        problems.append("not connected to the center %s:%d" % (config.center["host"], config.center["port"]))
    if facts["store"]["exists"]:
        try:
            counts, oldest, late, devices = _read_store(db_path, now - config.center["escalation_s"])
        except sqlite3.Error as err:
            facts["store"]["error"] = store_problem(db_path, err)
            problems.append(facts["store"]["error"])
        else:
            facts["alerts"] = {
                "by_state": counts,
                "waiting": counts.get("pending", 0),
                "oldest_waiting": _since(oldest.get("pending"), now),
                "unacknowledged": counts.get("delivered", 0),
                "oldest_unacknowledged": _since(oldest.get("delivered"), now),
                "escalation_s": config.center["escalation_s"],
                "waiting_past_escalation": late,
            }
            if late:
                problems.append("%d alert%s waiting for the center longer than [center] escalation_s (%d s)"
                                % (late, "s" if late > 1 else "", config.center["escalation_s"]))
            facts["devices"] = _devices(config, devices, now)
    elif running:
        problems.append("%s does not exist" % db_path)
    facts["problems"] = problems
    if not running:
        facts["health"], facts["exit_status"] = "not running", EXIT_NOT_RUNNING
    elif problems:
        facts["health"], facts["exit_status"] = "degraded", EXIT_DEGRADED
    else:
        facts["health"], facts["exit_status"] = "healthy", EXIT_OK
    return facts


def _since(created, now):
    if created is None:
        return None
    return {"since": _iso(created), "age_s": max(0, int(now - created))}


def _print_status(config, facts):
    for name, state in facts["components"].items():
        if state == "down":
            print("DOWN: %s" % name)
    print("agent %s (site %s)" % (facts["agent"], facts["site"]))
    print("  config:  %s" % facts["config"])
    print("  data:    %s" % facts["data"])
    print("  process: %s" % facts["process"]["detail"])
    if facts["components"]:
        print("  parts:   %s" % ", ".join("%s %s" % (name, "up" if state == "up" else "DOWN")
                                         for name, state in facts["components"].items()))
    if not facts["store"]["exists"]:
        print("no alerts or devices recorded: %s does not exist (has the agent run with this config?)"
              % facts["data"])
    elif facts["store"]["error"]:
        print(facts["store"]["error"])
    else:
        alerts = facts["alerts"]
        counts = dict(alerts["by_state"])
        print(_alerts_summary(alerts))
        for state, label in STATES:
            if state != "closed" or counts.get(state):
                print("  %6d %s" % (counts.pop(state, 0), label))
        for state, count in sorted(counts.items()):
            print("  %6d %s" % (count, state))
        _print_devices(facts["devices"])
    if facts["exit_status"] == EXIT_DEGRADED:
        print("health: DEGRADED: %s" % "; ".join(facts["problems"]))
    elif facts["exit_status"] == EXIT_OK:
        print("health: ok")


def _read_store(db_path, late_before):
    """(alerts by state, {state: oldest created}, alerts pending since before ``late_before``,
    [(device_id, last_heard, offline)]), read-only."""
    db = _open_ro(db_path)
    try:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state"))
        oldest = dict(db.execute("SELECT state, MIN(created) FROM alerts WHERE state IN ('pending', 'delivered') "
                                 "GROUP BY state"))
        late = db.execute("SELECT COUNT(*) FROM alerts WHERE state = 'pending' AND created < ?",
                          (late_before,)).fetchone()[0]
        devices = db.execute("SELECT device_id, last_heard, offline FROM devices ORDER BY device_id").fetchall()
    finally:
        db.close()
    return counts, oldest, late, devices


def _open_ro(db_path):
    return sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)


def store_problem(db_path, err, action="status"):
    """One line: what is wrong with the agent's store and what to do about it."""
    text = str(err)
    name = getattr(err, "sqlite_errorname", "") or ""
    if db_path.is_dir():
        return ("cannot read %s: it is a directory, not the agent's database: move it aside "
                "(`mv %s %s.broken`) and restart the agent" % (db_path, db_path, db_path))
    if "file is not a database" in text or "malformed" in text or name.startswith("SQLITE_CORRUPT") \
            or name == "SQLITE_NOTADB":
        return ("cannot read %s: the file is damaged (%s): move it aside (`mv %s %s.broken`) and restart the "
                "agent, which starts a new one; alerts not delivered from it are then lost; keep the file "
                "for analysis" % (db_path, text, db_path, db_path))
    run_as = "run as the agent's user, e.g. `sudo -u ansim ansim agent %s ...`"
    try:
        os.close(os.open(db_path, os.O_RDONLY))
    except PermissionError:
        return "cannot read %s: permission denied for %s: %s" % (db_path, _user(), run_as % action)
    except OSError:
        pass
    try:
        read_only_fs = bool(os.statvfs(db_path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    if read_only_fs:
        return ("cannot read %s (%s): its file system is mounted read-only, and SQLite must create %s-shm "
                "beside a database in WAL mode to read it (the agent cannot write there either): find out why "
                "(`dmesg`: a failing disk or SD card is remounted read-only), then remount it read-write"
                % (db_path, text, db_path.name))
    if name == "SQLITE_READONLY_DIRECTORY" or "readonly" in text:
        return ("cannot read %s: %s cannot create %s-shm beside it, which SQLite needs to read a database in "
                "WAL mode (%s): %s" % (db_path, _user(), db_path.name, text, run_as % action))
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return "cannot read %s: %s: %s" % (db_path, text, run_as % action)
    if "no such table" in text:
        return ("cannot read %s: %s: it is not the agent's store (or one from another version); check "
                "[agent] data_dir" % (db_path, text))
    if "locked" in text or "busy" in text:
        return "cannot read %s: %s: the agent is writing a long transaction; try again" % (db_path, text)
    return "cannot read %s: %s: check the file and its disk (`ls -l %s`, `dmesg`)" % (db_path, text, db_path)


def _alerts_summary(alerts):
    waiting, unacked = alerts["waiting"], alerts["unacknowledged"]
    if waiting:
        oldest = alerts["oldest_waiting"]
        return ("alerts: %d WAITING for the center, the oldest for %s (since %s)"
                % (waiting, _age(oldest["age_s"]), _clock_iso(oldest["since"])))
    if unacked:
        return ("alerts: all delivered; %d not yet acknowledged by the center, the oldest for %s"
                % (unacked, _age(alerts["oldest_unacknowledged"]["age_s"])))
    if alerts["by_state"]:
        return "alerts: none waiting for the center or its acknowledgement"
    return "alerts: none recorded"


def _devices(config, rows, now):
    known, problem = _registered(config)
    offline = []
    for device_id, last_heard, is_offline in rows:
        if is_offline:
            role, name = (known or {}).get(device_id, ("unregistered", ""))
            offline.append({"id": "%08x" % device_id, "role": role, "name": name,
                            "last_heard": _iso(last_heard) if last_heard else None,
                            "silent_s": max(0, int(now - last_heard)) if last_heard else None})
    return {"registered": len(known) if known is not None else None,
            "heard": sum(1 for row in rows if row[1] is not None),
            "offline": len(offline), "offline_devices": offline, "registry_problem": problem}


def _print_devices(devices):
    registered = "%d registered, " % devices["registered"] if devices["registered"] is not None else ""
    print("devices: %s%d heard, %d offline" % (registered, devices["heard"], devices["offline"]))
    if devices["registry_problem"]:
        print("  registry: %s" % devices["registry_problem"])
    for device in devices["offline_devices"][:OFFLINE_SHOWN]:
        print("  offline: %s %s%s, last heard %s"
              % (device["id"], device["role"], ' "%s"' % device["name"] if device["name"] else "",
                 "%s ago" % _age(device["silent_s"]) if device["last_heard"] else "never"))
    if devices["offline"] > OFFLINE_SHOWN:
        print("  ... and %d more offline" % (devices["offline"] - OFFLINE_SHOWN))


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


_UP_SAMPLE = re.compile(r'^ansim_up\{(?:[^}]*,)?component="([^"]*)"[^}]*\}\s+(\S+)')


def _probe_process(config):
    """Whether the agent runs (its /metrics, else the data directory's lock), which of its
    components are up, and whether it has the center."""
    port = config.metrics["port"]
    url = "http://127.0.0.1:%d/metrics" % port if port else None
    pid = datadir_lock.holder(config.agent["data_dir"])
    process = {"state": "not running", "pid": pid, "metrics_url": url, "metrics": "off" if not port else None,
               "detail": None, "components": {}, "center_connected": None}
    by_pid = "pid %s holds the data directory" % pid if pid else "a process holds the data directory"
    if not port:
        if pid is not None:
            process.update(state="running", detail="running (%s; [metrics] port = 0: its health is unknown)"
                           % by_pid)
        else:
            process["detail"] = ("not running (no process holds the data directory; [metrics] port = 0; "
                                 "`systemctl status ansim-agent` says more)")
        return process
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        process["metrics"] = "not answering"
        if pid is not None:
            process.update(state="running", detail="running (%s), but nothing answers on %s: starting, or stuck? "
                           "(`journalctl -u ansim-agent`)" % (by_pid, url))
        else:
            process["detail"] = "not running (nothing answers on %s)" % url
        return process
    connected = None
    for line in text.splitlines():
        match = _UP_SAMPLE.match(line)
        if match:
            process["components"][match.group(1)] = "up" if _number(match.group(2)) else "down"
            continue
        name, _, value = line.partition(" ")
        if name == "ansim_center_connected":
            connected = bool(_number(value))
    if connected is None:
        process.update(metrics="foreign", detail="unknown (%s answers, but not with an agent's metrics)" % url)
        if pid is not None:
            process.update(state="running", metrics="not answering",
                           detail="running (%s), but %s answers without an agent's metrics" % (by_pid, url))
        process["components"] = {}
        return process
    process.update(state="running", metrics="answering", center_connected=connected)
    center = "%s:%d" % (config.center["host"], config.center["port"])
    if connected:
        process["detail"] = "running, connected to the center %s" % center
    else:
        process["detail"] = "running, NOT connected to the center %s: alerts wait in the outbox" % center
    return process


def _number(text):
    try:
        return float(text)
    except ValueError:
        return 0.0


# -- alerts ------------------------------------------------------------------------------------

ALERT_COLUMNS = ("seq", "alert_id", "device_id", "created", "body", "state", "delivered_at", "acked_at", "escalated")


def alerts(config, state=None, limit=ALERTS_SHOWN, as_json=False):
    """List the newest alerts in the store (read-only): no coordinates, no keys."""
    db_path = config.agent["data_dir"] / "agent.db"
    if not db_path.exists():
        print("ansim agent: no alerts recorded: %s does not exist (has the agent run with this config?)" % db_path,
              file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        counts, rows = _read_alerts(db_path, state, limit)
    except sqlite3.Error as err:
        print("ansim agent: %s" % store_problem(db_path, err, "alerts"), file=sys.stderr)
        return EXIT_NOT_RUNNING
    known = [name for name, _ in STATES] + sorted(set(counts) - {name for name, _ in STATES})
    if state is not None and state not in known:
        print("ansim agent: --state %s: no such state%s: the states are %s"
              % (state, config_module.did_you_mean(state, known), ", ".join(known)), file=sys.stderr)
        return EXIT_CONFIG
    matching = counts.get(state, 0) if state is not None else sum(counts.values())
    listed = [_alert_row(row) for row in rows]
    if as_json:
        print(json.dumps({"agent": config.agent["id"], "data": str(db_path), "state": state,
                          "matching": matching, "shown": len(listed), "alerts": listed}, indent=2))
        return EXIT_OK
    if not listed:
        print("no alerts%s in %s%s" % (" in state %s" % state if state else "", db_path,
                                       "" if not counts else " (by state: %s)"
                                       % ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
        return EXIT_OK
    header = ("alert_id", "type", "device", "state", "created", "delivered", "acked", "escalated")
    table = [header] + [(a["alert_id"], a["type"] or "?", a["device"], a["state"], _clock_iso(a["created"]),
                         _clock_iso(a["delivered_at"]), _clock_iso(a["acked_at"]),
                         "yes" if a["escalated"] else "no") for a in listed]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    more = matching - len(listed)
    print("%d alert%s%s, newest first%s" % (len(listed), "" if len(listed) == 1 else "s",
                                            " in state %s" % state if state else "",
                                            "; %d older not shown (--limit)" % more if more > 0 else ""))
    return EXIT_OK


def _read_alerts(db_path, state, limit):
    """({state: count}, the newest ``limit`` rows as dicts of ALERT_COLUMNS); a column the store
    lacks reads as None, and columns added later are not read."""
    db = _open_ro(db_path)
    try:
        present = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
        if not present:
            raise sqlite3.OperationalError("no such table: alerts")
        columns = ", ".join(name if name in present else "NULL" for name in ALERT_COLUMNS)
        where, args = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        order = "seq DESC" if "seq" in present else "rowid DESC"
        rows = db.execute("SELECT %s FROM alerts %s ORDER BY %s LIMIT ?" % (columns, where, order),
                          args + (limit,)).fetchall()
        counts = dict(db.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state"))
    finally:
        db.close()
    return counts, [dict(zip(ALERT_COLUMNS, row)) for row in rows]


def _alert_row(row):
    try:
        kind = json.loads(row["body"]).get("type")
    except (TypeError, ValueError, AttributeError):
        kind = None
    device = row["device_id"]
    return {"alert_id": row["alert_id"], "type": kind if isinstance(kind, str) else None,
            "device": "%08x" % device if isinstance(device, int) else device,
            "state": row["state"], "created": _iso(row["created"]), "delivered_at": _iso(row["delivered_at"]),
            "acked_at": _iso(row["acked_at"]), "escalated": bool(row["escalated"])}


def _iso(timestamp):
    if not isinstance(timestamp, (int, float)):
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="milliseconds")


def _clock_iso(iso):
    if iso is None:
        return "-"
    return _clock(datetime.datetime.fromisoformat(iso).timestamp())


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

"""``ansim agent``: run the edge agent, or show its state to a person at a terminal."""

import logging
import sys

from ansim_agent import config as config_module
from ansim_agent.intake import IntakeUnavailable


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
    except config_module.ConfigError as err:
        print("ansim agent: bad configuration: %s" % err, file=sys.stderr)
        return 2
    if args.action == "status":
        return status(config)
    from ansim_agent import logs, service
    logs.setup(config.agent["log_level"])
    try:
        service.run(config)
    except (IntakeUnavailable, config_module.ConfigError) as err:
        logging.getLogger("ansim.agent").error("%s", err)
        print("ansim agent: %s" % err, file=sys.stderr)
        return 1
    return 0


def status(config):
    from ansim_agent.store import Store
    store = Store(config.agent["data_dir"] / "agent.db")
    try:
        counts = store.state_counts()
        heard = store.last_heard()
        offline = store.offline_devices()
    finally:
        store.close()
    print("agent %s (%s)" % (config.agent["id"], config.agent["site"]))
    print("alerts: %d waiting for the center, %d delivered, %d acknowledged"
          % (counts.get("pending", 0), counts.get("delivered", 0), counts.get("acked", 0)))
    print("devices heard: %d, offline: %d" % (len(heard), len(offline)))
    for device_id in sorted(offline):
        print("  offline: %08x" % device_id)
    return 0

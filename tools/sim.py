"""``ansim sim run SCENARIO.toml...`` and ``ansim sim load``: the simulated district
(simulators/world; the scenario format is simulators/scenarios/README.md)."""


def add_parser(subparsers):
    p = subparsers.add_parser("sim", help="scenarios (ansim sim run FILE...) and load (ansim sim load)",
                              description="Run scenario files against real agents and brokers and check their "
                              "expected outcome, or load one agent with thousands of devices.")
    sub = p.add_subparsers(dest="sim_command", required=True)
    r = sub.add_parser("run", help="run scenario files; exit 1 if an expectation does not hold, 2 if a file is "
                       "not a valid scenario",
                       description="Run each scenario (simulators/scenarios/README.md documents the format) and "
                       "print PASS/FAIL for each expectation with the measured time.")
    r.add_argument("files", nargs="+", help="scenario TOML files")
    r.add_argument("--keep", action="store_true", help="keep the run's files (configs, logs, agent stores)")
    r.set_defaults(run=_run)
    load = sub.add_parser("load", help="thousands of lightweight bells pressing against one real agent",
                          description="N bells (in this process, the real protocol, over the local broker) press "
                          "at an aggregate rate against one real agent process; the center's own subscriber counts "
                          "what arrives. Prints offered and achieved rates, press-to-center latency, losses and "
                          "duplicates, and a raw paho relay through the same brokers as the baseline.")
    load.add_argument("--devices", type=int, default=1000, help="bells (default 1000)")
    load.add_argument("--rate", type=float, default=200.0, help="presses per second, all bells together (200)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds of pressing (10)")
    load.add_argument("--per-connection", type=int, default=50,
                      help="bells sharing one MQTT connection (50; 1 = a connection each)")
    load.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last alerts (60)")
    load.add_argument("--no-baseline", action="store_true", help="skip the raw paho relay run")
    load.add_argument("--json", help="also write the results to this file")
    load.set_defaults(run=_load)


def _run(args):
    from ansim_simulators.world.runner import run_files
    return run_files(args.files, keep=args.keep)


def _load(args):
    from ansim_simulators.world import load
    return load.run(args)

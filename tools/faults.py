"""``ansim faults``: the fault run of issue 8 against the real agent on this machine: bell
presses streamed into a private Pi broker while the agent is killed (kill -9), the Pi's broker
restarted, the Pi rebooted and the center dropped or taken away, counted at the center and at
the bells by observers of their own (ansim_simulators.world.faults).

Exit status: 0 when every run passed; 1 when any alert was lost, came out of order, an ack
was not relayed, or the run did not drain; 2 for a bad schedule (too many faults for the
duration).
"""

import sys

EXIT_FAILED = 1
EXIT_BAD_USAGE = 2


def add_parser(subparsers):
    p = subparsers.add_parser("faults", help="fault run: kill -9, broker restarts, reboots, center outages",
                              description="Stream bell presses through the real agent while faults drawn "
                              "from the seed strike, then count at the center what was lost, duplicated, "
                              "out of order, and which acks never reached their bell.")
    p.add_argument("--seed", action="append", help="seed of the fault schedule; repeat for several runs "
                   "(default: 1)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of pressing (default 60)")
    p.add_argument("--rate", type=float, default=290.0, help="presses per second, all bells together (290)")
    p.add_argument("--bells", type=int, default=4, help="simulated bells (4)")
    p.add_argument("--kills", type=int, default=8, help="kill -9 of the agent (8)")
    p.add_argument("--broker-restarts", type=int, default=2, help="restarts of the Pi's broker (2)")
    p.add_argument("--reboots", type=int, default=2, help="Pi reboots: agent and broker killed together (2)")
    p.add_argument("--center-drops", type=int, default=3, help="the agent's center connection cut (3)")
    p.add_argument("--center-outages", type=int, default=2, help="the center's broker stopped for a while (2)")
    p.add_argument("--outage-s", type=float, nargs=2, default=(2.0, 8.0), metavar=("MIN", "MAX"),
                   help="length of a center outage in seconds (2 8)")
    p.add_argument("--broker-kill", action="store_true", help="SIGKILL the Pi's broker in restarts and reboots "
                   "(mosquitto PUBACKs before it saves: losses then may be the broker's)")
    p.add_argument("--ack-status", default="received", choices=("received", "dispatched", "resolved", "test-ok"),
                   help="what the center's acknowledgements say (received)")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds allowed after the last fault (120)")
    p.add_argument("--workdir", help="keep brokers' logs, the agent's log and store here (default: a temp dir)")
    p.add_argument("--schedule", help="replay the faults of an earlier run (its workdir's faults.json) "
                   "instead of drawing them from the seed")
    p.add_argument("--quiet", action="store_true", help="print only the reports, not each fault")
    p.set_defaults(run=run)


def run(args):
    from ansim_simulators.world.fault_schedule import load_schedule
    from ansim_simulators.world.faults import FaultRun

    seeds = args.seed or ["1"]
    runs = []
    for seed in seeds:
        workdir = None
        if args.workdir:
            workdir = "%s/seed-%s" % (args.workdir, seed) if len(seeds) > 1 else args.workdir
        try:
            runs.append(FaultRun(seed, duration=args.duration, rate=args.rate, bells=args.bells, kills=args.kills,
                                 broker_restarts=args.broker_restarts, reboots=args.reboots,
                                 drops=args.center_drops, outages=args.center_outages,
                                 outage_s=tuple(args.outage_s), ack_status=args.ack_status,
                                 drain_timeout=args.drain_timeout, broker_kill=args.broker_kill, workdir=workdir,
                                 log=None if args.quiet else lambda line: print(line, flush=True),
                                 schedule=load_schedule(args.schedule) if args.schedule else None))
        except ValueError as err:
            print("ansim faults: %s" % err, file=sys.stderr)
            return EXIT_BAD_USAGE
    failed = 0
    for fault_run in runs:
        if not args.quiet:
            print("seed %s: %s" % (fault_run.seed, "; ".join(str(f) for f in fault_run.schedule)), flush=True)
        report = fault_run.run()
        print(report.summary(), flush=True)
        failed += not report.ok
    if len(runs) > 1:
        print("%d of %d runs failed" % (failed, len(runs)))
    return EXIT_FAILED if failed else 0

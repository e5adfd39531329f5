"""``ansim bench agent``: the agent's speed and memory beside a baseline (see bench_agent).

The benchmark code and its test-only dependencies load only when the command runs."""


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="benchmarks (ansim bench agent)")
    p.add_argument("what", choices=("agent",))
    p.add_argument("--rate", type=int, default=100, help="alerts/s for the latency run")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    p.add_argument("--backlog", type=int, default=5000, help="alerts queued for the throughput run")
    p.add_argument("--frames", type=int, default=50000, help="heartbeats for the intake run")
    p.add_argument("--devices", type=int, default=10000, help="devices for the memory run")
    p.add_argument("--outage", type=int, default=0, help="alerts raised during a center outage (e.g. 100000)")
    p.add_argument("--json", help="also write the results to this file")
    p.set_defaults(run=run)


def run(args):
    from . import bench_agent
    return bench_agent.run(args)



"""``ansim bench agent``, ``ansim bench firmware`` and ``ansim bench battery``: speed, memory and
a wearable's battery life beside a baseline measured in the same run (see bench_agent,
bench_firmware and bench_battery).

The benchmark code and its test-only dependencies load only when the command runs."""


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="benchmarks (ansim bench agent | firmware | battery)")
    p.add_argument("what", choices=("agent", "firmware", "battery"))
    p.add_argument("--rate", type=int, default=100, help="agent: alerts/s for the latency run")
    p.add_argument("--seconds", type=float, default=10.0, help="agent: length of the latency run")
    p.add_argument("--backlog", type=int, default=5000, help="agent: alerts queued for the throughput run")
    p.add_argument("--frames", type=int, default=50000, help="agent: heartbeats for the intake run")
    p.add_argument("--devices", type=int, default=10000, help="agent: devices for the memory run")
    p.add_argument("--outage", type=int, default=0, help="agent: alerts raised during a center outage (e.g. 100000)")
    p.add_argument("--roles", default="bell,streetlight,wearable", help="firmware: roles to measure")
    p.add_argument("--runs", type=int, default=30, help="firmware: measured presses or commands per role")
    p.add_argument("--heap-resolution", type=int, default=1, metavar="KB",
                   help="firmware: step of the smallest-heap search (default 1 KB)")
    p.add_argument("--no-heap", action="store_true", help="firmware: latency only")
    p.add_argument("--mpy", action="store_true", help="firmware: modules precompiled, as ansim flash --mpy")
    p.add_argument("--frozen", action="store_true",
                   help="firmware: modules frozen in the VM image (make vm32's micropython-frozen), as ansim flash --frozen")
    p.add_argument("--hours", type=float, default=24.0, help="battery: virtual hours of the wearable's life")
    p.add_argument("--sos-timeout", type=int, default=None, metavar="S",
                   help="battery: the wearable's sos_timeout_s (default its own, 120 s of re-sends)")
    p.add_argument("--capacity-mah", type=float, default=1000.0, help="battery: the cell (default 1000 mAh)")
    p.add_argument("--json", help="also write the results to this file")
    p.set_defaults(run=run)


def run(args):
    if args.what == "battery":
        from . import bench_battery
        return bench_battery.run(args)
    if args.what == "firmware":
        from . import bench_firmware
        return bench_firmware.run(args)
    from . import bench_agent
    return bench_agent.run(args)

"""The faults of a fault run (``faults``): what each is and when it strikes, drawn from a seed
(:func:`draw_schedule`) or read back from a run's ``faults.json`` (:func:`load_schedule`).

Two lanes that may overlap: the Pi's (``kill9`` of the agent, ``broker_restart`` of the Pi's
broker, ``reboot``: agent and broker killed together, then the broker and the agent started
again) and the center's (``drop``: the agent's connection cut; ``outage``: the center's broker
stopped for N seconds). On one lane a fault strikes only once the parts the one before struck
are back (:meth:`Fault.occupies`).
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

KINDS = ("kill9", "broker_restart", "reboot", "drop", "outage")
PI_LANE = ("kill9", "broker_restart", "reboot")


@dataclass(frozen=True)
class Fault:
    """One fault: ``at`` seconds after the stream starts; ``duration`` is how long the agent
    stays dead after a kill, the Pi stays down in a reboot, or the center in an outage."""

    at: float
    kind: str
    duration: float = 0.0

    def occupies(self):
        """Seconds its lane is busy: the fault, then time for the parts to come back."""
        return self.duration + {"kill9": 0.3, "broker_restart": 1.0, "reboot": 1.5, "drop": 1.0,
                                "outage": 1.5}[self.kind]

    def __str__(self):
        return "%s at %.2f s%s" % (self.kind, self.at, " for %.1f s" % self.duration if self.duration else "")


def draw_schedule(seed, duration, kills=4, broker_restarts=1, reboots=1, drops=1, outages=1,
                  outage_s=(2.0, 6.0)):
    """The faults of one run, drawn from ``seed``: on each lane, the faults in a random order at
    random moments between 5 % and 92 % of ``duration``, never overlapping (each lane's spare
    time is cut at random points between its faults). ValueError when they do not fit."""
    rng = random.Random("faults-%s" % (seed,))
    lanes = {"pi": [], "center": []}
    wanted = [("kill9", kills), ("broker_restart", broker_restarts), ("reboot", reboots),
              ("drop", drops), ("outage", outages)]
    for kind, count in wanted:
        for _ in range(count):
            if kind == "kill9":
                length = rng.uniform(0.0, 0.5)  # until the agent is started again (systemd: 2 s)
            elif kind == "reboot":
                length = rng.uniform(0.5, 2.0)
            elif kind == "outage":
                length = rng.uniform(*outage_s)
            else:
                length = 0.0
            lanes["pi" if kind in PI_LANE else "center"].append(Fault(0.0, kind, round(length, 3)))
    begin, end = 0.05 * duration, 0.92 * duration
    schedule = []
    for name, faults in lanes.items():
        rng.shuffle(faults)
        spare = (end - begin) - sum(f.occupies() for f in faults)
        if spare < 0:
            raise ValueError("%d faults on the %s lane need %.0f s, more than %.0f s of a %.0f s run: "
                             "lengthen the run or ask for fewer" % (len(faults), name, end - begin - spare,
                                                                     end - begin, duration))
        cuts = sorted(rng.uniform(0, spare) for _ in faults)
        busy = 0.0
        for fault, cut in zip(faults, cuts):
            schedule.append(Fault(round(begin + cut + busy, 3), fault.kind, fault.duration))
            busy += fault.occupies()
    return sorted(schedule, key=lambda f: (f.at, f.kind))


def load_schedule(path):
    """The faults a run carried out (its ``faults.json``: ``at``, ``kind`` and, for kill9,
    reboot and outage, ``duration``), to run them again."""
    return [Fault(float(f["at"]), f["kind"], float(f.get("duration", 0.0)))
            for f in json.loads(Path(path).read_text())]

"""What a fault run (``faults``) counted: the faults as they were carried out
(:class:`Happened`), and the :class:`Report` with its summary and verdict. A press's alert id
is ``{device}-{counter}`` (:func:`is_press`, :func:`alert_key`); :func:`in_agent_store` reads
the agent's store after the run, to tell losses that never reached it (a broker killed before
it saved what it acknowledged) apart from the agent's own.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = 8


@dataclass
class Happened:
    """A fault as it was carried out: ``at`` seconds after the stream started."""

    at: float
    kind: str
    detail: str = ""
    ended: float = 0.0
    duration: float = 0.0  # as scheduled


@dataclass
class Report:
    seed: object
    duration: float
    rate: float
    bells: int
    faults: list = field(default_factory=list)  # Happened
    sent: int = 0                 # presses PUBACKed by the Pi's broker
    unsent: list = field(default_factory=list)   # presses a bell could not hand over by the end
    received: int = 0             # unique alert ids of those presses at the center
    arrivals: int = 0             # every arrival of those alerts at the center
    lost: list = field(default_factory=list)
    lost_not_stored: list = field(default_factory=list)  # lost and not in the agent's store either
    duplicates: int = 0           # arrivals beyond the first, by alert id
    redelivered: int = 0          # of those, the center broker's redeliveries to its observer (DUP)
    out_of_order: int = 0
    out_of_order_by_device: dict = field(default_factory=dict)
    out_of_order_examples: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)  # press alert ids at the center no bell had sent
    other_alerts: dict = field(default_factory=dict)  # alerts without a counter (device_offline...): type -> n
    escalations: int = 0
    acks_sent: int = 0            # acks PUBACKed by the center's broker
    acks_relayed: int = 0         # of those, a center_ack frame the bell would accept reached it
    acks_not_relayed: list = field(default_factory=list)
    acks_refused: list = field(default_factory=list)  # center_acks a bell refuses (counter not above)
    down_counter_reused: int = 0  # two different frames to one bell with the same counter
    center_ack_frames: int = 0
    agent_starts: int = 0
    agent_exits: list = field(default_factory=list)  # (at, code) exits nobody caused
    attribution: dict = field(default_factory=dict)  # problem -> {fault: count}
    stream_s: float = 0.0
    last_fault_s: float = 0.0
    drain_s: float | None = None  # from the end of the stream or of the last fault, the later, to all in
    drained: bool = False
    total_s: float = 0.0
    workdir: str = ""

    @property
    def ok(self):
        return (self.drained and not self.lost and not self.out_of_order and not self.acks_not_relayed
                and not self.unsent and not self.agent_exits and not self.down_counter_reused)

    def summary(self):
        kinds = {}
        for fault in self.faults:
            kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
        lines = [
            "fault run seed=%s: %.0f s at %.0f presses/s from %d bells; faults: %s" % (
                self.seed, self.duration, self.rate, self.bells,
                ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())) or "none"),
            "  sent (PUBACKed by the Pi's broker): %d%s" % (
                self.sent, "; NOT handed over by the end: %d %s" % (len(self.unsent), _few(self.unsent))
                if self.unsent else ""),
            "  received at the center (unique):    %d" % self.received,
            "  lost:                               %d %s" % (len(self.lost), _few(self.lost)),
        ]
        if self.lost:
            lines.append("    of which never in the agent's store: %d %s" % (len(self.lost_not_stored),
                                                                           _few(self.lost_not_stored)))
        lines += [
            "  duplicates (by alert id):           %d (the center broker's redeliveries: %d)" % (
                self.duplicates, self.redelivered),
            "  out of order (first arrivals):      %d %s" % (self.out_of_order, _few(self.out_of_order_examples)),
        ]
        if self.out_of_order:
            lines.append("    by device: %s" % ", ".join("%s %d" % kv for kv in sorted(self.out_of_order_by_device.items())))
        if self.unexpected:
            lines.append("  at the center but never sent:       %d %s" % (len(self.unexpected), _few(self.unexpected)))
        if self.other_alerts:
            lines.append("  other alerts (not counted above):   %s" % ", ".join(
                "%s %d" % kv for kv in sorted(self.other_alerts.items())))
        lines += [
            "  acks sent (PUBACKed by the center): %d" % self.acks_sent,
            "  acks relayed to the bell:           %d (center_ack frames seen: %d)" % (
                self.acks_relayed, self.center_ack_frames),
            "  acks not relayed:                   %d %s" % (len(self.acks_not_relayed), _few(self.acks_not_relayed)),
        ]
        if self.acks_refused:
            lines.append("  center_acks a bell refuses (stale counter): %d %s" % (len(self.acks_refused),
                                                                                _few(self.acks_refused)))
        if self.down_counter_reused:
            lines.append("  DOWN COUNTER REUSED for different frames: %d" % self.down_counter_reused)
        if self.escalations:
            lines.append("  escalations: %d" % self.escalations)
        lines.append("  agent started %d times; exits nobody caused: %s" % (
            self.agent_starts, ", ".join("code %s at %.1f s" % (c, t) for t, c in self.agent_exits) or "none"))
        for problem, faults in self.attribution.items():
            lines.append("  %s, by the fault nearest before it went wrong: %s" % (
                problem, ", ".join("%s: %d" % kv for kv in sorted(faults.items(), key=lambda kv: -kv[1]))))
        drain = ("%.1f s" % self.drain_s) if self.drain_s is not None else "NOT DRAINED"
        lines.append("  timings: stream %.1f s, last fault over at %.1f s, drain after both %s, total %.1f s" % (
            self.stream_s, self.last_fault_s, drain, self.total_s))
        lines.append("  faults: " + "; ".join("%s@%.1f%s" % (f.kind, f.at, "(%s)" % f.detail if f.detail else "")
                                              for f in self.faults))
        lines.append("  workdir: %s" % self.workdir)
        lines.append("  verdict: %s" % ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _few(items):
    items = list(items)
    if not items:
        return ""
    return "[%s%s]" % (", ".join(str(i) for i in items[:EXAMPLES]), ", ..." if len(items) > EXAMPLES else "")


def is_press(alert_id):
    """An alert raised by a frame (``{device}-{counter}``), not an availability event."""
    _, _, counter = alert_id.partition("-")
    return counter.isdigit()


def alert_key(alert_id):
    device, _, counter = alert_id.partition("-")
    return device, int(counter) if counter.isdigit() else -1


def in_agent_store(db_path, alert_ids):
    """The ids among ``alert_ids`` that the agent's store holds (read-only, after the run)."""
    if not Path(db_path).exists():
        return set()
    db = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    try:
        found = set()
        ids = list(alert_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            found.update(row[0] for row in db.execute(
                "SELECT alert_id FROM alerts WHERE alert_id IN (%s)" % ",".join("?" * len(chunk)), chunk))
        return found
    finally:
        db.close()

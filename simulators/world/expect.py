"""Expectations of a scenario, judged from what the independent observers recorded.

Why: a scenario is a test only if its outcome is checked, not eyeballed. Each expectation is
judged from counts the runner's own subscribers made (alerts and reception reports at the
center's broker, commands on each local broker's down topics decoded with the devices' keys,
acks heard by the devices), and prints PASS or FAIL with the measured time or what was seen
instead.
"""

from dataclasses import dataclass, field

from . import locate


@dataclass
class Record:
    """What the observers saw, with unix arrival times."""
    alerts: list = field(default_factory=list)     # (t, center segment, body)
    heard: list = field(default_factory=list)      # (t, body) of heard reports
    commands: list = field(default_factory=list)   # (t, device name, Frame) to bells and lights
    wearable_acks: list = field(default_factory=list)  # (t, device name, status) of center_acks a wearable heard
    presses: dict = field(default_factory=dict)    # alert id -> (lat, lon) where the wearable was


class Judge:
    """Decides each expectation as soon as it can; ``verdicts`` holds (ok, line) once decided."""

    def __init__(self, scenario, record, event_times, agent_positions, start):
        self.s, self.r, self.event_times, self.start = scenario, record, event_times, start
        self.agent_positions = agent_positions
        self.end = start + scenario.duration_s
        self.verdicts = {}  # index -> (ok, text)

    def decided(self):
        return len(self.verdicts) == len(self.s.expects)

    def failed(self):
        return [text for ok, text in self.verdicts.values() if not ok]

    def step(self, now, final=False):
        for i, ex in enumerate(self.s.expects):
            if i in self.verdicts:
                continue
            ref = self.start if ex.after is None else self.event_times.get(ex.after)
            if ref is None:
                if final:
                    self._say(i, False, "event %r never happened" % ex.after)
                continue
            close = ref + ex.within_s if ex.within_s is not None else self.end
            over = final or now >= close
            verdict = getattr(self, "_" + ex.what)(ex, ref, close, over)
            if verdict is not None:
                self._say(i, *verdict)

    def _say(self, i, ok, detail):
        ex = self.s.expects[i]
        text = "%s  line %d: %s: %s" % ("PASS" if ok else "FAIL", ex.line, ex.describe(), detail)
        self.verdicts[i] = (ok, text)
        print(text, flush=True)

    def _rel(self, t):
        return "+%.2f s" % (t - self.start)

    # -- alerts ---------------------------------------------------------------------------
    def _matching(self, ex, ref, close):
        segment = self.s.district if ex.center == "district" else self.s.fallback
        device = self.s.devices[ex.device].hex_id if ex.device else None
        out = []
        for t, center, body in list(self.r.alerts):
            if center != segment or not ref <= t <= close:
                continue
            if ex.type and body.get("type") != ex.type:
                continue
            if device and body.get("device", {}).get("id") != device:
                continue
            if ex.agent and body.get("agent", {}).get("id") != ex.agent:
                continue
            if ex.location and (body.get("location") or {}).get("source") != ex.location:
                continue
            if not set(ex.cameras) <= set(_cameras(body)):
                continue
            out.append((t, body))
        return out

    def _seen(self, ex):
        """The alerts that arrived, those of the expectation's device and type first (at most
        5), each with what ``ex`` looks at; the others only counted, or named when none is."""
        device = self.s.devices[ex.device].hex_id if ex.device else None
        alerts = list(self.r.alerts)
        related = [a for a in alerts if (not ex.type or a[2].get("type") == ex.type)
                   and (not device or a[2].get("device", {}).get("id") == device)]

        def show(t, c, b):
            about = [c]
            if ex.location:
                about.append("location %s" % (b.get("location") or {}).get("source"))
            if ex.cameras:
                about.append("cameras %s" % (",".join(_cameras(b)) or "none"))
            return "%s %s from %s at %s (%s)" % (b.get("type"), b.get("alert_id"), b.get("agent", {}).get("id"),
                                                 self._rel(t), ", ".join(about))
        if not alerts:
            return "no alert at all"
        if not related:
            return "no %s alert at all; unrelated: %s%s" % (
                " ".join(x for x in (ex.type, ex.device and "of %s" % ex.device) if x),
                "; ".join(show(*a) for a in alerts[:3]), " (+%d)" % (len(alerts) - 3) if len(alerts) > 3 else "")
        others = len(alerts) - len(related)
        return "%s%s%s" % ("; ".join(show(*a) for a in related[:5]),
                           " (+%d such)" % (len(related) - 5) if len(related) > 5 else "",
                           " (and %d unrelated alert%s)" % (others, "" if others == 1 else "s") if others else "")

    def _alert(self, ex, ref, close, over):
        found = self._matching(ex, ref, close)
        ids = sorted({b["alert_id"] for _, b in found})
        if ex.count is None and found:
            t, body = found[0]
            return True, "%.2f s (%s from %s)" % (t - ref, body["alert_id"], body.get("agent", {}).get("id"))
        if not over:
            return None
        if ex.count is not None and len(ids) == ex.count:
            copies = len(found)
            return True, "%d distinct (%s), %d cop%s, first after %.2f s" % (
                len(ids), ", ".join(ids), copies, "y" if copies == 1 else "ies", found[0][0] - ref)
        if ex.count is not None:
            return False, "%d distinct alert ids (%s); seen: %s" % (len(ids), ", ".join(ids) or "none", self._seen(ex))
        return False, "none arrived; seen: %s" % self._seen(ex)

    def _no_alert(self, ex, ref, close, over):
        found = self._matching(ex, ref, close)
        if found:
            t, body = found[0]
            return False, "%s arrived after %.2f s" % (body["alert_id"], t - ref)
        return (True, "none in %.1f s" % (close - ref)) if over else None

    # -- lights and acks ------------------------------------------------------------------
    def _first_command(self, name, kind, ref, close, pick):
        for t, device, frame in list(self.r.commands):
            if device == name and frame.kind == kind and ref <= t <= close and pick(frame):
                return t
        return None

    def _light(self, ex, ref, close, over):
        times = {n: self._first_command(n, "light_command", ref, close, lambda f: f.fields["action"] == ex.action)
                 for n in ex.devices}
        missing = [n for n, t in times.items() if t is None]
        if not missing:
            return True, "%d light%s, the last after %.2f s" % (len(times), "" if len(times) == 1 else "s",
                                                                 max(times.values()) - ref)
        if not over:
            return None
        got = sorted({"%s:%s" % (d, f.fields["action"]) for t, d, f in self.r.commands
                      if f.kind == "light_command" and ref <= t <= close})
        return False, "no %s for %s; commands seen: %s" % (ex.action, ", ".join(missing), ", ".join(got) or "none")

    def _no_light(self, ex, ref, close, over):
        for name in ex.devices:
            t = self._first_command(name, "light_command", ref, close, lambda f: f.fields["action"] == ex.action)
            if t is not None:
                return False, "%s got %s after %.2f s" % (name, ex.action, t - ref)
        return (True, "none in %.1f s" % (close - ref)) if over else None

    def _ack(self, ex, ref, close, over):
        status_ok = lambda f: f.kind == "center_ack" and (ex.status is None or f.fields["status"] == ex.status)  # noqa
        if self.s.devices[ex.device].role == "bell":
            t = self._first_command(ex.device, "center_ack", ref, close, status_ok)
        else:
            t = next((t for t, d, status in list(self.r.wearable_acks)
                      if d == ex.device and ref <= t <= close and ex.status in (None, status)), None)
        if t is not None:
            return True, "%.2f s" % (t - ref)
        if not over:
            return None
        return False, "no center_ack%s reached %s in the window; %s" % (
            " " + ex.status if ex.status else "", ex.device, self._acks_seen(ex.device))

    def _acks_seen(self, name):
        """Which acks did reach the device ``name``, whenever: "it got: received at +1.03 s"."""
        if self.s.devices[name].role == "bell":
            got = [(t, f.fields.get("status")) for t, d, f in list(self.r.commands) if d == name and f.kind == "center_ack"]
        else:
            got = [(t, status) for t, d, status in list(self.r.wearable_acks) if d == name]
        if not got:
            return "it got no ack at all"
        return "it got: %s%s" % (", ".join("%s at %s" % (status, self._rel(t)) for t, status in got[:5]),
                                 " (+%d)" % (len(got) - 5) if len(got) > 5 else "")

    def _heard(self, ex, ref, close, over):
        device = self.s.devices[ex.device].hex_id
        for t, report in list(self.r.heard):
            if ref <= t <= close and str(report.get("alert_id", "")).startswith(device + "-") \
                    and (ex.agent is None or report.get("agent") == ex.agent):
                return True, "%.2f s (%s heard %s at %s dBm)" % (t - ref, report.get("agent"), report.get("alert_id"),
                                                                report.get("rssi"))
        if not over:
            return None
        seen = ["%s/%s" % (r.get("agent"), r.get("alert_id")) for _, r in self.r.heard]
        return False, "no heard report; seen: %s" % (", ".join(seen) or "none")

    # -- position -------------------------------------------------------------------------
    def _position(self, ex, ref, close, over):
        if not over:
            return None  # every receiver's report counts: judged when the window closes
        device = self.s.devices[ex.device].hex_id
        copies = [(t, b) for t, c, b in self.r.alerts if c == self.s.district and b.get("type") == ex.type
                  and b.get("device", {}).get("id") == device and ref <= t <= close]
        if not copies:
            return False, "no %s of %s arrived" % (ex.type, ex.device)
        alert_id = copies[0][1]["alert_id"]
        truth = self.r.presses.get(alert_id)
        if truth is None:
            return False, "%s was not raised by a press of this scenario" % alert_id
        result = position_accuracy(self.s.place, alert_id, [b for _, b in copies if b["alert_id"] == alert_id],
                                   [h for _, h in self.r.heard if h.get("alert_id") == alert_id],
                                   self.agent_positions, truth)
        text = ("fused over %d reception%s (%s): %.0f m from the true position; the alert's own location "
                "(%s) %.0f m" % (result["receptions"], "" if result["receptions"] == 1 else "s",
                                 ", ".join(result["receivers"]), result["fused_error_m"],
                                 result["single_source"], result["single_error_m"]))
        return result["fused_error_m"] <= ex.max_error_m, text


def _cameras(body):
    """The ids of an alert's nearest cameras."""
    return [c.get("id") for c in body.get("cameras") or []]


def position_accuracy(place, alert_id, copies, heard, agent_positions, truth):
    """The fused estimate of one alert (its copies from agents and the heard reports) against
    ``truth``, and the first copy's own location for comparison."""
    receptions, receivers = [], []
    for body in copies:
        agent = body.get("agent", {}).get("id")
        position = agent_positions.get(agent)
        if position is not None:
            receptions.append((position[0], position[1], body.get("path", {}).get("rssi")))
            receivers.append("%s %s dBm, alert" % (agent, body.get("path", {}).get("rssi")))
    for report in heard:
        pos = report.get("position") or {}
        if "lat" in pos and "lon" in pos:
            receptions.append((pos["lat"], pos["lon"], report.get("rssi")))
            receivers.append("%s %s dBm, heard" % (report.get("agent"), report.get("rssi")))
    fused = locate.fuse(receptions)
    location = copies[0]["location"]
    return {"alert_id": alert_id, "receptions": len(receptions), "receivers": receivers,
            "fused": fused, "fused_error_m": place.distance_m(fused, truth),
            "single_source": location["source"],
            "single_error_m": place.distance_m((location["lat"], location["lon"]), truth)}

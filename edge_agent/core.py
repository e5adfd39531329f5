"""The agent's core: from a received frame to a stored alert and the commands it causes.

decode -> resolve device -> verify -> drop duplicates and replays -> classify -> locate ->
enrich -> persist -> act. It knows no transport: adapters hand it ``Reception`` objects and
carry out the ``Downlink`` commands it returns; the uplink reads the outbox in the store.
Frames are processed in batches with one commit per batch, and every sender's ``ack`` runs
only after that commit, so nothing is acknowledged before it is on disk. The frames a batch
causes (light commands, acks to devices) are staged in the same commit, so a crash never
loses one that the agent owes a device.
"""

import hashlib
import logging
import time

from ansim_protocol import frames, topics
from ansim_protocol.crypto import CLOCKLESS, epoch_of, rotating_id
from ansim_protocol.errors import DIRECTION, REPLAY, TOPIC, UNKNOWN, FrameError

from . import alerts, geo
from .center_messages import Refused
from .monitoring import Route, Session
from .resolver import RotatingIdResolver

log = logging.getLogger("ansim.agent.core")

ALERT_TYPES = ("sos", "test_sos", "bell_press", "cancel", "tamper", "low_battery", "monitor")
EMERGENCIES = ("sos", "bell_press")
LAMP_FAULT = 0x01
FIXED_ROLES = ("bell", "streetlight")  # devices on the local broker, with a state topic
OVERHEARD = "downlink"  # the verdict of a downlink frame heard on a shared medium
SHARED_REMEMBERED = 10000  # frames shared by the district whose receptions here are reported


class Downlink:
    """A signed frame for one device, to be sent by whichever adapter reaches it; ``counter``
    is its downlink counter, its key in the store's relay outbox."""

    __slots__ = ("device_id", "counter", "frame", "kind", "via")

    def __init__(self, device_id, counter, frame, kind, via="mqtt"):
        self.device_id, self.counter, self.frame, self.kind, self.via = device_id, counter, frame, kind, via


class Outcome:
    """What became of one reception: ``verdict`` is "accepted", "duplicate", "downlink" (a frame
    to a device, overheard on a shared medium: the agent's own acks or another agent's; normal,
    not processed), or a FrameError reason ("tag", "replay", "unknown", ...) with a ``detail``.
    ``heard`` is the alert id of a duplicate of a frame another agent of the district accepted,
    heard here off the air: its reception is reported to the center, which places the alert
    from every receiver's signal strength."""

    __slots__ = ("reception", "verdict", "kind", "device_id", "alert_id", "detail", "heard")

    def __init__(self, reception, verdict, kind=None, device_id=None, alert_id=None, detail=None, heard=None):
        self.reception, self.verdict, self.kind = reception, verdict, kind
        self.device_id, self.alert_id, self.detail, self.heard = device_id, alert_id, detail, heard


class _OpenEmergency:
    def __init__(self, alert_id, counter, received_at, location, lights):
        self.alert_id, self.counter, self.received_at = alert_id, counter, received_at
        self.location, self.lights = location, lights


class Core:
    def __init__(self, config, registry, store, clock=time.time):
        self.config, self.registry, self.store, self.clock = config, registry, store, clock
        self.resolver = RotatingIdResolver()
        now = clock()
        rid_states = store.rid_states()
        for device in registry.by_role("wearable"):
            self.resolver.add(device.device_id, device.keys, now, *rid_states.get(device.device_id, ()))
        self.lights = registry.by_role("streetlight")
        self.open_emergencies = {}  # device_id -> _OpenEmergency
        self.light_states = {}      # device_id -> fields of the last light_state
        self.monitoring = {}        # session id -> monitoring.Session
        self.shared = {}            # digest of a frame the district shared -> its alert id, until heard here

    def reload(self, registry):
        """A new registry (SIGHUP): new wearables are resolved from now on, removed ones no
        longer; those kept keep what the resolver learnt of their clocks."""
        now = self.clock()
        known = {d.device_id: self.resolver.state(d.device_id) for d in self.registry.by_role("wearable")}
        stored = self.store.rid_states()
        resolver = RotatingIdResolver()
        for device in registry.by_role("wearable"):
            resolver.add(device.device_id, device.keys, now, *(known.get(device.device_id)
                                                               or stored.get(device.device_id, ())))
        self.registry, self.resolver, self.lights = registry, resolver, registry.by_role("streetlight")

    # -- intake ------------------------------------------------------------------------------

    def process_batch(self, receptions):
        """Process, commit once, then acknowledge. Returns (outcomes, downlinks)."""
        outcomes, downlinks = self.stage_batch(receptions)
        self.store.commit()
        for reception in receptions:
            if reception.ack is not None:
                reception.ack()
        return outcomes, downlinks

    def stage_batch(self, receptions):
        """Process and stage in the store, with the frames they cause; the caller commits,
        then acknowledges. Returns (outcomes, downlinks)."""
        now = self.clock()
        self.resolver.tick(now)
        outcomes, downlinks = [], []
        for reception in receptions:
            outcomes.append(self._process(reception, downlinks))
        self.store.add_downlinks(downlinks, now)
        return outcomes, downlinks

    def _process(self, reception, downlinks):
        digest = hashlib.sha256(reception.frame).digest()[:16]
        now = self.clock()
        seen = self.store.seen_at(digest)
        if seen is not None and now - seen <= self.config.agent["dedup_window_s"]:
            heard = self.shared.pop(digest, None) if reception.rssi is not None else None
            return Outcome(reception, "duplicate", heard=heard)
        try:
            device, frame, epoch = self._verify(reception)
            if device is None:
                log.debug("overheard a downlink frame via %s/%s", reception.path, reception.receiver)
                return Outcome(reception, OVERHEARD)
            highest, window = self.store.up_state(device.device_id)
            if epoch is not None and epoch >= CLOCKLESS and highest is not None and frame.counter <= highest:
                # a frame without a time can be a day old: only a counter never reached is new
                raise FrameError(REPLAY, "clockless frame %d at or below %d" % (frame.counter, highest))
            highest, window = frames.accept_counter(frame.counter, highest, window)
        except FrameError as err:
            return Outcome(reception, err.reason, detail=str(err))
        self.store.accept(device.device_id, highest, window, digest, now)
        self.store.heard(device.device_id, now)
        if epoch is not None:
            self.resolver.confirm(device.device_id, epoch)
            self.store.save_rid_state(device.device_id, *self.resolver.state(device.device_id))
            if epoch >= CLOCKLESS:  # it listens after each frame until it hears the time
                downlinks.append(self._sealed(device, "time", {"unix_time": int(now)}, epoch))
        alert_id = self._act(device, frame, reception, now, downlinks, epoch)
        return Outcome(reception, "accepted", frame.kind, device.device_id, alert_id)

    def merge_shared(self, device_id, raw, epoch, now):
        """A frame that another agent of the district accepted (SPEC.md 5): verified with the
        device's key like any frame, whoever relayed it, and its counter marked accepted here,
        so that the same frame brought here later is no new event. Nothing else follows: no
        alert, no light, no liveness. Returns "merged", or "known" when this agent had it;
        raises FrameError for a frame that is not the device's."""
        device = self.registry.get(device_id)
        if device is None:
            raise FrameError(UNKNOWN, "device %08x is not registered here" % device_id)
        header = frames.peek(raw)
        if header.downlink:
            raise FrameError(DIRECTION, "a downlink frame")
        if header.sealed:
            if epoch is None or device.role != "wearable" or rotating_id(device.keys, epoch) != header.rid:
                raise FrameError(UNKNOWN, "rotating id %s is not device %08x's in epoch %s" % (
                    header.rid.hex(), device_id, epoch))
        elif header.device_id != device_id:
            raise FrameError(TOPIC, "frame of device %08x shared as %08x's" % (header.device_id, device_id))
        frame = frames.unpack(raw, device.keys)
        try:
            highest, window = frames.accept_counter(frame.counter, *self.store.up_state(device_id))
        except FrameError as err:
            if err.reason == REPLAY:
                return "known"
            raise
        digest = hashlib.sha256(raw).digest()[:16]
        self.store.accept(device_id, highest, window, digest, now)
        if len(self.shared) >= SHARED_REMEMBERED:
            self.shared.pop(next(iter(self.shared)))
        self.shared[digest] = alerts.alert_id(device_id, frame.counter)
        return "merged"

    def _verify(self, reception):
        """(device, frame, epoch) of a verified uplink frame, ``epoch`` that of a sealed frame's
        rotating id (else None); (None, None, None) for a downlink frame heard on
        a shared medium (BLE, a serial radio or bus, a relay's topic), where the agent's own
        frames to devices and other agents' are normal traffic. On a device's own ``up`` topic
        no correct sender puts one: rejected (``direction``)."""
        header = frames.peek(reception.frame)
        if header.downlink:
            if reception.topic is not None and topics.parse(reception.topic)[0] == topics.DEV:
                raise FrameError(DIRECTION, "a downlink frame on the uplink topic %s" % reception.topic)
            return None, None, None
        if header.sealed:
            for device_id, keys, epoch in self.resolver.candidates(header.rid):
                try:
                    return self.registry.get(device_id), frames.unpack(reception.frame, keys), epoch
                except FrameError:
                    continue
            raise FrameError(UNKNOWN, "rotating id %s matches no registered wearable" % header.rid.hex())
        if reception.topic is not None:
            scope, ident, _ = topics.parse(reception.topic)
            if scope == topics.DEV and ident != header.device_id:
                raise FrameError(TOPIC, "frame of device %08x on %s" % (header.device_id, reception.topic))
        device = self.registry.get(header.device_id)
        if device is None:
            raise FrameError(UNKNOWN, "device %08x is not registered" % header.device_id)
        return device, frames.unpack(reception.frame, device.keys), None

    # -- classify, locate, enrich, act ---------------------------------------------------------

    def _act(self, device, frame, reception, now, downlinks, epoch):
        if frame.kind == "light_state":
            before = self.light_states.get(device.device_id)
            self.light_states[device.device_id] = frame.fields
            self.store.down_at_least(device.device_id, frame.fields["last_command"])
            if frame.fields["faults"] & LAMP_FAULT and not (before and before["faults"] & LAMP_FAULT):
                return self._alert("lamp_fault", device, frame, reception, now, epoch)  # once per fault
            return None
        if frame.kind not in ALERT_TYPES:
            return None
        if frame.kind == "cancel":
            return self._cancel(device, frame, reception, now, downlinks, epoch)
        alert_id = self._alert(frame.kind, device, frame, reception, now, epoch)
        if frame.kind in EMERGENCIES:
            location = self.locate(device, frame, reception)
            lights = self._command_lights(location, "blink", now, downlinks)
            self.open_emergencies[device.device_id] = _OpenEmergency(alert_id, frame.counter, now, location, lights)
        return alert_id

    def _alert(self, kind, device, frame, reception, now, epoch, extra=None):
        location = self.locate(device, frame, reception)
        body = alerts.build(kind, device, frame, reception, now, location, self._enrich(location),
                            self.config, extra)
        self.store.add_alert(body["alert_id"], device.device_id, reception.received_at, now, body,
                             reception.frame, epoch)
        return body["alert_id"]

    def _cancel(self, device, frame, reception, now, downlinks, epoch):
        sos = self.open_emergencies.get(device.device_id)
        cancelled = alerts.alert_id(device.device_id, frame.fields["sos_counter"])
        in_time = (sos is not None and sos.counter == frame.fields["sos_counter"]
                   and now - sos.received_at <= self.config.agent["cancel_window_s"])
        if in_time:
            self.open_emergencies.pop(device.device_id)
            self._settle_lights(sos.lights, now, downlinks)
        return self._alert("cancel", device, frame, reception, now, epoch,
                           {"cancels": cancelled, "within_window": in_time})

    def locate(self, device, frame, reception):
        fields = frame.fields
        if fields.get("accuracy_m"):
            return {"lat": fields["lat"], "lon": fields["lon"], "accuracy_m": fields["accuracy_m"], "source": "gnss"}
        if device.position is not None:
            return {"lat": device.position[0], "lon": device.position[1], "accuracy_m": 5, "source": "registered"}
        here = self.config.agent["position"]
        return {"lat": here[0], "lon": here[1], "accuracy_m": round(geo.radius_from_rssi(reception.rssi)),
                "source": "receiver"}

    def _enrich(self, location):
        point = (location["lat"], location["lon"])
        return {
            "cameras": [{"id": p.ident, "name": p.name, "distance_m": round(d, 1)}
                        for d, p in geo.nearest(point, self.registry.cameras, 3)],
            "facilities": [{"id": p.ident, "kind": p.kind, "name": p.name, "distance_m": round(d, 1)}
                           for d, p in geo.nearest(point, self.registry.facilities, 5)],
        }

    def _command_lights(self, location, action, now, downlinks):
        point = (location["lat"], location["lon"])
        chosen = [light for _, light in geo.within(point, self.lights, self.config.lights["radius_m"])]
        duration = self.config.lights["blink_s"]
        for light in chosen:
            downlinks.append(self.light_command(light, action, 100, duration, now))
        return chosen

    def _settle_lights(self, lights, now, downlinks):
        """``lights`` that an emergency or a walk no longer wants: each does what the others
        still want of it (an open emergency's blink first, then a walk's brighten), else goes
        back to its schedule. One emergency's end must not dark another's lights, nor a walk
        end an emergency's blink."""
        blinking, bright = self._blinking(), self._brightened()
        settings = self.config.lights
        for light in lights:
            if light.device_id in blinking:
                continue
            if light.device_id in bright:
                downlinks.append(self.light_command(light, "brighten", settings["brighten_pct"],
                                                    settings["monitor_hold_s"], now))
            else:
                downlinks.append(self.light_command(light, "restore", 0, 0, now))

    def _blinking(self):
        """Ids of the lights an open emergency blinks."""
        return {light.device_id for sos in self.open_emergencies.values() for light in sos.lights}

    def _brightened(self):
        """Ids of the lights a walk-home session wants bright."""
        return {device_id for session in self.monitoring.values() for device_id in session.bright}

    def light_command(self, light, action, level_pct, duration_s, now):
        fields = {"action": action, "level_pct": level_pct, "duration_s": duration_s,
                  "expires": int(now) + max(duration_s, 10)}
        counter = self.store.next_down(light.device_id)
        frame = frames.build_plain("light_command", fields, light.keys, light.device_id, counter, downlink=True)
        return Downlink(light.device_id, counter, frame, "light_command")

    def time_frame(self, device_id, now):
        """A ``time`` frame with the agent's Unix time for a bell or streetlight that has just
        come online (SPEC.md 3.2): its RTC may have lost power or drifted."""
        device = self.registry.get(device_id)
        if device is None or device.role not in FIXED_ROLES:
            return []
        counter = self.store.next_down(device.device_id)
        frame = frames.build_plain("time", {"unix_time": int(now)}, device.keys, device.device_id, counter,
                                   downlink=True)
        return [Downlink(device.device_id, counter, frame, "time")]

    def center_ack(self, alert_id, status, now):
        """The center's acknowledgement (checked by center_messages.parse_ack): closes the
        alert and, the first time this status comes for it, relays it to the device that
        raised it: a signed plain frame to a bell (it announces it), a sealed frame under the
        wearable's current rotating id for the BLE transmitter (SPEC.md 3.2). Raises Refused
        for an alert this agent never stored."""
        stored = self.store.alert(alert_id)
        if stored is None:
            raise Refused("alert %s is not one of this agent's (never stored, or purged after retention)" % alert_id)
        if not self.store.ack_alert(alert_id, status, now):
            return []  # redelivered: relayed already
        device_hex, _, counter = alert_id.partition("-")
        device = self.registry.get(int(device_hex, 16))
        if device is None or not counter.isdigit():
            return []  # a device_online/offline event, or a device since removed from the registry
        fields = {"acked_counter": int(counter), "status": status}
        if device.role == "wearable":
            return self._to_wearable(device, fields, now)
        down_counter = self.store.next_down(device.device_id)
        frame = frames.build_plain("center_ack", fields, device.keys, device.device_id, down_counter, downlink=True)
        return [Downlink(device.device_id, down_counter, frame, "center_ack")]

    def _to_wearable(self, device, fields, now):
        """The ack as a sealed frame under the rotating id the wearable uses now. A wearable
        heard a whole epoch or more away from the agent's clock, or without a clock, also gets
        a ``time`` frame (SPEC.md 3.2): it listens only while it waits for its ack, so both go
        out together, the time with the lower counter; the wearable takes either first."""
        epoch = self.resolver.epoch_now(device.device_id)
        downlinks = []
        if epoch != epoch_of(now):
            downlinks.append(self._sealed(device, "time", {"unix_time": int(now)}, epoch))
        return downlinks + [self._sealed(device, "center_ack", fields, epoch)]

    def _sealed(self, device, kind, fields, epoch):
        """A sealed frame to a wearable under ``epoch``, for the BLE transmitter."""
        counter = self.store.next_down(device.device_id)
        frame = frames.build_sealed(kind, fields, device.keys, counter, epoch, downlink=True)
        return Downlink(device.device_id, counter, frame, kind, via="ble")

    def monitor(self, request, now):
        """A walk-home monitoring request from the center (checked by
        center_messages.parse_monitor): start, update, stop or arrived. Returns the light
        commands; raises Refused with a reason for a request it cannot follow."""
        session_id, action = request["session"], request["action"]
        lights = self.config.lights
        if action == "start":
            route = Route(request["route"])
            self._end_monitoring(session_id, now, [])
            self.monitoring[session_id] = Session(session_id, route, self.lights, lights["monitor_corridor_m"],
                                                  lights["monitor_ahead_m"])
        session = self.monitoring.get(session_id)
        if session is None:
            raise Refused("no monitoring session %r" % session_id)
        downlinks = []
        if action in ("stop", "arrived"):
            self._end_monitoring(session_id, now, downlinks)
            return downlinks
        brighten, behind = session.move(request["position"])
        blinking = self._blinking()
        for light in self._registered(brighten):
            if light.device_id not in blinking:  # an open emergency's blink goes first
                downlinks.append(self.light_command(light, "brighten", lights["brighten_pct"],
                                                    lights["monitor_hold_s"], now))
        self._settle_lights(self._registered(behind), now, downlinks)
        return downlinks

    def _end_monitoring(self, session_id, now, downlinks):
        session = self.monitoring.pop(session_id, None)
        if session is not None:
            self._settle_lights(self._registered(session.end()), now, downlinks)

    def _registered(self, device_ids):
        """The lights of ``device_ids`` still in the registry: a reload may remove one that a
        walk started before it holds."""
        return [light for light in map(self.registry.get, device_ids) if light is not None]

    def resolve(self, alert_id, now):
        """The center resolved an emergency: its lights go back to their schedule."""
        downlinks = []
        for device_id, sos in list(self.open_emergencies.items()):
            if sos.alert_id == alert_id:
                del self.open_emergencies[device_id]
                self._settle_lights(sos.lights, now, downlinks)
        return downlinks

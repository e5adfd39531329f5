"""The link to the control center: alerts from the durable outbox over MQTT (TLS with a
client certificate, QoS 1, MQTT v5), the center's acknowledgements back, escalation to the
citywide center, the agent's birth and death certificates, the streetlights' states for the
center's map, and the frames the agents of the district accepted (shared after each alert,
merged from the others: SPEC.md 5.1).

Delivery: every stored alert not yet PUBACKed is published once per process, in outbox
order, with at most ``WINDOW`` in flight; paho keeps and retransmits them across reconnects
(persistent session), and after a restart the outbox publishes the rest again. The center
deduplicates by alert id. After a reconnection nothing new is published until paho's
retransmissions are PUBACKed: paho resends them after its CONNACK handling, so a publish
made earlier would overtake them, and CENTER_API.md promises order per device.

The center's messages are PUBACKed in arrival order once the pipeline has stored what they
mean (``done``): an acknowledgement is as durable as the alert, and a crash before its
PUBACK makes the center's broker send it again. Topics: edge_agent/CENTER_API.md.
"""

import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import center_messages
from .center_messages import Refused
from .mqtt_delivery import InOrderAcks, PublishTracker
from .mqtt_socket import no_delay
from .store import StorageError

log = logging.getLogger("ansim.agent.uplink")

ROOT = "ansim/center/v1/"
WINDOW = 1000
SESSION_EXPIRY_S = 7 * 24 * 3600
# Escalation never floods a link that comes back: copies leave at a bounded rate and take
# only part of the window, after the district's own alerts.
ESCALATIONS_PER_S = 20.0
ESCALATION_BURST = 50
ESCALATION_WINDOW = 100
ESCALATION_CHECK_S = 0.5  # how often the outbox is searched for alerts due for escalation


def alerts_topic(center, device_hex):
    return "%s%s/alerts/%s" % (ROOT, center, device_hex)


def agent_topic(agent_id, channel):
    return "%sagents/%s/%s" % (ROOT, agent_id, channel)


def lights_topic(district, device_hex):
    """Where a streetlight's last reported state is kept for the center's map."""
    return "%s%s/lights/%s" % (ROOT, district, device_hex)


def heard_topic(district, device_hex):
    """Where an agent reports hearing a frame that another agent of the district accepted."""
    return "%s%s/heard/%s" % (ROOT, district, device_hex)


def accepted_topic(district, device_hex):
    """Where the agents of a district share the frames they accepted (SPEC.md 5)."""
    return "%s%s/accepted/%s" % (ROOT, district, device_hex)


class _Sent:
    """One publish waiting for its PUBACK: ``kind`` alert, escalation or certificate."""

    __slots__ = ("kind", "seq", "alert_id", "alert_type", "received")

    def __init__(self, kind, seq=None, alert_id=None, alert_type=None, received=None):
        self.kind, self.seq = kind, seq
        self.alert_id, self.alert_type, self.received = alert_id, alert_type, received


class Uplink:
    """``on_ack(alert_id, status, done)`` and ``on_monitor(request, done)`` get the center's
    checked messages, ``on_shared(share, done)`` the frames other agents of the district
    accepted; ``done()`` PUBACKs the message once what it means is stored.
    ``health`` (edge_agent.health) hears of outages and faults; ``beat`` is called at every
    turn of the uplink's loop (the systemd watchdog)."""

    def __init__(self, config, store, metrics, on_ack=None, on_monitor=None, on_shared=None, clock=time.time,
                 health=None, beat=None):
        self.config, self.store, self.metrics, self.clock = config, store, metrics, clock
        self.on_ack, self.on_monitor, self.on_shared = on_ack, on_monitor, on_shared
        self._shared_prefix = accepted_topic(config.center["district"], "")
        self.health, self._beat = health, beat or (lambda: None)
        center = config.center
        self.agent_id = config.agent["id"]
        self.session = store.next_session()
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent = PublishTracker(self._settle, on_resent=self._wake.set)
        self._escalating = 0  # escalated copies not yet PUBACKed
        self._escalation_checked = 0.0
        self._connected_at = None
        self._delivered = []  # outbox seqs PUBACKed, written to the store by the uplink thread
        self._published_to = 0  # highest outbox seq handed to paho in this process
        self._lock = threading.Lock()
        self._tokens = float(ESCALATION_BURST)
        self._tokens_at = time.monotonic()
        self._refused = {}  # channel -> messages refused, for sampling the log
        self._lights = {}  # device_hex -> the last light state, sent again after every connection
        self.delivered = 0
        self.v5 = center["mqtt_version"] == 5
        if self.v5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.agent_id, protocol=mqtt.MQTTv5)
        else:  # a center broker without MQTT v5: 3.1.1 with a persistent session
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.agent_id,
                                 protocol=mqtt.MQTTv311, clean_session=False)
        if center["tls"]:
            client.tls_set(ca_certs=str(center["cafile"]), certfile=str(center["certfile"]),
                           keyfile=str(center["keyfile"]), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.will_set(agent_topic(self.agent_id, "state"), self._certificate("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(WINDOW)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.5, 30)
        client.manual_ack_set(True)
        guard = self.health.guard if self.health is not None else (lambda _, callback: callback)
        client.on_connect = guard("uplink", self._on_connect)
        client.on_disconnect = guard("uplink", self._on_disconnect)
        client.on_publish = guard("uplink", lambda c, u, mid, reason, props: self._sent.settle(mid, reason))
        client.on_message = guard("uplink", self._on_message)
        client.on_connect_fail = guard("uplink", self._on_connect_fail)
        client.on_socket_open = no_delay
        self.client = client
        self._acks = InOrderAcks(client)
        self._rewind_to = None  # re-send from here after a reconnect (alerts the broker refused)
        self._connect_failures = 0
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    def _certificate(self, state):
        lat, lon = self.config.agent["position"]  # a center's map shows the agent before any alert
        return json.dumps({"agent": self.agent_id, "site": self.config.agent["site"], "state": state,
                           "session": self.session, "at": round(self.clock(), 3),
                           "position": {"lat": lat, "lon": lon}})

    def start(self):
        """Connect in the background: an unreachable center is an outage, not a fatal error."""
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self.client.connect_async(self.config.center["host"], self.config.center["port"],
                                      clean_start=False, properties=props)
        else:
            self.client.connect_async(self.config.center["host"], self.config.center["port"])
        self.client.loop_start()
        self._thread.start()

    def stop(self):
        """Announce death explicitly (a clean disconnect does not fire the will)."""
        self._stop.set()
        self._wake.set()
        if self.connected.is_set():
            self.client.publish(agent_topic(self.agent_id, "state"), self._certificate("offline"),
                                qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        if self._thread.is_alive():
            self._thread.join(5)
        self._record_delivered()

    def wake(self):
        """New alerts are in the outbox."""
        self._wake.set()

    def _on_connect(self, client, userdata, flags, reason, props):
        if reason.is_failure:
            self._down("the center's broker refused agent %s: %s" % (self.agent_id, reason))
            return
        # v5 brokers do not send an agent its own shares back (no local); 3.1.1 ones do: skipped
        shared = SubscribeOptions(qos=1, noLocal=True) if self.v5 else 1
        client.subscribe([(agent_topic(self.agent_id, "ack"), 1), (agent_topic(self.agent_id, "monitor"), 1),
                          (self._shared_prefix + "+", shared)])
        self._sent.reconnected()
        with self._lock:
            if self._rewind_to is not None:  # everything from the refused alert on, in order
                self._published_to, self._rewind_to = min(self._published_to, self._rewind_to), None
        self._publish(agent_topic(self.agent_id, "state"), self._certificate("online"), _Sent("certificate"),
                      retain=True)
        with self._lock:
            lights = list(self._lights.items())
        for device_hex, body in lights:  # changes while the center was away
            self._publish(lights_topic(self.config.center["district"], device_hex), body, _Sent("light"), retain=True)
        self._connect_failures = 0
        self._connected_at = time.monotonic()
        self.connected.set()
        self.metrics.center_connected.set(1)
        if self.health is not None:
            self.health.up("center")
        self._wake.set()
        log.info("connected to the center %s:%d (session %d)", self.config.center["host"],
                 self.config.center["port"], self.session)

    def light_state(self, device_id, fields):
        """A streetlight reported its state: kept retained at the center (not stored: only the
        newest matters, and every light reports again when it reconnects)."""
        device_hex = "%08x" % device_id
        body = json.dumps({"device": device_hex, "agent": self.agent_id, "mode": fields["mode"],
                           "commanded_pct": fields["commanded_pct"], "actual_pct": fields["actual_pct"],
                           "faults": fields["faults"], "at": round(self.clock(), 3)})
        with self._lock:
            self._lights[device_hex] = body
        if self.connected.is_set():
            self._publish(lights_topic(self.config.center["district"], device_hex), body, _Sent("light"), retain=True)

    def heard(self, alert_id, reception):
        """This agent heard, off the air, the frame of an alert another agent raised: the
        center places the alert from every receiver's signal strength. Best effort: a report
        made while the center is away is dropped (it only refines a position)."""
        if not self.connected.is_set():
            return
        lat, lon = self.config.agent["position"]
        body = json.dumps({"alert_id": alert_id, "agent": self.agent_id, "position": {"lat": lat, "lon": lon},
                           "rssi": reception.rssi, "at": round(reception.received_at, 3)})
        self._publish(heard_topic(self.config.center["district"], alert_id.split("-", 1)[0]), body, _Sent("heard"))

    def _on_connect_fail(self, client, userdata):
        """The center is unreachable or the TLS handshake failed; say so once, then rarely."""
        self._connect_failures += 1
        if self._connect_failures in (1, 10) or self._connect_failures % 100 == 0:
            self._down("cannot connect to the center %s:%d (attempt %d; check the network, its address and the "
                       "agent's certificate); alerts wait in the outbox"
                       % (self.config.center["host"], self.config.center["port"], self._connect_failures))

    def _down(self, reason):
        if self.health is not None:
            self.health.down("center", reason)
        else:
            log.warning("%s", reason)

    def _on_disconnect(self, client, userdata, flags, reason, props):
        self.connected.clear()
        self._connected_at = None
        self._acks.reset()
        self.metrics.center_connected.set(0)
        if not self._stop.is_set():  # every time: a flapping link shows in the log
            log.warning("lost the center (%s); alerts wait in the outbox", reason)
            if self.health is not None:
                self.health.down("center", "lost the center (%s); alerts wait in the outbox" % reason, quiet=True)

    def _settle(self, sent, reason):
        if sent.kind in ("certificate", "share", "light", "heard"):
            if reason.is_failure:
                log.error("the center's broker refused the agent's %s: %s (check the agent's ACL)", sent.kind, reason)
            return
        if sent.kind == "escalation":
            with self._lock:
                self._escalating -= 1
        if reason.is_failure:
            log.error("the center's broker refused %s %s: %s (check the agent's ACL); it is sent again after "
                      "the next reconnection", sent.kind, sent.alert_id, reason)
            if sent.kind == "alert":
                with self._lock:
                    self._rewind_to = (sent.seq - 1 if self._rewind_to is None
                                       else min(self._rewind_to, sent.seq - 1))
            return
        if sent.kind == "escalation":
            return
        self.metrics.alert_delivered(max(0.0, self.clock() - sent.received))
        log.info("alert %s sent: %s of device %s, PUBACKed by the center's broker",
                 sent.alert_id, sent.alert_type, sent.alert_id[:8])
        with self._lock:
            self._delivered.append(sent.seq)
        self.delivered += 1
        self._wake.set()

    def _on_message(self, client, userdata, msg):
        done = self._acks.ticket(msg)
        channel = msg.topic.rsplit("/", 1)[-1]
        try:
            if msg.topic.startswith(self._shared_prefix):
                channel = "accepted"
                share = center_messages.parse_shared(msg.topic[len(self._shared_prefix):], msg.payload)
                if share["agent"] == self.agent_id:
                    done()  # its own, from a broker without no-local
                    return
                message, handler = (share,), self.on_shared
            elif msg.topic == agent_topic(self.agent_id, "ack"):
                message = center_messages.parse_ack(msg.payload)
                handler = self.on_ack
            elif msg.topic == agent_topic(self.agent_id, "monitor"):
                message = (center_messages.parse_monitor(msg.payload),)
                handler = self.on_monitor
            else:
                raise Refused("not a topic the agent subscribes to")
        except Refused as refused:
            self.refused(channel, refused)
            done()
            return
        if handler is None:
            done()
            return
        self.metrics.center_messages.labels(channel, "accepted").inc()
        handler(*message, done)

    def refused(self, channel, reason):
        """A message from the center that the agent does not act on: counted and logged
        (first of each channel at once, then sampled: a broken center can send thousands)."""
        self.metrics.center_messages.labels(channel, "refused").inc()
        count = self._refused[channel] = self._refused.get(channel, 0) + 1
        if count <= 10 or count % 1000 == 0:
            log.warning("refused a message from the center on %s (%d so far): %s", channel, count, reason)

    def _run(self):
        while not self._stop.is_set():
            self._beat()
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._record_delivered()
                if self._ready():
                    self._publish_pending()
                    self._escalate()
                if self.health is not None:
                    self.health.up("uplink")
            except StorageError as err:
                self.health.down("store", err) if self.health is not None else log.error("%s", err)
                self._stop.wait(1.0)
            except Exception as exc:
                if self.health is None:
                    raise
                self.health.fatal("uplink", exc)
                return

    def _ready(self):
        """Connected, and paho's retransmissions from earlier connections are PUBACKed."""
        return self.connected.is_set() and not self._sent.resending()

    def _record_delivered(self):
        """Write the PUBACKs received so far to the store, in one transaction: losing them in a
        crash only sends those alerts again (the center deduplicates by id)."""
        with self._lock:
            seqs, self._delivered = self._delivered, []
        if seqs:
            try:
                self.store.mark_delivered(seqs, self.clock())
            except StorageError:
                with self._lock:
                    self._delivered[:0] = seqs
                raise

    def _publish_pending(self):
        while not self._stop.is_set() and self.connected.is_set():
            room = WINDOW - len(self._sent)
            if room <= 0:
                return
            rows = self.store.undelivered(self._published_to, room)
            if not rows:
                return
            district = self.config.center["district"]
            for seq, alert_id, body, received, frame, epoch in rows:
                alert_type = json.loads(body).get("type")
                device_hex = alert_id.split("-", 1)[0]
                self._publish(alerts_topic(district, device_hex), body,
                              _Sent("alert", seq, alert_id, alert_type, received))
                if frame is not None:  # the district's other agents learn that this frame is taken
                    share = json.dumps({"agent": self.agent_id, "frame": bytes(frame).hex(), "epoch": epoch})
                    self._publish(accepted_topic(district, device_hex), share, _Sent("share"), retain=True)
                self._published_to = seq

    def _publish(self, topic, body, sent, retain=False):
        self._sent.track(self.client.publish(topic, body, qos=1, retain=retain), sent)

    def _escalate(self):
        """Alerts the district has not acknowledged within ``escalation_s`` of having them go
        to the fallback center too, once each, at most ESCALATIONS_PER_S."""
        center = self.config.center
        now_mono = time.monotonic()
        if now_mono - self._escalation_checked < ESCALATION_CHECK_S:
            return
        self._escalation_checked = now_mono
        self._tokens = min(ESCALATION_BURST, self._tokens + (now_mono - self._tokens_at) * ESCALATIONS_PER_S)
        self._tokens_at = now_mono
        with self._lock:
            room = min(int(self._tokens), ESCALATION_WINDOW - self._escalating, WINDOW - len(self._sent))
        if room <= 0:
            return
        now = self.clock()
        connected_for = now_mono - (self._connected_at or now_mono)
        # Undelivered alerts escalate only when the district's broker has been reachable the
        # whole delay and still has not taken them (it refuses them); after an outage they
        # are merely waiting their turn, and the district gets the delay from delivery.
        created_before = now - center["escalation_s"] if connected_for >= center["escalation_s"] else None
        for seq, alert_id, body in self.store.due_for_escalation(now - center["escalation_s"], created_before, room):
            escalated = json.loads(body)
            escalated["escalated_from"] = center["district"]
            with self._lock:
                self._escalating += 1
            self._publish(alerts_topic(center["fallback"], alert_id.split("-", 1)[0]),
                          json.dumps(escalated, sort_keys=True), _Sent("escalation", seq, alert_id))
            self.store.mark_escalated(seq)
            self._tokens -= 1
            self.metrics.escalations.inc()
            log.warning("alert %s escalated: %s of device %s not acknowledged by %s within %d s, sent to %s",
                        alert_id, escalated.get("type"), alert_id[:8], center["district"], center["escalation_s"],
                        center["fallback"])

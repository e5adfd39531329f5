"""The link to the control center: alerts from the durable outbox over MQTT (TLS with a
client certificate, QoS 1, MQTT v5), the center's acknowledgements back, escalation to the
citywide center, and the agent's birth and death certificates.

Delivery: every stored alert not yet PUBACKed is published once per process, in outbox
order, with at most ``WINDOW`` in flight; paho keeps and retransmits them across reconnects
(persistent session), and after a restart the outbox publishes the rest again. The center
deduplicates by alert id. Topics: edge_agent/CENTER_API.md.
"""

import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .mqtt_socket import no_delay

log = logging.getLogger("ansim.agent.uplink")

ROOT = "ansim/center/v1/"
WINDOW = 1000
SESSION_EXPIRY_S = 7 * 24 * 3600


def alerts_topic(center, device_hex):
    return "%s%s/alerts/%s" % (ROOT, center, device_hex)


def agent_topic(agent_id, channel):
    return "%sagents/%s/%s" % (ROOT, agent_id, channel)


class Uplink:
    def __init__(self, config, store, metrics, on_ack=None, on_monitor=None, clock=time.time):
        self.config, self.store, self.metrics, self.clock = config, store, metrics, clock
        self.on_ack, self.on_monitor = on_ack, on_monitor
        center = config.center
        self.agent_id = config.agent["id"]
        self.session = store.next_session()
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight = {}  # mid -> (outbox seq, received), or None for births and escalations
        self._early = {}     # mid -> reason code of a PUBACK that beat _track
        self._delivered = []  # outbox seqs PUBACKed, written to the store by the uplink thread
        self._published_to = 0  # highest outbox seq handed to paho in this process
        self._lock = threading.Lock()
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
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = no_delay
        self.client = client
        self._rewind_to = None  # re-send from here after a reconnect (alerts the broker refused)
        self._connect_failures = 0
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    def _certificate(self, state):
        return json.dumps({"agent": self.agent_id, "site": self.config.agent["site"], "state": state,
                           "session": self.session, "at": round(self.clock(), 3)})

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
            log.error("the center's broker refused agent %s: %s", self.agent_id, reason)
            return
        client.subscribe([(agent_topic(self.agent_id, "ack"), 1), (agent_topic(self.agent_id, "monitor"), 1)])
        self._publish(agent_topic(self.agent_id, "state"), self._certificate("online"), None, retain=True)
        with self._lock:
            if self._rewind_to is not None:  # everything from the refused alert on, in order
                self._published_to, self._rewind_to = min(self._published_to, self._rewind_to), None
        self._connect_failures = 0
        self.connected.set()
        self.metrics.center_connected.set(1)
        self._wake.set()
        log.info("connected to the center %s:%d (session %d)", self.config.center["host"],
                 self.config.center["port"], self.session)

    def _on_connect_fail(self, client, userdata):
        """The center is unreachable or the TLS handshake failed; say so once, then rarely."""
        self._connect_failures += 1
        if self._connect_failures in (1, 10) or self._connect_failures % 100 == 0:
            log.warning("cannot connect to the center %s:%d (attempt %d; check the network, its address and "
                        "the agent's certificate); alerts wait in the outbox", self.config.center["host"],
                        self.config.center["port"], self._connect_failures)

    def _on_disconnect(self, client, userdata, flags, reason, props):
        self.connected.clear()
        self.metrics.center_connected.set(0)
        if not self._stop.is_set():
            log.warning("lost the center (%s); alerts wait in the outbox", reason)

    def _on_publish(self, client, userdata, mid, reason, props):
        with self._lock:
            if mid not in self._inflight:  # PUBACK before publish() returned: _track settles it
                self._early[mid] = reason
                return
            tracked = self._inflight.pop(mid)
        self._settle(tracked, reason)

    def _track(self, info, tracked):
        """Remember what a publish was for. Called after publish() returns, never under paho's
        locks, since paho runs on_publish while holding its own."""
        with self._lock:
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._inflight[info.mid] = tracked
                return
        self._settle(tracked, reason)

    def _settle(self, tracked, reason):
        if tracked is None:
            return
        seq, received = tracked
        if reason.is_failure:
            log.error("the center's broker refused alert #%d: %s (check the agent's ACL); it is sent "
                      "again after the next reconnection", seq, reason)
            with self._lock:
                self._rewind_to = seq - 1 if self._rewind_to is None else min(self._rewind_to, seq - 1)
            return
        self.metrics.alert_delivered(max(0.0, self.clock() - received))
        with self._lock:
            self._delivered.append(seq)
        self.delivered += 1
        self._wake.set()

    def _on_message(self, client, userdata, msg):
        if msg.topic == agent_topic(self.agent_id, "monitor"):
            try:
                request = json.loads(msg.payload)
            except ValueError:
                log.warning("ignored a monitoring request that is not JSON")
                return
            if self.on_monitor is not None:
                self.on_monitor(request)
            return
        try:
            ack = json.loads(msg.payload)
            alert_id, status = ack["alert_id"], ack["status"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed center ack on %s", msg.topic)
            return
        self.store.mark_acked(alert_id, self.clock())
        if self.on_ack is not None:
            self.on_ack(alert_id, status)

    def _run(self):
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self._record_delivered()
            self._publish_pending()
            self._escalate()

    def _record_delivered(self):
        with self._lock:
            seqs, self._delivered = self._delivered, []
        if seqs:
            self.store.mark_delivered(seqs, self.clock())

    def _publish_pending(self):
        while not self._stop.is_set():
            with self._lock:
                room = WINDOW - len(self._inflight)
            if room <= 0:
                return
            rows = self.store.undelivered(self._published_to, room)
            if not rows:
                return
            for seq, alert_id, body, received in rows:
                device_hex = alert_id.split("-", 1)[0]
                self._publish(alerts_topic(self.config.center["district"], device_hex), body, (seq, received))
                self._published_to = seq

    def _publish(self, topic, body, tracked, retain=False):
        self._track(self.client.publish(topic, body, qos=1, retain=retain), tracked)

    def _escalate(self):
        center = self.config.center
        for seq, alert_id, body in self.store.due_for_escalation(self.clock() - center["escalation_s"]):
            escalated = json.loads(body)
            escalated["escalated_from"] = center["district"]
            self._publish(alerts_topic(center["fallback"], alert_id.split("-", 1)[0]),
                          json.dumps(escalated, sort_keys=True), None)
            self.store.mark_escalated(seq)
            self.metrics.escalations.inc()
            log.warning("alert %s not acknowledged by %s within %d s: escalated to %s",
                        alert_id, center["district"], center["escalation_s"], center["fallback"])

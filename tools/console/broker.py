"""The console's link to the center's MQTT broker (paho, MQTT v5, QoS 1).

It subscribes to every center's alerts, the agents' certificates, the streetlights' states and
the agents' reception reports, and hands each message to the :class:`~.model.Console`. The operator's actions go out
as CENTER_API.md says: an ack to *every* agent that reported the alert (those left out would
escalate it), and an agent that reports an alert after the operator acted on it gets the
latest status too; monitoring requests to the one agent that runs the walk. It also follows the
acks and monitoring requests other center clients send (subscribed with ``noLocal``: its own
are not echoed back), so every console shows every operator's actions.

An unreachable broker is not fatal: paho retries (0.5 s doubling to 30 s) and the console
says so, once per attempt with paho's reason, on the terminal and the page. Bad TLS files are
(:class:`ConsoleError`, at start).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .model import ACK_FILTER, ALERTS_FILTER, HEARD_FILTER, LIGHTS_FILTER, MONITOR_FILTER, ROOT, STATE_FILTER, Console

log = logging.getLogger("ansim.console.broker")

# The acks and walk-home requests every center client (another console, the simulated center)
# sends to the agents, so that every console shows what any of them did; ``noLocal``: not our own.
FILTERS = (ALERTS_FILTER, STATE_FILTER, LIGHTS_FILTER, HEARD_FILTER, ACK_FILTER, MONITOR_FILTER)
NO_LOCAL = (ACK_FILTER, MONITOR_FILTER)
SENT = "sent (broker took it)"  # a PUBACK: the broker holds the ack, not that the agent got it
SESSION_EXPIRY_S = 24 * 3600  # alerts that arrive while the console restarts wait at the broker


class ConsoleError(Exception):
    """A setting that cannot work (bad TLS files, ...): one line naming it and the fix."""


def ack_topic(agent_id: str) -> str:
    return "%sagents/%s/ack" % (ROOT, agent_id)


def monitor_topic(agent_id: str) -> str:
    return "%sagents/%s/monitor" % (ROOT, agent_id)


def _readable(path, what):
    if path is None:
        raise ConsoleError("--tls needs --%s" % what)
    if not os.path.isfile(path):
        raise ConsoleError("--%s %s: no such file" % (what, path))
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ConsoleError("--%s %s: cannot read it: %s" % (what, path, err.strerror or err)) from None


class CenterLink:
    """``tls``: ``(cafile, certfile, keyfile)`` or None (plain). ``on_event(text)`` hears
    connection changes for the terminal."""

    def __init__(self, console: Console, host: str, port: int, tls=None, client_id: str = "ansim-center-console",
                 on_event=None) -> None:
        self.console, self.host, self.port = console, host, port
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, str, str]] = {}  # mid -> (alert_id, status, agent)
        self._early: dict[int, str] = {}                      # PUBACKs that came before publish() returned
        self._failures = 0
        self._stopping = False
        self.tls = tls is not None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls is not None:
            cafile, certfile, keyfile = tls
            for path, what in ((cafile, "cafile"), (certfile, "certfile"), (keyfile, "keyfile")):
                _readable(path, what)
            try:
                client.tls_set(ca_certs=str(cafile), certfile=str(certfile), keyfile=str(keyfile),
                               tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as err:
                raise ConsoleError("TLS files %s, %s, %s: %s (are they PEM, and is the key the "
                                   "certificate's?)" % (cafile, certfile, keyfile, err)) from None
        client.reconnect_delay_set(0.5, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self.client = client

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.console.set_connection("connecting", "%s:%d" % (self.host, self.port))
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho's thread ---------------------------------------------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason, _props):
        if reason.is_failure:
            self.console.set_connection("refused", str(reason))
            self.on_event("the broker %s:%d refused the console: %s (its certificate and the broker's ACL "
                          "for it: CENTER_API.md)" % (self.host, self.port, reason))
            return
        self._failures = 0
        client.subscribe([(topic, SubscribeOptions(qos=1, noLocal=topic in NO_LOCAL)) for topic in FILTERS])
        self.console.set_connection("connected", "%s:%d" % (self.host, self.port))
        self.on_event("connected to the center's broker %s:%d" % (self.host, self.port))

    def _on_subscribe(self, _client, _userdata, _mid, reasons, _props):
        for topic, reason in zip(FILTERS, reasons):
            if reason.is_failure:
                self.on_event("the broker refused the console's subscription to %s: %s (the center's ACL "
                              "lines are in CENTER_API.md)" % (topic, reason))

    def _on_connect_fail(self, _client, _userdata):
        """One line per attempt (paho waits 0.5 s doubling to 30 s between them), with the
        reason: paho calls this inside its ``except OSError``, so the error is at hand."""
        self._failures += 1
        err = sys.exc_info()[1]
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else "no answer"
        self.console.set_connection("unreachable", "%s:%d, attempt %d: %s" % (self.host, self.port, self._failures,
                                                                              reason))
        if not self._stopping:
            self.on_event("cannot reach the center's broker %s:%d (attempt %d: %s): still trying; check its "
                          "address, port, that it runs%s" % (self.host, self.port, self._failures, reason,
                                                             ", and the TLS files" if self.tls else ""))

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props):
        if self._stopping:
            self.console.set_connection("stopped", "")
        elif self.console.connection["state"] == "connected":
            self.console.set_connection("disconnected", str(reason))
            self.on_event("lost the center's broker (%s): reconnecting" % reason)

    def _on_message(self, _client, _userdata, msg):
        result = self.console.handle(msg.topic, msg.payload)
        if result and result.get("new_agent") and not result["new"]:
            alert = result["alert"]
            if alert["status"] is not None:  # acted on before this agent reported it
                self._ack(alert["alert_id"], alert["status"], result["new_agent"])

    def _on_publish(self, _client, _userdata, mid, reason, _props):
        result = "refused: %s" % reason if reason.is_failure else SENT
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early[mid] = result
        if pending is not None:
            self.console.ack_result(*pending, result)

    # -- the operator's actions (any thread) -------------------------------------------------------

    def act(self, alert_id: str, action: str) -> dict:
        """``action``: ack, dispatch or resolve: the ack to every agent that reported the
        alert; KeyError for an alert the console never saw."""
        status = self.console.status_for(alert_id, action)
        agents = self.console.ack_targets(alert_id)
        for agent in agents:
            self._ack(alert_id, status, agent)
        return {"alert_id": alert_id, "status": status, "agents": agents}

    def _ack(self, alert_id, status, agent):
        self.console.ack_sent(alert_id, status, agent)
        info = self.client.publish(ack_topic(agent), json.dumps({"alert_id": alert_id, "status": status}), qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = (alert_id, status, agent)
        if early is not None:
            self.console.ack_result(alert_id, status, agent, early)
        elif info.rc == mqtt.MQTT_ERR_NO_CONN:
            self.on_event("ack of %s to %s queued: the broker is not connected" % (alert_id, agent))

    def monitor(self, body: dict) -> dict:
        """A walk-home request from the page; Malformed if it is not one CENTER_API.md accepts."""
        agent, request = self.console.monitor_request(body)
        self.client.publish(monitor_topic(agent), json.dumps(request), qos=1)
        return self.console.walk(agent, request)

"""Intake and downlink over the local broker that bells and streetlights use (SPEC.md 6.2).

The agent's PUBACK to a device is its promise that the frame is stored: paho's manual
acknowledgement holds the PUBACK until the core has committed the batch, and a persistent
session (clean start off, session expiry) makes the broker redeliver whatever an agent that
died before committing had not acknowledged.
"""

import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansim_protocol import topics
from ansim_protocol.errors import FrameError

from .intake import IntakeUnavailable, Reception
from .mqtt_socket import no_delay

log = logging.getLogger("ansim.agent.local_mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600
MAX_PAYLOAD = 64
CONNECT_TIMEOUT_S = 10.0


class LocalMqtt:
    def __init__(self, submit, host, port, client_id, on_state=None, on_oversize=None):
        self.submit = submit
        self.on_state, self.on_oversize = on_state, on_oversize
        self.host, self.port = host, port
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.manual_ack_set(True)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.5, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = no_delay

    def start(self):
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(self.host, self.port, clean_start=False, properties=props)
        except OSError as err:
            raise IntakeUnavailable("local MQTT broker %s:%d: %s: start mosquitto on the Pi "
                                    "(`sudo systemctl start mosquitto`) or fix [local_mqtt] in the config"
                                    % (self.host, self.port, err.strerror or err)) from None
        self.client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S):
            self.stop()
            raise IntakeUnavailable("local MQTT broker %s:%d did not accept the agent within %.0f s"
                                    % (self.host, self.port, CONNECT_TIMEOUT_S))

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, props):
        if reason.is_failure:
            log.error("local broker refused the agent: %s", reason)
            return
        client.subscribe([(topics.UPLINK_FILTER, 1), (topics.RELAY_FILTER, 1), (topics.STATE_FILTER, 1)])
        log.info("connected to the local broker %s:%d", self.host, self.port)

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        """Ready once the broker granted the subscriptions: from then on it keeps our messages."""
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("the local broker refused the agent's subscriptions: %s (check its ACL)", refused)
            return
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, props):
        self._connected.clear()
        if reason.is_failure:
            log.warning("lost the local broker (%s); reconnecting", reason)

    def _on_message(self, client, userdata, msg):
        ack = _Ack(client, msg.mid, msg.qos)
        try:
            scope, device_id, channel = topics.parse(msg.topic)
        except FrameError:
            channel = None
        if channel == topics.STATE:
            if self.on_state is not None:
                self.on_state(device_id, bytes(msg.payload))
            ack()
            return
        if len(msg.payload) > MAX_PAYLOAD:  # never a frame: dropped before any work
            if self.on_oversize is not None:
                self.on_oversize(msg.topic, len(msg.payload))
            ack()
            return
        self.submit(Reception(msg.payload, "mqtt", "local", topic=msg.topic, ack=ack))

    def send(self, device_id, frame):
        """Publish a downlink frame to ``ansim/v1/dev/{id}/down`` (QoS 1; paho queues it while
        the broker is away)."""
        self.client.publish(topics.topic(device_id, topics.DOWN), frame, qos=1)


class _Ack:
    """PUBACK for one message, sent once, when the core says the frame is stored."""

    __slots__ = ("client", "mid", "qos")

    def __init__(self, client, mid, qos):
        self.client, self.mid, self.qos = client, mid, qos

    def __call__(self):
        if self.qos:
            self.client.ack(self.mid, self.qos)

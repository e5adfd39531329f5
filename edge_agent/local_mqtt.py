"""Intake and downlink over the local broker that bells and streetlights use (SPEC.md 6.2).

The agent's PUBACK to a device is its promise that the frame is stored: paho's manual
acknowledgement holds the PUBACK until the core has committed the batch, and PUBACKs leave
in the order the messages came (``InOrderAcks``), whatever was stored first. A persistent
session (clean start off, session expiry) makes the broker redeliver whatever an agent that
died before committing had not acknowledged.

Frames to devices come from the store's relay outbox; ``on_handed_over(device_id, counter)``
reports each one the broker PUBACKed, so the outbox can forget it. They leave in the order
they were sent, which a device needs (it refuses a counter below one it accepted): while the
broker is away they wait here, and after a reconnection nothing new is published until
paho's retransmissions are PUBACKed (paho would put a publish made while it reconnects
before them). Only the pipeline thread publishes; ``on_ready`` asks it to ``flush``.

A broker that is not there at start is an outage, not a fatal error: paho keeps trying and
the other intakes run meanwhile (``health`` shows ``local_mqtt`` down).

A device's ``offline`` state (its last will) reaches ``on_state`` only once it has stood for
``WILL_SETTLE_S``: mosquitto publishes the will of every client as it stops, so a restart of
the Pi's broker (an upgrade, ``systemctl restart``) would report every bell and light offline.
Wills followed within that time by the loss of our own connection are dropped (the broker
went away, not the devices; each publishes ``online`` again as it reconnects), as is a will
the device's own ``online`` follows at once. A retained ``offline`` (the broker's memory of
an old will, kept across its restart) is not news and is dropped too. A device that really
went silent then is reported by supervision when its period is over.
"""

import collections
import logging
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansim_protocol import topics
from ansim_protocol.errors import FrameError

from .config import read_password
from .intake import Reception
from .mqtt_delivery import InOrderAcks, PublishTracker
from .mqtt_socket import no_delay

log = logging.getLogger("ansim.agent.local_mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600
WILL_SETTLE_S = 1.0  # a will stands once our own connection outlived it this long
MAX_PAYLOAD = 64
COMPONENT = "local_mqtt"


class LocalMqtt:
    def __init__(self, submit, host, port, client_id, on_state=None, on_oversize=None, on_handed_over=None,
                 on_ready=None, health=None, username=None, password_file=None):
        self.submit = submit
        self.on_state, self.on_oversize, self.on_handed_over = on_state, on_oversize, on_handed_over
        self.on_ready = on_ready
        self.host, self.port = host, port
        self.health = health
        self._connected = threading.Event()
        self._outbox = collections.deque()  # downlinks not yet handed to paho, in order
        self._first_attempt = threading.Event()  # connected and subscribed, or failed once
        self._refused = False  # the broker's last CONNACK refused the agent
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:  # the Pi's mosquitto refuses anonymous clients (ansim provision)
            password = None if password_file is None else read_password(password_file, "[local_mqtt] password_file")
            self.client.username_pw_set(username, password)
        self.client.manual_ack_set(True)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.5, 10)
        guard = health.guard if health is not None else (lambda _, callback: callback)
        self.client.on_connect = guard(COMPONENT, self._on_connect)
        self.client.on_connect_fail = guard(COMPONENT, self._on_connect_fail)
        self.client.on_disconnect = guard(COMPONENT, self._on_disconnect)
        self.client.on_message = guard(COMPONENT, self._on_message)
        self.client.on_subscribe = guard(COMPONENT, self._on_subscribe)
        self.client.on_publish = guard(COMPONENT, lambda c, u, mid, reason, props: self._sent.settle(mid, reason))
        self.client.on_socket_open = no_delay
        self._acks = InOrderAcks(self.client)
        self._sent = PublishTracker(self._handed_over, on_resent=self._resent)
        self._wills = {}  # device_id -> when its will arrived, until it stands (WILL_SETTLE_S)
        self._wills_lock = threading.Lock()
        self._will_timer = None

    def start(self):
        """Connect in the background; ``wait_connected`` tells when the broker keeps our messages."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        if self.health is not None:
            self.health.starting(COMPONENT, "connecting to the local MQTT broker %s:%d" % (self.host, self.port))
        self.client.connect_async(self.host, self.port, clean_start=False, properties=props)
        self.client.loop_start()

    def wait_first_attempt(self, timeout):
        """Until the first connection attempt succeeded (True) or failed (False): a broker
        that is there is subscribed to before the agent says it runs."""
        self._first_attempt.wait(timeout)
        return self._connected.is_set()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()
        with self._wills_lock:
            if self._will_timer is not None:
                self._will_timer.cancel()

    def _down(self, reason):
        self._first_attempt.set()
        if self.health is not None:
            self.health.down(COMPONENT, reason)
        else:
            log.warning("%s", reason)

    def _on_connect(self, client, userdata, flags, reason, props):
        self._refused = reason.is_failure
        if reason.is_failure:
            self._down("the local broker %s:%d refused the agent: %s (check [local_mqtt] username and "
                       "password_file against the broker's passwd, and its ACL)" % (self.host, self.port, reason))
            return
        client.subscribe([(topics.UPLINK_FILTER, 1), (topics.RELAY_FILTER, 1), (topics.STATE_FILTER, 1)])

    def _on_connect_fail(self, client, userdata):
        self._down("cannot reach the local MQTT broker %s:%d: start mosquitto on the Pi (`sudo systemctl start "
                   "mosquitto`) or fix [local_mqtt] in the config; retrying" % (self.host, self.port))

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        """Ready once the broker granted the subscriptions: from then on it keeps our messages."""
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self._down("the local broker refused the agent's subscriptions: %s (check its ACL)" % refused)
            return
        nothing_to_resend = self._sent.reconnected()
        self._connected.set()
        self._first_attempt.set()
        if nothing_to_resend:
            self._resent()
        if self.health is not None:
            self.health.up(COMPONENT)
        log.info("connected to the local broker %s:%d", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason, props):
        self._connected.clear()
        self._acks.reset()
        with self._wills_lock:
            dropped, self._wills = len(self._wills), {}
        if dropped:
            log.info("dropped %d device will(s) that came just before the local broker went away", dropped)
        if reason.is_failure and not self._refused:  # after a refusal, its reason stays the one shown
            self._down("lost the local broker %s:%d (%s); reconnecting" % (self.host, self.port, reason))

    def _on_message(self, client, userdata, msg):
        ack = self._acks.ticket(msg)
        try:
            scope, device_id, channel = topics.parse(msg.topic)
        except FrameError:
            channel = None
        if channel == topics.STATE:
            if self.on_state is not None:
                self._device_state(device_id, bytes(msg.payload), msg.retain)
            ack()
            return
        if len(msg.payload) > MAX_PAYLOAD:  # never a frame: dropped before any work
            if self.on_oversize is not None:
                self.on_oversize(msg.topic, len(msg.payload))
            ack()
            return
        self.submit(Reception(msg.payload, "mqtt", "local", topic=msg.topic, ack=ack))

    def _device_state(self, device_id, payload, retained):
        if payload == b"offline":
            if not retained:
                with self._wills_lock:
                    self._wills[device_id] = time.monotonic()
                    if self._will_timer is None:
                        self._arm_will_timer(WILL_SETTLE_S)
            return
        if payload == b"online":
            with self._wills_lock:
                self._wills.pop(device_id, None)
        self.on_state(device_id, payload)

    def _arm_will_timer(self, delay):
        self._will_timer = threading.Timer(delay, self._wills_stand)
        self._will_timer.daemon = True
        self._will_timer.start()

    def _wills_stand(self):
        """Hand on the wills our connection outlived by WILL_SETTLE_S."""
        now = time.monotonic()
        with self._wills_lock:
            self._will_timer = None
            standing = [device_id for device_id, at in self._wills.items() if now - at >= WILL_SETTLE_S]
            for device_id in standing:
                del self._wills[device_id]
            if self._wills:
                self._arm_will_timer(WILL_SETTLE_S - (now - min(self._wills.values())))
        for device_id in standing:
            self.on_state(device_id, b"offline")

    def send(self, downlink):
        """Queue a frame for ``ansim/v1/dev/{id}/down`` (QoS 1) and publish what may go now;
        ``on_handed_over`` hears of its PUBACK. Pipeline thread only."""
        self._outbox.append(downlink)
        self.flush()

    def flush(self):
        """Publish queued frames, in order, while the broker is connected and has PUBACKed
        what paho sent again after the last reconnection. Pipeline thread only."""
        while self._outbox and self._connected.is_set() and not self._sent.resending():
            downlink = self._outbox.popleft()
            info = self.client.publish(topics.topic(downlink.device_id, topics.DOWN), downlink.frame, qos=1)
            self._sent.track(info, (downlink.device_id, downlink.counter))

    def _resent(self):
        """What paho sent again after the reconnection is PUBACKed: queued frames may go."""
        if self._connected.is_set() and self.on_ready is not None:
            self.on_ready()

    def _handed_over(self, key, reason):
        if reason.is_failure:
            log.error("the local broker refused a frame to device %08x: %s (check its ACL)", key[0], reason)
        if self.on_handed_over is not None:
            self.on_handed_over(*key)

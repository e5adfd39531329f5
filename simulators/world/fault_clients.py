"""The MQTT clients of a fault run (``faults``), for brokers that go away under them.

A bell publishes through a :class:`Link` as its firmware does: one frame in flight, its next
press only after the broker's PUBACK of the previous one, and the same bytes again on a new
connection when the broker went away before the PUBACK; each connection is up or done, never
reconnected by paho behind the Link's back. The observers are :class:`Watcher` clients with
persistent sessions, so what a broker accepted for them reaches them across its restarts.
"""

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ansim_simulators.fixtures.waits import until

SESSION_EXPIRY_S = 24 * 3600


def _connect_props():
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props


class _Conn:
    """One paho connection that never reconnects by itself: it is up, or it is done."""

    def __init__(self, port, client_id):
        self.acks = {}
        self.changed = threading.Condition()
        self.up = False
        self.down = False
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                reconnect_on_failure=False)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        self.port = port

    def open(self, timeout):
        try:
            self.paho.connect("127.0.0.1", self.port, keepalive=10, clean_start=True)
        except OSError:
            return False
        self.paho.loop_start()
        with self.changed:
            self.changed.wait_for(lambda: self.up or self.down, timeout)
            if self.up and not self.down:
                return True
        self.close()
        return False

    def close(self):
        try:
            self.paho.disconnect()
        finally:
            self.paho.loop_stop()

    def _on_connect(self, _c, _u, _f, reason, _p):
        with self.changed:
            self.up = not reason.is_failure
            self.down = reason.is_failure
            self.changed.notify_all()

    def _on_disconnect(self, *_):
        with self.changed:
            self.down = True
            self.changed.notify_all()

    def _on_publish(self, _c, _u, mid, reason, _p):
        with self.changed:
            self.acks[mid] = reason
            self.changed.notify_all()


class Link:
    """What a bell (or the center's acknowledging desk) does with a broker that may go away:
    :meth:`publish` returns once the broker PUBACKed the message, re-sending the same bytes on
    a new connection as often as needed, until ``deadline``."""

    def __init__(self, port, client_id, stop):
        self.port, self.client_id, self.stop = port, client_id, stop
        self.conn = None
        self.reconnects = 0

    def publish(self, topic, payload, deadline):
        backoff = 0.02
        while time.monotonic() < deadline:
            if self.conn is None:
                conn = _Conn(self.port, self.client_id)
                if not conn.open(min(2.0, max(0.01, deadline - time.monotonic()))):
                    self.stop.wait(backoff)  # the broker is away: try again soon
                    backoff = min(backoff * 2, 0.5)
                    continue
                self.conn, backoff = conn, 0.02
                self.reconnects += 1
            conn = self.conn
            info = conn.paho.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with conn.changed:
                    conn.changed.wait_for(lambda: info.mid in conn.acks or conn.down,
                                          max(0.0, deadline - time.monotonic()))
                    reason = conn.acks.pop(info.mid, None)
                if reason is not None and not reason.is_failure:
                    return True
            self.conn = None  # gone (or refused): the same bytes again on a new connection
            conn.close()
        return False

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Watcher:
    """An observer with a persistent session (clean start off, QoS 1): whatever its broker
    accepted for it reaches it, across the broker's restarts; paho reconnects it."""

    def __init__(self, port, client_id, filters, on_message):
        self.filters = filters
        self.subscribed = threading.Event()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.paho.reconnect_delay_set(0.05, 0.5)
        self.paho.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.paho.on_subscribe = lambda *_: self.subscribed.set()
        self.paho.on_message = lambda _c, _u, msg: on_message(msg)
        self.paho.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=_connect_props())
        self.paho.loop_start()
        until(self.subscribed.is_set, 10, "subscription of %s" % client_id)

    def close(self):
        self.paho.disconnect()
        self.paho.loop_stop()

"""QoS 1 bookkeeping shared by the agent's two paho clients (local broker, center).

``InOrderAcks``: the agent PUBACKs a message only when what it carried is stored, and the
pipeline stores in batches while control messages are handled apart; yet MQTT-4.6.0-2 wants
PUBACKs in the order the PUBLISHes arrived, and mosquitto 2.0 reorders a persistent
session's redelivered backlog when a client breaks that rule. Each message takes a ticket
on arrival; its PUBACK leaves once it and every earlier ticket are done.

``PublishTracker``: what each of our own QoS 1 publishes was for, settled by its PUBACK,
including the PUBACK that paho reports before ``publish()`` has returned the message id.
"""

import collections
import threading


class InOrderAcks:
    def __init__(self, client):
        self._client = client
        self._lock = threading.Lock()
        self._waiting = collections.deque()  # [mid, qos, done] in arrival order
        self._generation = 0

    def ticket(self, msg):
        """A callable that sends this message's PUBACK in arrival order (once; a no-op for
        QoS 0, and after the connection it arrived on is gone: the broker sends it again)."""
        entry = [msg.mid, msg.qos, False]
        with self._lock:
            self._waiting.append(entry)
            generation = self._generation
        return lambda: self._done(entry, generation)

    def _done(self, entry, generation):
        with self._lock:  # held while sending, so that two threads never interleave PUBACKs
            if generation != self._generation or entry[2]:
                return
            entry[2] = True
            while self._waiting and self._waiting[0][2]:
                mid, qos, _ = self._waiting.popleft()
                if qos:
                    self._client.ack(mid, qos)

    def reset(self):
        """The connection is gone: tickets still open die with it."""
        with self._lock:
            self._waiting.clear()
            self._generation += 1


class PublishTracker:
    """mid -> what the publish was for; ``settle`` hands the PUBACK's reason to ``on_settled``."""

    def __init__(self, on_settled):
        self._on_settled = on_settled
        self._lock = threading.Lock()
        self._inflight = {}
        self._early = {}  # mid -> reason of a PUBACK that came before track()

    def track(self, info, what):
        """Call after ``publish()`` returned ``info``, never under paho's locks."""
        with self._lock:
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._inflight[info.mid] = what
                return
        self._on_settled(what, reason)

    def settle(self, mid, reason):
        """paho's ``on_publish``."""
        with self._lock:
            if mid not in self._inflight:
                self._early[mid] = reason
                return
            what = self._inflight.pop(mid)
        self._on_settled(what, reason)

    def __len__(self):
        with self._lock:
            return len(self._inflight)

    def pending(self):
        """What is still waiting for its PUBACK."""
        with self._lock:
            return list(self._inflight.values())

"""QoS 1 bookkeeping shared by the agent's two paho clients (local broker, center).

``InOrderAcks``: the agent PUBACKs a message only when what it carried is stored, and the
pipeline stores in batches while control messages are handled apart; yet MQTT-4.6.0-2 wants
PUBACKs in the order the PUBLISHes arrived, and mosquitto 2.0 reorders a persistent
session's redelivered backlog when a client breaks that rule. Each message takes a ticket
on arrival; its PUBACK leaves once it and every earlier ticket are done.

``PublishTracker``: what each of our own QoS 1 publishes was for, settled by its PUBACK,
including the PUBACK that paho reports before ``publish()`` has returned the message id; and
whether paho is still sending again what an earlier connection left unacknowledged. paho
resends those after its CONNACK handling, so a publish made meanwhile would overtake them:
its owner publishes nothing new until ``resending()`` is false.
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
    """mid -> what the publish was for; ``settle`` hands the PUBACK's reason to ``on_settled``,
    and ``on_resent`` hears when the last retransmission of a reconnection is PUBACKed."""

    def __init__(self, on_settled, on_resent=None):
        self._on_settled, self._on_resent = on_settled, on_resent
        self._lock = threading.Lock()
        self._inflight = {}
        self._early = {}  # mid -> reason of a PUBACK that came before track()
        self._resending = set()  # mids paho sends again after the last reconnection

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
            resent = mid in self._resending
            self._resending.discard(mid)
            drained = resent and not self._resending
        self._on_settled(what, reason)
        if drained and self._on_resent is not None:
            self._on_resent()

    def reconnected(self):
        """A connection is up (call from on_connect): what waits for its PUBACK now is what
        paho sends again. Returns True if there is nothing to wait for."""
        with self._lock:
            self._resending = set(self._inflight)
            return not self._resending

    def resending(self):
        with self._lock:
            return bool(self._resending)

    def __len__(self):
        with self._lock:
            return len(self._inflight)


"""What every intake adapter (BLE, MQTT, serial) hands to the core: one ``Reception`` per
frame heard. Adapters know their transport; the core knows only this."""

import time


class Reception:
    """One frame as received.

    ``path``: "ble", "mqtt" or "serial". ``receiver``: which radio, broker link or line heard
    it (for logs, metrics and locating by the receiver). ``rssi``: dBm for radio paths.
    ``topic``: the MQTT topic, checked against the frame's device id. ``ack``: called once
    the core has stored the frame durably (MQTT sends its PUBACK then), or None.
    """

    __slots__ = ("frame", "path", "receiver", "rssi", "topic", "ack", "received_at")

    def __init__(self, frame, path, receiver, rssi=None, topic=None, ack=None, received_at=None):
        self.frame = bytes(frame)
        self.path = path
        self.receiver = receiver
        self.rssi = rssi
        self.topic = topic
        self.ack = ack
        self.received_at = time.time() if received_at is None else received_at

    def __repr__(self):
        return "Reception(%s via %s/%s, %d bytes)" % (self.frame[:6].hex(), self.path, self.receiver, len(self.frame))


class IntakeUnavailable(RuntimeError):
    """An intake cannot start (no Bluetooth adapter, no serial port, broker unreachable).

    The message names the thing that is missing and what to do about it, for a person at a
    terminal; no D-Bus or OS traceback reaches them.
    """

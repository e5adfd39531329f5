"""Socket options for the agent's MQTT connections.

paho leaves Nagle's algorithm on, so a small publish that follows another small write on the
same connection (a light command after the PUBACK of the bell press that caused it) waits for
the broker's delayed TCP acknowledgement, up to 40 ms on Linux. Every message here is small
and urgent: each connection turns Nagle off as its socket opens (``client.on_socket_open``).
"""

import socket


def no_delay(client, userdata, sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

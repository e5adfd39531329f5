"""A TCP relay in front of a broker, so that a run can cut one client's connection while the
broker keeps running and keeps what it holds: the fault run's ``drop`` cuts the agent's link to
the center this way, and a scenario's agent reaches the center through one of its own.
"""

import socket
import threading


class TcpRelay:
    """A TCP relay from a port of its own to ``upstream_port``: :meth:`cut` drops every
    connection through it (its clients' links break; the broker lives on)."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._pairs = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="center-proxy", daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()  # the center is down: as a refused connection
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in pair:
                _shut(sock)
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)

    def cut(self):
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def close(self):
        self._closed = True
        self.cut()
        self.listener.close()
        self._thread.join(2)


def _shut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()

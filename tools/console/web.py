"""The console's web page on localhost: the static page (``static/``), the state as JSON,
live changes as server-sent events, and JSON POSTs for the operator's actions.

- ``GET /`` the page; ``GET /static/<file>`` its script and style; ``GET /api/state`` everything.
- ``GET /api/events``: ``event: snapshot`` first, then one ``event: change`` per model event
  (``{"seq", "kind", "data"}``; a client skips seq <= the snapshot's), a comment every 15 s.
- ``POST /api/alerts/<alert_id>/<ack|dispatch|resolve>`` and ``POST /api/monitor`` (body:
  ``{"agent", "session", "action": start|update|stop|arrived, "route", "position"}``).

Bound to 127.0.0.1 by default. A POST must be ``application/json`` (a form on another site
cannot send that without a preflight, which this server never allows), and on loopback the
Host header must name loopback (no DNS rebinding).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from .model import ALERT_ID

log = logging.getLogger("ansim.console.web")

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
KEEPALIVE_S = 15.0
MAX_BODY = 65536
ACTION_PATH = re.compile(r"^/api/alerts/([^/]+)/(ack|dispatch|resolve)$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def static_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, console, link):
        self.console, self.link = console, link
        self.closing = threading.Event()
        self.loopback = address[0] in LOOPBACK_HOSTS or address[0].startswith("127.")
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return "http://%s:%d/" % ("[%s]" % host if ":" in host else host, port)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="console-web", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "ansim-console"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # events leave at once

    def log_message(self, fmt, *args):  # the terminal shows events, not every request
        log.debug("%s " + fmt, self.address_string(), *args)

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        return host in LOOPBACK_HOSTS or host.startswith("127.")

    def _send(self, status, body: bytes, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, value):
        self._send(status, json.dumps(value, ensure_ascii=False).encode())

    def do_GET(self):
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "the console answers only to localhost"})
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, static_file("index.html"), STATIC["index.html"])
        if path.startswith("/static/") and path[len("/static/"):] in STATIC:
            name = path[len("/static/"):]
            return self._send(HTTPStatus.OK, static_file(name), STATIC[name])
        if path == "/api/state":
            return self._json(HTTPStatus.OK, self.server.console.snapshot())
        if path == "/api/events":
            return self._events()
        self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    def _events(self):
        console = self.server.console
        events: queue.Queue = queue.Queue()
        remove = console.listen(events.put)  # before the snapshot: nothing falls between
        try:
            snapshot = console.snapshot()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(self._event("snapshot", snapshot))
            idle = 0.0
            while not self.server.closing.is_set():
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    idle += 0.5
                    if idle >= KEEPALIVE_S:  # a dead page shows as a failed write
                        idle = 0.0
                        self.wfile.write(b": keepalive\n\n")
                    continue
                idle = 0.0
                if event["seq"] > snapshot["seq"]:
                    self.wfile.write(self._event("change", event))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page went away
        finally:
            remove()

    @staticmethod
    def _event(name, value) -> bytes:
        return ("event: %s\ndata: %s\n\n" % (name, json.dumps(value, ensure_ascii=False))).encode()

    def do_POST(self):
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "the console answers only to localhost"})
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send application/json"})
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
        path = urlsplit(self.path).path
        link = self.server.link
        try:
            match = ACTION_PATH.match(path)
            if match and ALERT_ID.match(match.group(1)):
                return self._json(HTTPStatus.ACCEPTED, link.act(match.group(1), match.group(2)))
            if path == "/api/monitor":
                return self._json(HTTPStatus.ACCEPTED, link.monitor(body))
        except KeyError as err:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "unknown: %s" % err})
        except ValueError as err:  # model.Malformed: the text says why
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        self._json(HTTPStatus.NOT_FOUND, {"error": "no such action"})

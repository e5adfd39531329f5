"""Prometheus metrics of one agent (served on /metrics by prometheus-client).

Each agent has its own registry, so several agents can run in one process (tests, benches).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .config import ConfigError

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class Metrics:
    def __init__(self, keep_latencies=False):
        self.latencies = [] if keep_latencies else None  # raw samples, for benchmarks
        self.registry = CollectorRegistry()
        self.frames = Counter("ansim_frames", "Frames received, by path, type and verdict",
                              ("path", "type", "verdict"), registry=self.registry)
        self.batch_seconds = Histogram("ansim_batch_seconds", "Time to process and commit one batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.alert_latency = Histogram("ansim_alert_latency_seconds",
                                       "From hearing a frame to the center broker's PUBACK of its alert",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.outbox_depth = Gauge("ansim_outbox_depth", "Alerts stored but not yet delivered to the center",
                                  registry=self.registry)
        self.intake_depth = Gauge("ansim_intake_queue_depth", "Frames waiting for the pipeline",
                                  registry=self.registry)
        self.center_connected = Gauge("ansim_center_connected", "1 while the center's broker is connected",
                                      registry=self.registry)
        self.devices_offline = Gauge("ansim_devices_offline", "Devices silent past their supervision period",
                                     registry=self.registry)
        self.escalations = Counter("ansim_escalations", "Alerts escalated to the fallback center",
                                   registry=self.registry)
        self.up = Gauge("ansim_up", "1 while a part of the agent works, 0 while it is down",
                        ("component",), registry=self.registry)
        self.center_messages = Counter("ansim_center_messages", "Messages from the center, by channel and verdict",
                                       ("channel", "verdict"), registry=self.registry)
        self.relay_depth = Gauge("ansim_relay_depth", "Frames to devices stored but not yet handed to their broker",
                                 registry=self.registry)

    def alert_delivered(self, latency_s):
        self.alert_latency.observe(latency_s)
        if self.latencies is not None:
            self.latencies.append(latency_s)

    def frames_by_verdict(self):
        """{verdict: frames} over every path and type, for people and tests."""
        totals = {}
        for metric in self.frames.collect():
            for sample in metric.samples:
                if sample.name == "ansim_frames_total":
                    verdict = sample.labels["verdict"]
                    totals[verdict] = totals.get(verdict, 0) + int(sample.value)
        return totals

    def serve(self, port, addr="127.0.0.1"):
        """Serve /metrics; returns the server: its ``shutdown()`` also frees the port."""
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as err:
            raise ConfigError("[metrics] port: cannot serve /metrics on %s:%d: %s: stop what uses the port "
                              "(another agent?), or set another port (0 turns metrics off)"
                              % (addr, port, err.strerror or err)) from None
        return _Server(server, thread)


class _Server:
    """prometheus-client's server, whose ``shutdown`` alone leaves the socket listening."""

    def __init__(self, server, thread):
        self._server, self._thread = server, thread

    def shutdown(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

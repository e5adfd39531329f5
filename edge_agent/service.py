"""``ansim agent``: wires the adapters to the core and runs until stopped.

One pipeline thread owns the core: it takes receptions in batches from a queue that every
adapter feeds (from its own thread), processes and commits each batch, acknowledges, sends
the resulting commands, and wakes the uplink. Work that other threads hand to the core (the
center's acks and monitoring requests, device state, oversize notes) is a callable on the
same queue, so it wakes the pipeline at once and runs right after the batch it arrived with.
Periodic work (supervision, purge) runs on the same thread between batches, at least every
``TICK_S``, so the core and the store need no further locking.
"""

import asyncio
import logging
import queue
import signal
import threading
import time

from . import alerts
from . import registry as registry_module
from .async_adapters import AsyncAdapters
from .core import Core
from .local_mqtt import LocalMqtt
from .metrics import Metrics
from .store import Store
from .uplink import Uplink

log = logging.getLogger("ansim.agent")

BATCH_MAX = 500
TICK_S = 0.5
PURGE_EVERY_S = 3600
TIME_EVERY_S = 6 * 3600  # bells and lights get the time again: an ESP32's RTC drifts
SUPERVISE_EVERY_S = 5.0


class Agent:
    def __init__(self, config, clock=time.time, metrics=None, virtual_air=None):
        """``virtual_air``: simulators only, a ``ThreadedAir`` to advertise on instead of BlueZ."""
        self.config = config
        self.clock = clock
        self.registry = registry_module.load(config.agent["registry"], config.supervision)
        self.store = Store(config.agent["data_dir"] / "agent.db")
        self.core = Core(config, self.registry, self.store, clock)
        self.intake = queue.Queue()  # Receptions from the adapters, and callables: work for the pipeline
        self._rejections = RejectionLog()
        self.metrics = metrics or Metrics()
        self._metrics_server = None
        self.uplink = Uplink(config, self.store, self.metrics, on_ack=self._on_center_ack,
                             on_monitor=lambda request: self._call(lambda: self._monitor(request)), clock=clock)
        self.radios = [self._ble(config.ble)] if config.ble["enabled"] else []
        self.advertiser = self._ble_transmitter(config.ble, virtual_air)
        if self.advertiser is not None:
            self.radios.append(self.advertiser)
        if config.serial["enabled"]:
            from .serial_intake import SerialIntake
            self.radios.append(SerialIntake(self.intake.put, config.serial["url"], config.serial["baudrate"]))
        self._adapters = None
        self.local = None
        if config.local_mqtt["enabled"]:
            self.local = LocalMqtt(self.intake.put, config.local_mqtt["host"], config.local_mqtt["port"],
                                   config.agent["id"] + "-local", on_state=self._on_device_state,
                                   on_oversize=self._on_oversize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._last_purge = 0.0
        self._last_time = clock()  # devices get the time when they connect; again from then on
        self._last_supervision = 0.0
        # device_id -> since when it counts as offline; heard after that, it is back online
        self._offline = dict.fromkeys(self.store.offline_devices(), clock())

    def start(self):
        """Start every adapter; if one cannot start, stop the rest and raise its error."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        if self.config.metrics["port"]:
            self._metrics_server = self.metrics.serve(self.config.metrics["port"])
        # Intake first, uplink last: the birth certificate tells the center the agent listens.
        self._thread.start()
        if self.local is not None:
            self.local.start()
        if self.radios:
            self._adapters = AsyncAdapters()
            self._adapters.start(self.radios)
        self.uplink.start()
        log.info("agent %s running: %d devices, %d alerts waiting", self.config.agent["id"],
                 len(self.registry.devices), self.store.queue_depth())

    def _ble(self, settings):
        from .ble_intake import BleIntake
        backend = None
        if settings["virtual_air"]:
            from ansim_simulators.ble_radio import bleak_backend_for
            backend = bleak_backend_for(settings["virtual_air"])
        return BleIntake(self.intake.put, receiver=settings["adapter"], backend=backend,
                         adapter=settings["adapter"], scanning_mode=settings["scanning"])

    def _ble_transmitter(self, settings, virtual_air):
        if not (settings["enabled"] and settings["advertise"]):
            return None
        from .ble_advertiser import BlueZAdvertiser, VirtualAdvertiser
        if virtual_air is not None:
            return VirtualAdvertiser(virtual_air)
        if settings["virtual_air"]:
            return None  # a virtual radio in another process: nothing to advertise on
        return BlueZAdvertiser(settings["adapter"])

    def stop(self):
        self._stop.set()
        self._call(lambda: None)  # wakes the pipeline to see the stop
        if self._adapters is not None:
            self._adapters.stop()
        if self._thread.is_alive():
            self._thread.join(10)
        if self.local is not None:
            self.local.stop()
        self.uplink.stop()
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        while not self._stop.is_set():
            batch, work = [], []
            try:
                item = self.intake.get(timeout=TICK_S)
                while True:
                    (work if callable(item) else batch).append(item)
                    if len(batch) + len(work) >= BATCH_MAX:
                        break
                    item = self.intake.get_nowait()
            except queue.Empty:
                pass
            if batch:
                self._process(batch)
            for job in work:
                job()
            self._periodic()

    def _call(self, job):
        """Run ``job()`` on the pipeline thread, as soon as it is free (from any thread)."""
        self.intake.put(job)

    def _process(self, batch):
        with self.metrics.batch_seconds.time():
            outcomes, downlinks = self.core.process_batch(batch)
        for outcome in outcomes:
            self.metrics.frames.labels(outcome.reception.path, outcome.kind or "-", outcome.verdict).inc()
            if outcome.detail:
                self._rejections.note(outcome)
        self.metrics.intake_depth.set(self.intake.qsize())
        if any(o.alert_id for o in outcomes):
            self.uplink.wake()
        self._send(downlinks)

    def _send(self, downlinks):
        for downlink in downlinks:
            if downlink.via == "ble":
                self._advertise(downlink)
            elif self.local is not None:
                self.local.send(downlink.device_id, downlink.frame)

    def _advertise(self, downlink):
        """Put a sealed frame for a wearable on the air for ``ack_advertise_s``; the pipeline
        does not wait for BlueZ."""
        if self.advertiser is None or self._adapters is None:
            log.warning("no BLE transmitter: %s for wearable %08x not relayed (enable [ble] advertise)",
                        downlink.kind, downlink.device_id)
            return
        done = asyncio.run_coroutine_threadsafe(
            self.advertiser.advertise(downlink.frame, self.config.ble["ack_advertise_s"]), self._adapters.loop)
        done.add_done_callback(lambda f: f.cancelled() or f.exception() is None or log.error(
            "could not advertise %s for wearable %08x: %s", downlink.kind, downlink.device_id, f.exception()))

    def _on_center_ack(self, alert_id, status):
        self._call(lambda: self._center_ack(alert_id, status))

    def _on_oversize(self, topic, size):
        self.metrics.frames.labels("mqtt", "-", "oversize").inc()
        self._call(lambda: self._rejections.note_reason(
            "oversize", "mqtt", "local", "%d-byte payload on %s" % (size, topic)))

    def _on_device_state(self, device_id, payload):
        if payload == b"offline":
            self._call(lambda: self._last_will(device_id))
        elif payload == b"online":
            self._call(lambda: self._set_clock(device_id))

    def _last_will(self, device_id):
        """The broker published a device's will: its connection died. Report it now rather
        than after the supervision period (the will is unauthenticated: it can only ever
        raise an offline event, never hide one)."""
        device = self.registry.get(device_id)
        if device is None or device_id in self._offline:
            return
        now = self.clock()
        self._report(False, [(device, self.store.last_heard().get(device_id, now))], now, "last_will")

    def _set_clock(self, device_id):
        """A bell or streetlight announced itself online (connected, or retained when the
        agent subscribes): send it the time. Its RTC may have lost power or drifted."""
        downlinks = self.core.time_frame(device_id, self.clock())
        if downlinks:
            self.store.commit()  # the counter, before the frame leaves
            self._send(downlinks)

    def _resync_clocks(self, now):
        """Every bell and streetlight not known to be offline gets a ``time`` frame (SPEC.md
        3.2): a connected device's clock drifts, and expiries are judged by it."""
        downlinks = []
        for device_id in self.store.last_heard():
            if device_id not in self._offline:
                downlinks += self.core.time_frame(device_id, now)
        if downlinks:
            self.store.commit()  # the counters, before the frames leave
            self._send(downlinks)

    def _monitor(self, request):
        try:
            downlinks = self.core.monitor(request, self.clock())
        except (KeyError, TypeError, ValueError) as err:
            log.warning("ignored a monitoring request: %s: %r", err, request)
            return
        self.store.commit()
        self._send(downlinks)

    def _center_ack(self, alert_id, status):
        now = self.clock()
        downlinks = self.core.center_ack(alert_id, status, now)
        if status == "resolved":
            downlinks += self.core.resolve(alert_id, now)
        self.store.commit()  # their counters, before the frames leave
        self._send(downlinks)

    def _periodic(self):
        now = self.clock()
        if now - self._last_supervision >= SUPERVISE_EVERY_S:
            self._last_supervision = now
            self._supervise(now)
            self.metrics.outbox_depth.set(self.store.queue_depth())
            self.metrics.devices_offline.set(len(self._offline))
            self._rejections.flush(now)
        if now - self._last_time >= TIME_EVERY_S:
            self._last_time = now
            self._resync_clocks(now)
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            purged = self.store.purge(now, self.config.agent["retention_days"] * 86400,
                                      self.config.agent["dedup_window_s"])
            if purged:
                log.info("purged %d delivered alerts past retention", purged)

    def _supervise(self, now):
        """Devices silent longer than their period produce one device-offline event each; an
        offline device heard again produces one device-online event."""
        silent, back = [], []
        for device_id, heard in list(self.store.last_heard().items()):
            device = self.registry.get(device_id)
            if device is None:
                continue
            if device_id in self._offline:
                if heard > self._offline[device_id]:
                    back.append((device, heard))
            elif now - heard > device.supervision_s:
                silent.append((device, heard))
        if silent:
            self._report(False, silent, now, "silent")
        if back:
            self._report(True, back, now, "heard")

    def _report(self, online, devices, now, reason):
        for device, heard in devices:
            body = alerts.availability(device, online, heard, now, self.config, reason)
            self.store.add_alert(body["alert_id"], device.device_id, now, now, body)
            if online:
                self._offline.pop(device.device_id, None)
            else:
                self._offline[device.device_id] = now
        self.store.commit()
        for device, _ in devices:
            self.store.set_offline(device.device_id, not online)
        self.uplink.wake()


def run(config):
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Agent(config):
        stop.wait()


class RejectionLog:
    """Logs rejected frames without flooding: the first of each reason at once, then one
    summary line per reason and interval (a jammer or a broken radio can send thousands)."""

    INTERVAL_S = 60.0

    def __init__(self):
        self._counts = {}
        self._last_flush = time.time()

    def note(self, outcome):
        self.note_reason(outcome.verdict, outcome.reception.path, outcome.reception.receiver, outcome.detail)

    def note_reason(self, reason, path, receiver, detail):
        if reason not in self._counts:
            log.warning("rejected a frame via %s/%s: %s", path, receiver, detail)
            self._counts[reason] = 0
        else:
            self._counts[reason] += 1

    def flush(self, now):
        if now - self._last_flush < self.INTERVAL_S:
            return
        self._last_flush = now
        for reason, count in self._counts.items():
            if count:
                log.warning("rejected %d more frames (%s) in the last %.0f s", count, reason, self.INTERVAL_S)
        self._counts = {}

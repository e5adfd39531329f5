"""``ansim agent``: wires the adapters to the core and runs until stopped.

One pipeline thread owns the core: it takes receptions in batches from a queue that every
adapter feeds (from its own thread), processes and commits each batch, acknowledges, sends
the resulting commands, and wakes the uplink. Work that other threads hand to the core (the
center's acks and monitoring requests, device state, oversize notes) is a callable on the
same queue, so it wakes the pipeline at once and runs right after the batch it arrived with.
Periodic work (supervision, purge) runs on the same thread between batches, at least every
``TICK_S``, so the core and the store need no further locking.

Frames to devices are stored with what caused them (the relay outbox) and sent after the
commit; the local broker's PUBACK, or the end of a BLE advertisement, removes them, and a
restarted agent sends what is left. Nothing fails silently: parts that depend on the outside
(brokers, radios, the disk) are retried and shown down in ``health`` meanwhile; an exception
nobody handles stops the process (``health.EXIT_FAULT``) for systemd to restart it.
"""

import asyncio
import logging
import queue
import signal
import threading
import time

from ansim_protocol.errors import UNKNOWN, FrameError

from . import alerts
from . import registry as registry_module
from . import systemd
from .async_adapters import AsyncAdapters
from .center_messages import Refused
from .config import ConfigError
from .core import Core, Downlink
from .health import EXIT_FAULT, Health
from .local_mqtt import LocalMqtt
from .metrics import Metrics
from .store import Store, StorageError
from .uplink import Uplink

log = logging.getLogger("ansim.agent")

BATCH_MAX = 500
TICK_S = 0.5
PURGE_EVERY_S = 3600
TIME_EVERY_S = 6 * 3600  # bells and lights get the time again: an ESP32's RTC drifts
SUPERVISE_EVERY_S = 5.0
STORAGE_RETRY_S = 1.0
RELAY_FLUSH_S = 5.0  # frames handed over are crossed off with the next batch, or after this when idle
LOCAL_CONNECT_WAIT_S = 10.0  # at start, for the local broker's answer before going on without it
STALE_TIME_FRAME_S = 60
CLOCK_AFTER_ONLINE_S = 10.0  # a device that says "online" again within this gets no second time frame  # a time frame older than this is not sent again after a restart


class _Stopping(Exception):
    """The agent stops while the pipeline waits for the disk."""


class Agent:
    def __init__(self, config, clock=time.time, metrics=None, virtual_air=None):
        """``virtual_air``: simulators only, a ``ThreadedAir`` to advertise on instead of BlueZ."""
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.health = Health(self.metrics.up, on_fatal=self._stop.set)
        self.registry = registry_module.load(config.agent["registry"], config.supervision)
        self.store = Store(config.agent["data_dir"] / "agent.db")
        self.core = Core(config, self.registry, self.store, clock)
        self.intake = queue.Queue()  # Receptions from the adapters, and callables: work for the pipeline
        self._rejections = RejectionLog()
        self._metrics_server = None
        self.heartbeats = {"pipeline": systemd.Heartbeat(), "uplink": systemd.Heartbeat()}
        self.watchdog = systemd.Watchdog(self.heartbeats)
        self.uplink = Uplink(config, self.store, self.metrics, clock=clock, health=self.health,
                             beat=self.heartbeats["uplink"].beat,
                             on_ack=lambda alert_id, status, done: self._call(
                                 lambda: self._center_ack(alert_id, status, done)),
                             on_monitor=lambda request, done: self._call(lambda: self._monitor(request, done)),
                             on_shared=lambda share, done: self._call(lambda: self._shared(share, done)))
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
                                   on_oversize=self._on_oversize, on_handed_over=self._on_handed_over,
                                   on_ready=lambda: self._call(self.local.flush), health=self.health,
                                   username=config.local_mqtt["username"],
                                   password_file=config.local_mqtt["password_file"])
        self._handed = []  # (device_id, counter) of frames handed over, crossed off by the pipeline
        self._pending_actions = []  # what waits for this turn's commit
        self._clock_sent = {}  # device_id -> when its last time frame for an "online" went out
        self._handed_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._last_purge = 0.0
        self._last_time = clock()  # devices get the time when they connect; again from then on
        self._last_supervision = 0.0
        self._last_relay_flush = 0.0
        # device_id -> since when it counts as offline; heard after that, it is back online
        self._offline = dict.fromkeys(self.store.offline_devices(), clock())

    def start(self):
        """Start every part; those that depend on the outside (brokers, radios) start in the
        background and are retried. Raises only for what no retry can fix."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        if self.config.metrics["port"]:
            self._metrics_server = self.metrics.serve(self.config.metrics["port"])
        self.health.up("store")
        # What a previous run owed devices goes first: queued before the pipeline makes new frames.
        leftovers, adverts = self._leftovers()
        for downlink in leftovers:
            if self.local is not None:
                self.local.send(downlink)
        # Intake first, uplink last: the birth certificate tells the center the agent listens.
        self._thread.start()
        if self.local is not None:
            self.local.start()
            self.local.wait_first_attempt(LOCAL_CONNECT_WAIT_S)
        if self.radios:
            self._adapters = AsyncAdapters(self.health)
            self._adapters.start(self.radios)
        for downlink, seconds in adverts:
            self._call(lambda d=downlink, s=seconds: self._advertise(d, s))
        self.uplink.start()
        self.watchdog.start()
        log.info("agent %s running: %d devices, %d alerts waiting", self.config.agent["id"],
                 len(self.registry.devices), self.store.queue_depth())

    def _ble(self, settings):
        from .ble_intake import BleIntake
        backend = None
        if settings["virtual_air"]:
            from ansim_simulators.hardware.ble_radio import bleak_backend_for
            backend = bleak_backend_for(settings["virtual_air"])
        return BleIntake(self.intake.put, receiver=settings["adapter"], backend=backend,
                         adapter=settings["adapter"], scanning_mode=settings["scanning"],
                         company_id=settings["company_id"])

    def _ble_transmitter(self, settings, virtual_air):
        if not (settings["enabled"] and settings["advertise"]):
            return None
        from .ble_advertiser import BlueZAdvertiser, HciAdvertiser, VirtualAdvertiser
        if virtual_air is not None:
            return VirtualAdvertiser(virtual_air, company_id=settings["company_id"])
        if settings["virtual_air_tx"]:
            return HciAdvertiser(settings["virtual_air_tx"], company_id=settings["company_id"])
        if settings["virtual_air"]:
            return None  # a virtual radio in another process, with no controller to advertise on
        return BlueZAdvertiser(settings["adapter"], company_id=settings["company_id"])

    def stop(self):
        self._stop.set()
        self.watchdog.stop()
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

    def wait(self, timeout=None):
        """Until the agent stops (a fatal fault stops it too); True if it stopped."""
        return self._stop.wait(timeout)

    def reload(self):
        """SIGHUP: read the registry again (new devices without a restart)."""
        self._call(self._reload_registry)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the pipeline thread -----------------------------------------------------------------

    def _run(self):
        try:
            while not self._stop.is_set():
                self.heartbeats["pipeline"].beat()
                batch, work = self._take()
                if batch:
                    self._process(batch)
                for job in work:
                    job()
                self._settle_turn()
                self._periodic()
        except _Stopping:
            pass
        except Exception as exc:
            self.health.fatal("pipeline", exc)

    def _take(self):
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
        return batch, work

    def _call(self, job):
        """Run ``job()`` on the pipeline thread, as soon as it is free (from any thread)."""
        self.intake.put(job)

    def _commit(self):
        """Commit what is staged. While the store cannot be written (a full disk) the pipeline
        retries every second and acknowledges nothing: the brokers keep what it has not
        PUBACKed, and nothing is lost once space is freed."""
        while True:
            try:
                self.store.commit()
            except StorageError as err:
                self.health.down("store", err)
                self.heartbeats["pipeline"].beat()  # waiting for the disk is not a wedge: a restart cannot help
                if self._stop.wait(STORAGE_RETRY_S):
                    raise _Stopping() from None
                continue
            if not self.health.is_up("store"):
                self.health.up("store")
            return

    def _after_commit(self, action):
        """Run ``action()`` once what this turn of the pipeline staged is committed."""
        self._pending_actions.append(action)

    def _settle_turn(self):
        """One commit for the turn's frames and control work (group commit: one fsync), then
        what waited for it: PUBACKs, frames to devices, logs, in the order they were staged."""
        if not self._pending_actions:
            return
        with self.metrics.batch_seconds.time():
            self._commit()
        actions, self._pending_actions = self._pending_actions, []
        for action in actions:
            action()

    def _process(self, batch):
        self._cross_off_handed_over()
        outcomes, downlinks = self.core.stage_batch(batch)
        self._after_commit(lambda: self._processed(batch, outcomes, downlinks))

    def _processed(self, batch, outcomes, downlinks):
        for reception in batch:
            if reception.ack is not None:
                reception.ack()
        self.health.up("pipeline")
        for outcome in outcomes:
            self.metrics.frames.labels(outcome.reception.path, outcome.kind or "-", outcome.verdict).inc()
            if outcome.detail:
                self._rejections.note(outcome)
            elif outcome.alert_id:
                log.info("alert %s stored: %s of device %08x via %s/%s", outcome.alert_id, outcome.kind,
                         outcome.device_id, outcome.reception.path, outcome.reception.receiver)
        self.metrics.intake_depth.set(self.intake.qsize())
        if any(o.alert_id for o in outcomes):
            self.uplink.wake()
        for outcome in outcomes:
            if outcome.verdict == "accepted" and outcome.kind == "light_state":
                self.uplink.light_state(outcome.device_id, self.core.light_states[outcome.device_id])
            elif outcome.heard is not None:
                self.uplink.heard(outcome.heard, outcome.reception)
        self._send(downlinks)

    def _commit_and_send(self, downlinks, done=None):
        """Store frames to devices with what caused them; once committed, ``done()`` (the
        PUBACK of the message that asked for them) and send them."""
        self.store.add_downlinks(downlinks, self.clock())

        def committed():
            if done is not None:
                done()
            self._send(downlinks)
        self._after_commit(committed)

    def _send(self, downlinks):
        for downlink in downlinks:
            if downlink.via == "ble":
                self._advertise(downlink, self.config.ble["ack_advertise_s"])
            elif self.local is not None:
                self.local.send(downlink)
            else:
                self._on_handed_over(downlink.device_id, downlink.counter)

    def _leftovers(self):
        """Frames to devices that a previous run stored but never handed over, in order:
        (for the local broker, for the BLE transmitter with the seconds left to advertise).
        Stale time frames and finished adverts are crossed off."""
        now = self.clock()
        mqtt, ble, dropped = [], [], []
        for device_id, counter, kind, via, frame, created in self.store.pending_downlinks():
            age = now - created
            downlink = Downlink(device_id, counter, frame, kind, via)
            if (kind == "time" and age > STALE_TIME_FRAME_S) or (via == "ble" and age >= self.config.ble["ack_advertise_s"]):
                dropped.append((device_id, counter))
            elif via == "ble":
                ble.append((downlink, self.config.ble["ack_advertise_s"] - age))
            else:
                mqtt.append(downlink)
        if dropped:
            self.store.handed_over(dropped)
            self._commit()
        if mqtt or ble:
            log.info("sending %d frames to devices again that the previous run had not handed over",
                     len(mqtt) + len(ble))
        return mqtt, ble

    def _advertise(self, downlink, seconds):
        """Put a sealed frame for a wearable on the air for ``seconds``; the pipeline does not
        wait for BlueZ. The relay outbox forgets it when the advertisement ends."""
        key = (downlink.device_id, downlink.counter)
        if self.advertiser is None or self._adapters is None or not self._adapters.is_started(self.advertiser):
            log.warning("no BLE transmitter: %s for wearable %08x not relayed (enable [ble] advertise; "
                        "is the adapter up?)", downlink.kind, downlink.device_id)
            self._on_handed_over(*key)
            return
        done = asyncio.run_coroutine_threadsafe(self.advertiser.advertise(downlink.frame, seconds), self._adapters.loop)

        def finished(future):
            if not future.cancelled() and future.exception() is not None:
                log.error("could not advertise %s for wearable %08x: %s", downlink.kind, downlink.device_id,
                          future.exception())
            self._on_handed_over(*key)
        done.add_done_callback(finished)

    def _on_handed_over(self, device_id, counter):
        with self._handed_lock:
            self._handed.append((device_id, counter))

    def _cross_off_handed_over(self):
        with self._handed_lock:
            handed, self._handed = self._handed, []
        if handed:
            self.store.handed_over(handed)

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
        raise an offline event, never hide one). A device that came back and dropped again
        before supervision noticed its return is reported back online first."""
        device = self.registry.get(device_id)
        if device is None:
            return
        now = self.clock()
        heard = self.store.last_heard().get(device_id, now)
        if device_id in self._offline:
            if heard <= self._offline[device_id]:
                return  # still offline since the last report
            self._report(True, [(device, heard)], now, "heard")
        self._report(False, [(device, heard)], now, "last_will")

    def _set_clock(self, device_id):
        """A bell or streetlight announced itself online (connected, or retained when the
        agent subscribes): send it the time. Its RTC may have lost power or drifted. At most
        one per CLOCK_AFTER_ONLINE_S: the state topic is unauthenticated, and a flood of
        forged "online" messages must not become a flood of frames."""
        now = self.clock()
        if now - self._clock_sent.get(device_id, float("-inf")) < CLOCK_AFTER_ONLINE_S:
            return
        downlinks = self.core.time_frame(device_id, now)
        if downlinks:
            self._clock_sent[device_id] = now
            self._commit_and_send(downlinks)

    def _resync_clocks(self, now):
        """Every bell and streetlight not known to be offline gets a ``time`` frame (SPEC.md
        3.2): a connected device's clock drifts, and expiries are judged by it."""
        downlinks = []
        for device_id in self.store.last_heard():
            if device_id not in self._offline:
                downlinks += self.core.time_frame(device_id, now)
        if downlinks:
            self._commit_and_send(downlinks)

    def _monitor(self, request, done):
        try:
            downlinks = self.core.monitor(request, self.clock())
        except Refused as refused:
            self.uplink.refused("monitor", refused)
            done()
            return
        self._commit_and_send(downlinks, done)
        self._after_commit(lambda: log.info("walk-home session %s: %s, %d light commands", request["session"],
                                            request["action"], len(downlinks)))

    def _center_ack(self, alert_id, status, done):
        """Closed, stored and relayed before the center's message is PUBACKed."""
        now = self.clock()
        try:
            downlinks = self.core.center_ack(alert_id, status, now)
        except Refused as refused:
            self.uplink.refused("ack", refused)
            done()
            return
        if status == "resolved":
            downlinks += self.core.resolve(alert_id, now)
        self._commit_and_send(downlinks, done)
        self._after_commit(lambda: log.info("alert %s acknowledged by the center: %s; %d frames to devices",
                                            alert_id, status, len(downlinks)))

    def _shared(self, share, done):
        """A frame another agent of the district accepted: its counter is stored as accepted
        here before the message is PUBACKed, so the same frame replayed here is no new event."""
        try:
            verdict = self.core.merge_shared(share["device_id"], share["frame"], share["epoch"], self.clock())
        except FrameError as err:
            if err.reason != UNKNOWN:  # a device of another site: normal in a district
                self.uplink.refused("accepted", "from agent %s: %s" % (share["agent"], err))
            done()
            return
        self._commit_and_send([], done)
        log.debug("frame of device %08x accepted by agent %s: %s here", share["device_id"], share["agent"], verdict)

    def _reload_registry(self):
        try:
            registry = registry_module.load(self.config.agent["registry"], self.config.supervision)
        except ConfigError as err:
            log.error("registry not reloaded, the agent keeps the one it has: %s", err)
            return
        before = set(self.registry.devices)
        self.registry = registry
        self.core.reload(registry)
        after = set(registry.devices)
        log.info("registry reloaded: %d devices (%d new, %d removed)", len(after), len(after - before),
                 len(before - after))

    def _periodic(self):
        now = self.clock()
        if now - self._last_relay_flush >= RELAY_FLUSH_S:
            self._last_relay_flush = now
            self._cross_off_handed_over()
            if self.store.pending_writes():
                self._commit()
        if now - self._last_supervision >= SUPERVISE_EVERY_S:
            self._last_supervision = now
            self._supervise(now)
            self.metrics.outbox_depth.set(self.store.queue_depth())
            self.metrics.relay_depth.set(self.store.relay_depth())
            self.metrics.devices_offline.set(len(self._offline))
            self._rejections.flush(now)
        if now - self._last_time >= TIME_EVERY_S:
            self._last_time = now
            self._resync_clocks(now)
            self._settle_turn()
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            try:
                purged = self.store.purge(now, self.config.agent["retention_days"] * 86400,
                                          self.config.agent["dedup_window_s"])
            except StorageError as err:
                self.health.down("store", err)
                return
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
        stored = []
        for device, heard in devices:
            body = alerts.availability(device, online, heard, now, self.config, reason)
            self.store.add_alert(body["alert_id"], device.device_id, now, now, body)
            self.store.set_offline(device.device_id, not online)
            if online:
                self._offline.pop(device.device_id, None)
            else:
                self._offline[device.device_id] = now
            stored.append(body)
        self._commit()
        for body in stored:
            log.info("alert %s stored: %s of device %s (%s)", body["alert_id"], body["type"], body["device"]["id"],
                     reason)
        self.uplink.wake()


def _thread_died(agent, hook):
    """Any thread that dies of an exception (a radio's reader, a library's worker) stops the agent."""
    if hook.exc_type is SystemExit or hook.exc_value is None:
        return
    agent.health.fatal(hook.thread.name if hook.thread is not None else "a thread", hook.exc_value)


def run(config):
    """Run until SIGTERM or SIGINT; SIGHUP reloads the registry. Returns the exit status:
    0, or health.EXIT_FAULT after an unhandled error (systemd restarts the agent)."""
    agent = Agent(config)
    threading.excepthook = lambda hook: _thread_died(agent, hook)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent._stop.set())
    signal.signal(signal.SIGHUP, lambda *_: agent.reload())
    with agent:
        systemd.ready()
        agent.wait()
        systemd.stopping()
    return EXIT_FAULT if agent.health.fault is not None else 0


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

"""Which parts of a running agent work, for /metrics (``ansim_up{component}``), ``ansim agent
status`` and the log, and what happens when one fails in a way nobody foresaw.

A part that is down for a reason outside the agent (no broker, no Bluetooth adapter, a full
disk) is marked down and retried by its owner; the agent runs degraded and says so once per
change. An exception that nothing handles is a bug: ``fatal`` logs it with its traceback and
stops the process with EXIT_FAULT, so that systemd restarts a clean agent (everything
acknowledged is in the store) instead of leaving a live process with a dead thread.
"""

import logging
import threading

log = logging.getLogger("ansim.agent.health")

EXIT_FAULT = 70  # EX_SOFTWARE: an internal error; systemd's Restart=always starts a new agent


class Health:
    def __init__(self, gauge, on_fatal):
        self._gauge = gauge
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._down = {}  # component -> reason
        self._starting = set()  # components down only because they have not come up yet
        self.fault = None  # (component, exception) of the first fatal error

    def up(self, component):
        with self._lock:
            was_down = self._down.pop(component, None)
            first = component in self._starting
            self._starting.discard(component)
        self._gauge.labels(component).set(1)
        if was_down is not None:
            log.info("%s is %s", component, "up" if first else "back up")

    def starting(self, component, what):
        """``component`` is on its way up: down until it says ``up``, without an error."""
        with self._lock:
            self._down[component] = what
            self._starting.add(component)
        self._gauge.labels(component).set(0)
        log.info("%s: %s", component, what)

    def down(self, component, reason, quiet=False):
        """Mark ``component`` down; logged when the reason changes, not at every retry
        (``quiet``: the caller logs it itself)."""
        reason = str(reason)
        with self._lock:
            previous = self._down.get(component)
            self._down[component] = reason
            self._starting.discard(component)
        self._gauge.labels(component).set(0)
        if previous != reason and not quiet:
            log.error("%s is DOWN: %s", component, reason)

    def is_up(self, component):
        with self._lock:
            return component not in self._down

    def down_components(self):
        with self._lock:
            return dict(self._down)

    def fatal(self, component, exc):
        """An unhandled exception in ``component``: log it whole and stop the agent."""
        with self._lock:
            first = self.fault is None
            if first:
                self.fault = (component, exc)
            self._down[component] = "crashed: %r" % exc
        self._gauge.labels(component).set(0)
        if first:
            log.critical("%s crashed; the agent exits (status %d) so that systemd restarts it: %r",
                         component, EXIT_FAULT, exc, exc_info=(type(exc), exc, exc.__traceback__))
            self._on_fatal()

    def guard(self, component, callback):
        """``callback`` for a foreign thread (paho's): an exception in it is fatal, not lost."""
        def guarded(*args):
            try:
                return callback(*args)
            except Exception as exc:
                self.fatal(component, exc)
        return guarded

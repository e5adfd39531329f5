"""Runs the asyncio intakes (BLE through bleak, serial lines, the BLE transmitter) on one
event loop in a thread of their own, next to the threaded core and paho clients.

An intake that cannot start (no Bluetooth adapter, no serial port yet) does not stop the
others: it is shown down in ``health`` and tried again with a growing delay.
"""

import asyncio
import threading

from .intake import IntakeUnavailable

START_TIMEOUT_S = 30.0
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0


def component(intake):
    """The name an intake has in health, metrics and status (``ble``, ``serial``...)."""
    return getattr(intake, "component", type(intake).__name__.lower())


class AsyncAdapters:
    def __init__(self, health):
        self.health = health
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._unhandled)
        self._thread = threading.Thread(target=self.loop.run_forever, name="radios", daemon=True)
        self._starting = []
        self.started = []

    def start(self, intakes):
        """Start each intake: the first attempt is waited for (an intake that is there works
        when the agent says it runs), those that fail are retried in the background."""
        self._thread.start()
        for intake in intakes:
            tried = threading.Event()
            self._starting.append(asyncio.run_coroutine_threadsafe(self._keep_starting(intake, tried), self.loop))
            tried.wait(START_TIMEOUT_S + 1)

    def _unhandled(self, loop, context):
        """An exception no task or callback of the radios handled: a bug, fatal like any other."""
        error = context.get("exception")
        if error is None or isinstance(error, asyncio.CancelledError):
            loop.default_exception_handler(context)
            return
        self.health.fatal("radios", error)

    def is_started(self, intake):
        return intake in self.started

    async def _keep_starting(self, intake, tried):
        name, delay = component(intake), RETRY_FIRST_S
        try:
            while not await self._try_start(intake, name):
                tried.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        finally:
            tried.set()

    async def _try_start(self, intake, name):
        """True once started (or crashed, which stops the agent); False to try again."""
        try:
            await asyncio.wait_for(intake.start(), START_TIMEOUT_S)
        except IntakeUnavailable as err:
            self.health.down(name, "%s; trying again" % err)
            return False
        except asyncio.TimeoutError:
            self.health.down(name, "did not start within %.0f s; trying again" % START_TIMEOUT_S)
            return False
        except Exception as exc:
            self.health.fatal(name, exc)
            return True
        self.started.append(intake)
        self.health.up(name)
        return True

    def stop(self):
        for attempt in self._starting:
            attempt.cancel()
        for intake in reversed(self.started):
            asyncio.run_coroutine_threadsafe(intake.stop(), self.loop).result(START_TIMEOUT_S)
        self.started = []
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._cancel_the_rest(), self.loop).result(START_TIMEOUT_S)
            except (asyncio.CancelledError, TimeoutError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    @staticmethod
    async def _cancel_the_rest():
        """Tasks the radios left (timers, a library's workers) end here, not destroyed pending."""
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

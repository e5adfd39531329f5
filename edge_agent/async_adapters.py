"""Runs the asyncio intakes (BLE through bleak, serial lines) on one event loop in a thread
of their own, next to the threaded core and paho clients."""

import asyncio
import threading

START_TIMEOUT_S = 30.0


class AsyncAdapters:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="radios", daemon=True)
        self.started = []

    def start(self, intakes):
        """Start each intake; the first that cannot start stops the others and raises its
        IntakeUnavailable (the message says what is missing and what to do)."""
        self._thread.start()
        for intake in intakes:
            try:
                asyncio.run_coroutine_threadsafe(intake.start(), self.loop).result(START_TIMEOUT_S)
            except BaseException:
                self.stop()
                raise
            self.started.append(intake)

    def stop(self):
        for intake in reversed(self.started):
            asyncio.run_coroutine_threadsafe(intake.stop(), self.loop).result(START_TIMEOUT_S)
        self.started = []
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

"""Recording Celery's task events from Redis, to count how often each job really ran."""
from __future__ import annotations

import ast
import threading
import time
from collections import Counter

from celery import Celery


class EventLog:
    """Captures every event in a background thread; ready once the first event (a heartbeat) arrives."""

    def __init__(self, redis_url: str, timeout: float = 30):
        self.app = Celery(broker=redis_url)
        self.events: list[dict] = []
        self._ready = threading.Event()
        self._receiver = None
        threading.Thread(target=self._capture, daemon=True).start()
        if not self._ready.wait(timeout):
            raise RuntimeError("no Celery event arrived: are workers running with -E?")

    def _record(self, event: dict) -> None:
        self.events.append(event)
        self._ready.set()

    def _capture(self) -> None:
        try:
            with self.app.connection() as connection:
                self._receiver = self.app.events.Receiver(connection, handlers={"*": self._record})
                self._receiver.capture(limit=None, timeout=None, wakeup=True)
        except Exception:  # Redis went away (a test's teardown, or a deliberate restart): stop recording
            pass

    def count(self, event_type: str) -> Counter:
        return Counter(e["uuid"] for e in list(self.events) if e.get("type") == event_type)

    def hostnames(self, event_type: str) -> Counter:
        return Counter(e["hostname"].split("@")[0] for e in list(self.events) if e.get("type") == event_type)

    def settle(self, event_type: str, uuids, timeout: float = 30) -> Counter:
        """Counts of `event_type` once every one of `uuids` has one.

        A task's event leaves the worker just after its result is stored, so a
        producer can hold a result before the event has arrived here.
        """
        wanted = set(uuids)
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.count(event_type)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.count(event_type)

    def computed(self, uuid: str) -> int:
        """How often a job was computed: its successes that did not just read the stored result.

        Under load a message can be delivered once more after its job finished (a visibility
        timeout passing while the first run is slow); that delivery finds the result and
        answers cached, which loses nothing and runs nothing twice.
        """
        return sum(not ast.literal_eval(e["result"])["cached"] for e in list(self.events)
                   if e.get("type") == "task-succeeded" and e["uuid"] == uuid)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True

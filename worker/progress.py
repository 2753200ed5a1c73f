"""Publishing a running job's progress where people look for it.

Two audiences, two channels, each throttled so the job pays almost nothing:

- `AsyncResult(job_id).info` (producers, `--wait`): `update_state('PROGRESS')`
  writes the result backend, at most every BACKEND_INTERVAL seconds.
- Flower: it builds its task view from events only, and shows only the task
  fields it knows (`celery.events.state.Task._fields`). A custom
  `task-progress` event turns the state into PROGRESS and its fields are
  merged into the task; `result` is one of the known fields, so the progress
  text travels in it and shows on Flower's task list and task page. The
  task-succeeded event later replaces it with the real result.
"""
from __future__ import annotations

import logging
import time

from featurevis import contract

log = logging.getLogger(__name__)

BACKEND_INTERVAL = 0.25
EVENT_INTERVAL = 1.0


class ProgressPublisher:
    def __init__(self, task, backend_interval: float = BACKEND_INTERVAL, event_interval: float = EVENT_INTERVAL):
        self.task = task
        self.intervals = {"backend": backend_interval, "event": event_interval}
        self.last = {"backend": float("-inf"), "event": float("-inf")}

    def publish(self, progress: contract.Progress) -> None:
        """Send progress on every channel whose interval has passed (always on the final iteration).

        Best effort: a broker hiccup must cost a progress update, never the job.
        """
        now, final = time.monotonic(), progress.iteration == progress.iterations
        try:
            if self._due("backend", now, final):
                self.task.update_state(state="PROGRESS", meta=progress.model_dump(mode="json"))
            if self._due("event", now, final) and self.task.request.id:
                self.task.send_event("task-progress", result=progress.line(), progress=progress.model_dump(mode="json"))
        except Exception as error:
            log.warning("progress of %s not published: %s", self.task.request.id, error)

    def _due(self, channel: str, now: float, final: bool) -> bool:
        if final or now - self.last[channel] >= self.intervals[channel]:
            self.last[channel] = now
            return True
        return False


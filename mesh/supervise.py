"""Supervised background work: a long-lived task survives any exception and health says so.

Every loop an agent runs beside its message handling (the receipts' sweep and store, the outbox
relay and sweep, the state publisher, retained-state convergence, health, pruning, and an
agent's own schedules) runs under a `Supervisor`:

- a cycle that fails is reported with `failed(name, exc)`: counted in
  `mesh_task_failures_total{task}`, logged, and shown in health until a cycle succeeds
  (`ok(name)`); the loop itself goes on;
- a task whose coroutine raises is restarted after the project's jittered backoff
  (mesh.backoff), counted the same way; a `job` (run once until it succeeds, like a
  convergence after a reconnect) is retried the same way until it returns;
- a task that ends for any other reason than `stop()` (a loop that returned, something that
  cancelled it) makes health say so by name: `task:<name>` is a failing check.

Hand-written: asyncio has TaskGroup (which cancels every task when one fails: the opposite) and
no restart policy; aiojobs schedules jobs without restarts or health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mesh.backoff import Backoff
from mesh.metrics import Metrics
from mesh.schemas import Check

log = logging.getLogger("mesh.supervise")

Work = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs an agent's background loops: a failing cycle is retried with backoff, health is told."""

    def __init__(
        self, metrics: Metrics | None = None, *, base_s: float = 0.1, cap_s: float = 30.0
    ) -> None:
        self._metrics = metrics
        self._base = base_s
        self._cap = cap_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._trouble: dict[str, str] = {}  # task -> its last failure, until a cycle succeeds
        self._ended: dict[str, str] = {}  # task -> why it is not running any more
        self.failures: dict[str, int] = {}
        self._stopping = False
        self._stopped: set[asyncio.Task[None]] = set()  # cancelled on purpose

    # -- starting -------------------------------------------------------------------------------

    def start(self, name: str, run: Work) -> asyncio.Task[None]:
        """Run `run` for as long as the supervisor runs: restarted after backoff when it
        raises, and when it returns (a loop that ends is a bug: said in health meanwhile)."""
        return self._launch(name, run, forever=True)

    def job(self, name: str, run: Work) -> asyncio.Task[None]:
        """Run `run` until it returns once (retried after backoff while it raises). A job of
        the same name still running is cancelled first: the newest one is what counts."""
        return self._launch(name, run, forever=False)

    def _launch(self, name: str, run: Work, *, forever: bool) -> asyncio.Task[None]:
        old = self._tasks.get(name)
        if old is not None and not old.done():
            self._stopped.add(old)
            old.cancel()
        self._ended.pop(name, None)
        self.register(name)
        task = asyncio.create_task(self._supervise(name, run, forever), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._done(name, t))
        return task

    def register(self, name: str) -> None:
        """Make `name`'s failure counter exist (at 0) before anything fails."""
        self.failures.setdefault(name, 0)
        if self._metrics is not None:
            self._metrics.task_failures.labels(name).inc(0)

    async def _supervise(self, name: str, run: Work, forever: bool) -> None:
        backoff = Backoff(self._base, self._cap)
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(name, exc)
                await backoff.sleep()
                continue
            if not forever:
                self.ok(name)
                return
            self.failed(name, RuntimeError("the loop returned"))
            await backoff.sleep()

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        stopped = task in self._stopped
        self._stopped.discard(task)
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if stopped or self._stopping or name in self._tasks:  # stopped, or a newer one runs
            return
        if task.cancelled():
            self._ended[name] = "cancelled"
            log.error("background task %s was cancelled", name)
            return
        exc = task.exception()
        if exc is not None:  # only a BaseException gets here (KeyboardInterrupt, SystemExit)
            self._ended[name] = f"ended: {type(exc).__name__}: {exc}"
            log.error("background task %s ended: %r", name, exc)

    # -- reporting ------------------------------------------------------------------------------

    def failed(self, name: str, exc: BaseException, *, cycle: bool = True) -> None:
        """A cycle (or, with `cycle=False`, one item, dead-lettered and done with) of `name`
        failed: count it, log it; a failed cycle is said in health until one goes through."""
        self.failures[name] = self.failures.get(name, 0) + 1
        if self._metrics is not None:
            self._metrics.task_failures.labels(name).inc()
        detail = f"{type(exc).__name__}: {exc}"[:300]
        if not cycle:
            log.warning("%s: one item failed for good: %s", name, detail)
            return
        if name not in self._trouble:
            log.warning("%s failed (retried with backoff): %s", name, detail, exc_info=exc)
        else:
            log.debug("%s failed again: %s", name, detail)
        self._trouble[name] = detail

    def ok(self, name: str) -> None:
        """A cycle of `name` went through: its earlier failure is over."""
        if self._trouble.pop(name, None) is not None:
            log.info("%s works again", name)

    def checks(self) -> dict[str, Check]:
        """Failing checks only: a task that ended, or whose last cycle failed."""
        out = {
            f"task:{name}": Check(ok=False, detail=f"not running ({why})")
            for name, why in self._ended.items()
        }
        for name, detail in self._trouble.items():
            n = self.failures.get(name, 0)
            out.setdefault(
                f"task:{name}", Check(ok=False, detail=f"failing ({n} failures), last: {detail}")
            )
        return out

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    # -- stopping -------------------------------------------------------------------------------

    async def stop(self, timeout: float = 5.0, *names: str) -> None:
        """Cancel `names` (all when none are given) and wait for them, bounded."""
        if not names:
            self._stopping = True
        tasks = [t for n, t in list(self._tasks.items()) if not names or n in names]
        for task in tasks:
            self._stopped.add(task)
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

"""CrashRestarts: brings a crashed worker back by a `RestartPolicy` (attempts, backoff, giving up).

The parent hands it the means (`restart`, and whether the worker is still
down) and runs `run()` as a task after each crash; this class only counts
attempts in a row and waits between them. `stop()` (from `dispose()`) ends a
wait at once, and no attempt starts after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .._restart import RestartPolicy

logger = logging.getLogger("llama_isolate")


class CrashRestarts:
    """The restarts of one parent's worker, by `policy`.

    Args:
        policy: how often and how far apart.
        clock: monotonic seconds (a parameter for tests).
    """

    def __init__(self, policy: RestartPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._attempts = 0  # attempts in a row: since the last worker that stayed up reset_after_s
        self._up_since: float | None = None  # when the last worker this started was ready
        self._wake: asyncio.Future[None] | None = None
        self.stopped = False

    def stop(self) -> None:
        """No more attempts; a wait between two ends at once."""
        self.stopped = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(
        self, crash: str, restart: Callable[[], Awaitable[None]], still_down: Callable[[], bool]
    ) -> str | None:
        """Try `restart()` until a worker is up; None then (or when stopped, or `still_down()` turns False).

        Returns the reason to give up once `max_attempts` attempts in a row
        have failed; `crash` describes the death that began this.
        """
        policy = self.policy
        if self._up_since is None or self._clock() - self._up_since >= policy.reset_after_s:
            self._attempts = 0
        self._up_since = None
        last = crash
        while not self.stopped and still_down():
            if policy.max_attempts is not None and self._attempts >= policy.max_attempts:
                attempts, self._attempts = self._attempts, 0
                logger.error("llama_isolate: gave up restarting the worker after %d attempts: %s", attempts, last)
                plural = "" if attempts == 1 else "s"
                return (
                    f"the worker died and could not be restarted after {attempts} attempt{plural} "
                    f"(RestartPolicy.max_attempts={policy.max_attempts}): {last}"
                )
            self._attempts += 1
            await self._wait(policy.wait_before(self._attempts))
            if self.stopped or not still_down():
                return None
            of = "" if policy.max_attempts is None else f" of {policy.max_attempts}"
            logger.warning("llama_isolate: restarting the worker (attempt %d%s)", self._attempts, of)
            try:
                await restart()
            except Exception as exc:  # a load error, or no process could be spawned: the next attempt may work
                if self.stopped:
                    return None  # dispose() ended the load
                last = str(exc) or type(exc).__name__
                logger.error("llama_isolate: restart attempt %d%s failed: %s", self._attempts, of, last)
                continue
            self._up_since = self._clock()
            logger.warning("llama_isolate: the worker is back (attempt %d%s)", self._attempts, of)
            return None
        return None

    async def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        logger.warning("llama_isolate: next restart of the worker in %.1f s", seconds)
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({self._wake}, timeout=seconds)
        finally:
            self._wake = None

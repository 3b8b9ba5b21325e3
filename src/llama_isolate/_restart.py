"""RestartPolicy: how `LlamaParent(restart_on_crash=...)` brings a crashed worker back.

A frozen, keyword-only dataclass checked at construction, like the parameter
classes: a bad value raises `ValueError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._params import _check_float, _check_int, _fail


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """When and how often a parent starts a new worker after its worker died.

    The first restart after a crash starts at once. If it fails (the model no
    longer loads, the new worker dies too) the next waits `backoff_s`, and
    each wait after that doubles, up to `max_backoff_s`. A restarted worker
    that dies before it has stayed up `reset_after_s` counts as one more
    attempt in a row, so a worker that keeps crashing is backed off too. After
    `max_attempts` attempts in a row the parent gives up: every prompt still
    queued fails with ``error_code="worker_died"`` and `status` stays ERROR
    (`restart()` may try again).

    While it restarts, queued prompts stay queued and new ones are accepted;
    the prompts that were running when the worker died fail.

    Example::

        policy = RestartPolicy(max_attempts=None, backoff_s=0.5, max_backoff_s=10.0)
        parent = LlamaParent(load, restart_on_crash=policy)

    Attributes:
        max_attempts: restarts tried in a row before giving up; None = forever
            (what `llama-isolate serve` uses).
        backoff_s: the wait before the second attempt in a row (the first
            starts at once); 0 = no wait.
        max_backoff_s: the longest wait between two attempts (>= `backoff_s`).
        reset_after_s: a worker that stayed up this long starts the count of
            attempts again from zero; ``math.inf`` = never (then `max_attempts`
            bounds the restarts over the parent's whole life).
    """

    max_attempts: int | None = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        c = "RestartPolicy"
        if self.max_attempts is not None:
            _check_int(c, "max_attempts", self.max_attempts, 1)
        _check_float(c, "backoff_s", self.backoff_s, 0.0)
        _check_float(c, "max_backoff_s", self.max_backoff_s, 0.0)
        _check_float(c, "reset_after_s", self.reset_after_s, 0.0)
        for name in ("backoff_s", "max_backoff_s"):
            if math.isinf(getattr(self, name)):
                _fail(c, name, "a finite number of seconds", getattr(self, name))
        if self.max_backoff_s < self.backoff_s:
            _fail(c, "max_backoff_s", f">= backoff_s ({self.backoff_s!r})", self.max_backoff_s)

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before the `attempt`-th restart in a row (1-based): 0 for the first, then doubling.

        Example::

            RestartPolicy(backoff_s=1, max_backoff_s=5).wait_before(4)  # 4.0; the 5th and later: 5.0
        """
        if attempt <= 1:
            return 0.0
        return float(min(self.backoff_s * 2.0 ** min(attempt - 2, 64), self.max_backoff_s))

"""Retries that spread: the delay before a step's next try, different for every VM of a run.

Airflow's exponential backoff draws its jitter from (dag, task, logical date, try): every mapped
task of a run gets the same delay, so a fault that hit the host at the probe makes all its VMs try
again at the same second, and meet the same overloaded host together. `spread_delay` adds the map
index (and the run) to the draw; `SpreadRetries` is the Airflow retry policy that applies it.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy


def spread_delay(base: timedelta, try_number: int, key: str) -> timedelta:
    """base x 2^(try - 1), times a factor in [1, 2) drawn from `key`: deterministic, different per key."""
    draw = int(hashlib.sha256(f"{key}#{try_number}".encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return base * (2 ** max(0, try_number - 1)) * (1 + draw)


class SpreadRetries(RetryPolicy):
    """Retry a failed try after `spread_delay` (the task's `retries` still bound how many)."""

    def __init__(self, base: timedelta):
        self.base = base

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int, context: Any = None) -> RetryDecision:
        ti = (context or {}).get("ti")
        if ti is None:
            return RetryDecision.default()
        key = f"{ti.dag_id}#{ti.run_id}#{ti.task_id}#{ti.map_index}"
        return RetryDecision.retry(spread_delay(self.base, try_number, key))

    def serialize(self) -> dict[str, Any]:
        return {"base_seconds": self.base.total_seconds()}

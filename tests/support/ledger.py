"""What the fault and bad-input tests did and saw, summed up by ``python -m tests.faults.report``.

Each test records the faults it injected and the fate of every job it submitted; the ledger is
appended to the JSON-lines file named by ``FAULT_LEDGER`` (when set), one line a test.
Every job figure is a part of ``submitted``: completed + failed as intended + failed by a storage
fault + lost by crash never exceed it. Jobs of tests that write them straight to Redis, without the
gateway, are counted apart from the jobs submitted over HTTP.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LEDGER_ENV = "FAULT_LEDGER"
# Tests that drive one component with jobs written straight to Redis: no HTTP submit.
WITHOUT_HTTP = ("tests/common/", "tests/gpu_worker/")


@dataclass
class Ledger:
    test: str
    faults: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    completed: int = 0
    failed_as_intended: int = 0
    lost: int = 0
    # Acknowledged submits that a Redis crash took back, within its promise (AOF everysec: at
    # most the last second before the crash). Not ``lost``: the promise allows them.
    lost_by_crash: int = 0
    # Jobs whose upload met a permanent storage refusal (S3 AccessDenied) that a fault made: they
    # fail at once with the reason, a terminal state by design. Not ``lost``.
    failed_by_storage_fault: int = 0
    duplicated: int = 0
    bad_inputs: int = 0
    server_errors: int = 0
    # Terminal events of jobs that asked for a webhook: due (the job ended), delivered (the
    # receiver verified at least one), deliveries beyond the first (at-least-once allows them),
    # and lost (due, never delivered).
    webhooks_due: int = 0
    webhooks_delivered: int = 0
    webhooks_duplicated: int = 0
    webhooks_lost: int = 0

    @property
    def over_http(self) -> bool:
        return not self.test.replace(".", "/").startswith(WITHOUT_HTTP)

    def fault(self, kind: str, times: int = 1) -> None:
        self.faults[kind] += times

    def outcome(self, statuses: list[str], results_per_job: list[int]) -> None:
        """Jobs expected to complete: each must, with exactly one stored result."""
        self.submitted += len(statuses)
        self.completed += sum(status == "completed" for status in statuses)
        self.lost += sum(
            status != "completed" or n == 0
            for status, n in zip(statuses, results_per_job, strict=True)
        )
        self.duplicated += sum(n > 1 for n in results_per_job)

    def write(self) -> None:
        # A job whose fate a test recorded was submitted, whether or not the test counted it.
        fates = (
            self.completed
            + self.failed_as_intended
            + self.failed_by_storage_fault
            + self.lost_by_crash
        )
        self.submitted = max(self.submitted, fates)
        path = os.environ.get(LEDGER_ENV)
        if path:
            row = {**vars(self), "faults": dict(self.faults), "over_http": self.over_http}
            with Path(path).open("a") as fh:
                fh.write(json.dumps(row) + "\n")

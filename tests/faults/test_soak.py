"""A short randomized fault soak in the suite (``python -m tests.faults.soak`` runs long ones)."""

from __future__ import annotations

from pathlib import Path

from tests.faults.soak import soak
from tests.support.ledger import Ledger
from tests.support.s3_server import S3Server

SEED = 20261126  # draws S3 AccessDenied and a failover among its first faults
DURATION_S = 45.0
FIGURES = ("submitted", "completed", "failed_by_storage_fault", "lost", "lost_by_crash",
           "duplicated", "server_errors",
           "webhooks_due", "webhooks_delivered", "webhooks_duplicated",
           "webhooks_lost")  # fmt: skip


def test_a_randomized_soak_loses_and_duplicates_nothing(
    models_file: Path, s3_server: S3Server, tmp_path: Path, ledger: Ledger
) -> None:
    result = soak(tmp_path, models_file, s3_server, duration_s=DURATION_S, seed=SEED)
    ledger.faults.update(result.faults)
    for name in FIGURES:
        setattr(ledger, name, getattr(ledger, name) + getattr(result, name))
    assert result.submitted > 20 and len(result.faults) >= 3
    assert (result.lost, result.duplicated, result.server_errors) == (0, 0, 0)
    # Every ended job that asked for a webhook had its terminal event delivered, signed.
    assert result.webhooks_due > 5 and result.webhooks_lost == 0
    assert result.webhooks_delivered == result.webhooks_due
    # A Redis crash may take back what was acknowledged in its last second, and no more; S3
    # AccessDenied fails the jobs whose upload meets it, at once.
    fates = result.completed + result.failed_by_storage_fault + result.lost_by_crash
    assert fates == result.submitted

"""Run the fault-injection and bad-input tests and print what they did and saw.

    uv run python -m tests.faults.report
    uv run python -m tests.faults.report --ledger FILE   # a ledger a test run already wrote

Any test run writes the ledger when ``FAULT_LEDGER`` names a file. Jobs submitted over HTTP and
jobs the component tests wrote straight to Redis are counted apart; in each, completed + failed as
intended + failed by a storage fault (the soak's S3 AccessDenied) + lost by crash add up to at most
submitted. Webhooks count the terminal events of jobs
that asked for one: due, delivered, deliveries beyond the first, lost. Exits non-zero if a test
failed, or if any job or terminal webhook event was lost, any job duplicated, or any 5xx was
seen; jobs a Redis crash took back within its promise (the last second, AOF everysec) are
reported, not failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.ledger import LEDGER_ENV

TESTS = [
    "tests/faults",
    "tests/scale",
    "tests/gpu_worker/test_worker.py",
    "tests/e2e/test_cancel.py",
    "tests/e2e/test_deadlines.py",
    "tests/common/test_consumer.py",
    "tests/gateway/test_bad_input.py",
    "tests/gateway/test_schema_fuzz.py",
]
JOB_FIGURES = ("submitted", "completed", "failed_as_intended", "failed_by_storage_fault",
               "lost_by_crash", "lost", "duplicated")  # fmt: skip
WEBHOOK_FIGURES = {
    "webhooks_due": "events due",
    "webhooks_delivered": "delivered",
    "webhooks_duplicated": "duplicated deliveries",
    "webhooks_lost": "lost",
}
GROUPS = {True: "Jobs submitted over HTTP", False: "Jobs written straight to Redis (no gateway)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ledger", type=Path, help="summarize this ledger; run no tests")
    args = parser.parse_args()
    if args.ledger is not None:
        return 0 if summarize(_rows(args.ledger)) else 1
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.jsonl"
        env = {**os.environ, LEDGER_ENV: str(ledger)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              *TESTS], env=env, check=False)  # fmt: skip
        clean = summarize(_rows(ledger))
    return 0 if run.returncode == 0 and clean else 1


def _rows(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines()]


def summarize(rows: list[dict[str, Any]]) -> bool:
    """Print the figures; ``True`` when no job or terminal webhook event was lost, no job
    duplicated and no 5xx seen."""
    faults: Counter[str] = Counter()
    jobs: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    bad: Counter[str] = Counter()
    webhooks: Counter[str] = Counter()
    for row in rows:
        faults.update(row["faults"])
        # Ledgers written before these figures existed: a missing figure is a zero.
        jobs[row.get("over_http", True)].update({n: row.get(n, 0) for n in JOB_FIGURES})
        bad.update({n: row[n] for n in ("bad_inputs", "server_errors")})
        webhooks.update({n: row.get(n, 0) for n in WEBHOOK_FIGURES})
    print("\nFaults injected")
    for kind, count in sorted(faults.items()):
        print(f"  {kind:<44} {count:>6}")
    for over_http, title in GROUPS.items():
        print(title)
        for name in JOB_FIGURES:
            print(f"  {name.replace('_', ' '):<44} {jobs[over_http][name]:>6}")
    print("Bad input")
    print(f"  {'requests tried':<44} {bad['bad_inputs']:>6}")
    print(f"  {'5xx seen':<44} {bad['server_errors']:>6}")
    print("Webhooks (terminal events of jobs that asked for one)")
    for name, label in WEBHOOK_FIGURES.items():
        print(f"  {label:<44} {webhooks[name]:>6}")
    broken = sum(group[n] for group in jobs.values() for n in ("lost", "duplicated"))
    return not (broken or bad["server_errors"] or webhooks["webhooks_lost"])


if __name__ == "__main__":
    sys.exit(main())

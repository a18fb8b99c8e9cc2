"""Run the fault-injection and bad-input tests and print what they did and saw.

    uv run python -m tests.faults.report
    uv run python -m tests.faults.report --ledger FILE   # a ledger a test run already wrote

Any test run writes the ledger when ``FAULT_LEDGER`` names a file.
Exits non-zero if a test failed, or if any job was lost or duplicated, or any 5xx was seen.
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
TOTALS = ("submitted", "completed", "failed_as_intended", "lost", "duplicated", "bad_inputs",
          "server_errors")  # fmt: skip


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
    """Print the figures; ``True`` when nothing was lost or duplicated and no 5xx was seen."""
    faults: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for row in rows:
        faults.update(row["faults"])
        totals.update({name: row[name] for name in TOTALS})
    print("\nFaults injected")
    for kind, count in sorted(faults.items()):
        print(f"  {kind:<36} {count:>6}")
    print("Jobs")
    for name in TOTALS[:5]:
        print(f"  {name.replace('_', ' '):<36} {totals[name]:>6}")
    print("Bad input")
    print(f"  {'requests tried':<36} {totals['bad_inputs']:>6}")
    print(f"  {'5xx seen':<36} {totals['server_errors']:>6}")
    return not (totals["lost"] or totals["duplicated"] or totals["server_errors"])


if __name__ == "__main__":
    sys.exit(main())

"""The fault report's figures add up: in each group, completed + failed as intended + lost by crash
never exceed submitted, and jobs written straight to Redis are counted apart from those submitted
over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.report import GROUPS, JOB_FIGURES, summarize
from tests.support.ledger import LEDGER_ENV, Ledger


def figures(printed: str) -> dict[str, dict[str, int]]:
    """Each job group's figures, as the report prints them."""
    groups: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in printed.splitlines():
        if line in GROUPS.values():
            current = groups.setdefault(line, {})
        elif current is not None and line.startswith("  "):
            name, _, value = line.strip().rpartition(" ")
            current[name.strip().replace(" ", "_")] = int(value)
        else:
            current = None
    return groups


def test_every_job_with_a_fate_counts_as_submitted_and_no_http_jobs_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_file = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(LEDGER_ENV, str(ledger_file))
    # A test that records fates without counting its submits (the report used to print more
    # failed than submitted)...
    over_http = Ledger(test="tests/e2e/test_deadlines.py::test_x")
    over_http.failed_as_intended += 2
    over_http.outcome(["completed"], [1])
    over_http.write()
    # ...and a component test that submits nothing through HTTP.
    in_redis = Ledger(test="tests/common/test_consumer.py::test_poison")
    in_redis.fault("poison entry")
    in_redis.failed_as_intended += 1
    in_redis.write()

    rows = [json.loads(line) for line in ledger_file.read_text().splitlines()]
    assert summarize(rows)
    groups = figures(capsys.readouterr().out)

    http = groups[GROUPS[True]]
    direct = groups[GROUPS[False]]
    assert set(http) == set(direct) == set(JOB_FIGURES)
    assert (http["submitted"], http["completed"], http["failed_as_intended"]) == (3, 1, 2)
    assert (direct["submitted"], direct["failed_as_intended"]) == (1, 1)
    for group in (http, direct):
        fates = group["completed"] + group["failed_as_intended"] + group["lost_by_crash"]
        assert fates <= group["submitted"]

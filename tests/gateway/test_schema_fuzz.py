"""Generated requests from /openapi.json against a live gateway: never a 5xx, and every response
(status, content type, headers, body) matches the documented schema. No worker runs, so valid
jobs just wait in their queues; the OpenAI Images API's answers wait for their jobs, so those
requests carry a short Cancel-After and end in its documented 408."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.keys import create_key
from tests.support.ledger import Ledger
from tests.support.stack import Stack

EXAMPLES_PER_OPERATION = 150
MIN_CASES = 1000
# With keys the same routes again, fewer cases each: what is new is the key routes and the 401s.
KEYS_EXAMPLES = 40
# Without a key every protected route answers before it looks at the request: a few cases each.
NO_KEY_EXAMPLES = 10
# The OpenAI routes answer once their jobs end; without a worker, a deadline ends them.
WAITING_PREFIX = "/v1/images/"
WAITING_DEADLINE = {"Cancel-After": "0.2"}


@pytest.fixture(scope="module")
def fuzz_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack("fuzz", ("gateway",), redis_server, models_file, tmp_path_factory)
    yield stack
    stack.stop_all()


def fuzz(
    operation: Any,
    cases: Counter[str],
    statuses: Counter[int],
    headers: dict[str, str] | None = None,
    examples: int = EXAMPLES_PER_OPERATION,
) -> None:
    if operation.path.startswith(WAITING_PREFIX):
        headers = {**(headers or {}), **WAITING_DEADLINE}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        # Every check but one: a model's own limits (say, its steps cap) are tighter than the
        # shared schema can state, so a schema-valid request may rightly get a 422.
        response = case.call_and_validate(
            timeout=10, headers=headers, excluded_checks=[positive_data_acceptance]
        )
        cases[operation.label] += 1
        statuses[response.status_code] += 1

    check()


def test_no_server_error_and_responses_match_the_schema(fuzz_stack: Stack, ledger: Ledger) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.base_url}/openapi.json")
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        fuzz(result.ok(), cases, statuses)
    ledger.bad_inputs += sum(cases.values())
    ledger.server_errors += sum(n for status, n in statuses.items() if status >= 500)
    print(f"\nschema fuzz: {sum(cases.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert not any(status >= 500 for status in statuses)
    assert sum(cases.values()) >= MIN_CASES, cases


@pytest.fixture(scope="module")
def keys_fuzz_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {"DARKROOM_AUTH": "keys"}
    stack = _stack("fuzzkeys", ("gateway",), redis_server, models_file, tmp_path_factory, extra)
    yield stack
    stack.stop_all()


def test_with_keys_no_server_error_and_responses_match_the_schema(
    keys_fuzz_stack: Stack, ledger: Ledger
) -> None:
    """The same with DARKROOM_AUTH=keys and an admin key: the key routes too, and the 401/403
    answers the document declares."""
    key = create_key(keys_fuzz_stack, "fuzz-admin", admin=True)
    schema = schemathesis.openapi.from_url(f"{keys_fuzz_stack.base_url}/openapi.json")
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        fuzz(result.ok(), cases, statuses, {"Authorization": f"Bearer {key}"}, KEYS_EXAMPLES)
    ledger.bad_inputs += sum(cases.values())
    ledger.server_errors += sum(n for status, n in statuses.items() if status >= 500)
    print(f"\nkeys fuzz: {sum(cases.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert not any(status >= 500 for status in statuses)
    assert any("/v1/keys" in label for label in cases), cases


def test_without_a_key_every_protected_route_is_401_and_nothing_fails(
    keys_fuzz_stack: Stack, ledger: Ledger
) -> None:
    """No key at all: every route the document protects answers 401 whatever the request (before
    its body is read), and the open ones never fail."""
    schema = schemathesis.openapi.from_url(f"{keys_fuzz_stack.base_url}/openapi.json")
    protected: Counter[int] = Counter()
    open_: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        statuses = open_ if operation.definition.raw.get("security") == [] else protected
        fuzz(operation, Counter(), statuses, examples=NO_KEY_EXAMPLES)
    ledger.bad_inputs += sum(protected.values()) + sum(open_.values())
    print(f"\nno-key fuzz: protected {dict(protected)}, open {dict(open_)}")
    assert set(protected) == {401}, protected
    assert sum(protected.values()) >= 100 and not any(status >= 500 for status in open_)

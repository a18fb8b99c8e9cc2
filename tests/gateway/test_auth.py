"""API keys on a live gateway (``DARKROOM_AUTH=keys``): 401 without a valid key, open routes
open, admin routes for admin keys, and each tenant sees only its own jobs. No worker runs, so
jobs wait in their queues."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from playwright.async_api import Route, async_playwright
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobStatus
from tests.conftest import _stack
from tests.support.client import read_feed
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

T2I = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}
GENERATE = {"prompt": "a harbour", "width": 128, "height": 128, "num_inference_steps": 2}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keys_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "auth", ("gateway",), redis_server, models_file, tmp_path_factory, {"DARKROOM_AUTH": "keys"}
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def admin_key(keys_stack: Stack) -> str:
    return create_key(keys_stack, f"root-{uuid.uuid4().hex[:8]}", admin=True)


@pytest.fixture(scope="module")
def http(keys_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keys_stack.base_url, timeout=30) as client:
        yield client


def new_key(
    http: httpx.Client, admin_key: str, *, admin: bool = False, name: str | None = None
) -> str:
    name = name or f"t-{uuid.uuid4().hex[:10]}"
    answer = http.post("/v1/keys", json={"name": name, "admin": admin}, headers=bearer(admin_key))
    assert answer.status_code == 201, answer.text
    assert answer.json()["name"] == name
    key: str = answer.json()["key"]
    return key


def assert_unauthorized(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.json()["error"] == "unauthorized"


def test_without_a_valid_key_every_api_route_is_401(http: httpx.Client) -> None:
    for method, path in [
        ("GET", "/api/models"),
        ("GET", "/v1/styles"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}"),
        ("GET", f"/api/{uuid.uuid4()}/status"),
        ("POST", "/v1/generate"),
        ("POST", "/api/sd/t2i"),
        ("GET", "/v1/keys"),
    ]:
        assert_unauthorized(http.request(method, path))
        unknown = http.request(method, path, headers=bearer("dk_not-a-key"))
        assert_unauthorized(unknown)
        assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
        assert_unauthorized(http.request(method, path, headers={"X-API-Key": "dk_not-a-key"}))
        assert_unauthorized(http.request(method, path, headers={"Authorization": "Basic eDp5"}))


def test_either_header_carries_a_key(http: httpx.Client, admin_key: str) -> None:
    key = new_key(http, admin_key)
    assert http.get("/api/models", headers=bearer(key)).status_code == 200
    assert http.get("/v1/styles", headers={"X-API-Key": key}).status_code == 200


def test_health_docs_and_local_output_are_open(http: httpx.Client) -> None:
    assert http.get("/").json()["status"] == "ok"
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-dist/swagger-ui.css"):
        assert http.get(path).status_code == 200, path
    # Local storage: /output serves files without a key (a missing one is a plain 404).
    assert http.get("/output/generations/missing.png").status_code == 404
    document = http.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey", "jobToken"}
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]
    # A job's status and events also take its read-only token; nothing else does.
    by_token = sorted(
        path
        for path, methods in document["paths"].items()
        for operation in methods.values()
        if {"jobToken": []} in operation.get("security", [])
    )
    assert by_token == [
        "/api/{session_id}/events",
        "/api/{session_id}/status",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
    ]
    assert document["paths"]["/"]["get"]["security"] == []
    assert "401" in document["paths"]["/v1/generate"]["post"]["responses"]
    assert "403" in document["paths"]["/v1/keys"]["post"]["responses"]


def test_only_admin_keys_manage_keys_and_revocation_is_immediate(
    http: httpx.Client, admin_key: str
) -> None:
    user = new_key(http, admin_key)
    for method, path in [("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/x")]:
        answer = http.request(method, path, headers=bearer(user), json={"name": "sneaky"})
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "forbidden"

    name = f"t-{uuid.uuid4().hex[:10]}"
    created = http.post("/v1/keys", json={"name": name}, headers=bearer(admin_key))
    assert created.status_code == 201
    key = created.json()["key"]
    assert http.get("/v1/styles", headers=bearer(key)).status_code == 200
    again = http.post("/v1/keys", json={"name": name}, headers=bearer(admin_key))
    assert (again.status_code, again.json()["error"]) == (409, "key_exists")
    for bad in ({"name": "Has:Colon"}, {"name": "local"}, {"name": "ok", "admin": "maybe"}):
        assert http.post("/v1/keys", json=bad, headers=bearer(admin_key)).status_code == 422

    listed = http.get("/v1/keys", headers=bearer(admin_key)).json()
    entry = next(item for item in listed if item["name"] == name)
    assert entry["admin"] is False and entry["last_used_at"] is not None
    assert key not in str(listed) and admin_key not in str(listed)

    revoked = http.delete(f"/v1/keys/{name}", headers=bearer(admin_key))
    assert revoked.json() == {"name": name, "revoked": True}
    assert_unauthorized(http.get("/v1/styles", headers=bearer(key)))
    assert http.delete(f"/v1/keys/{name}", headers=bearer(admin_key)).status_code == 404


def _job_routes(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/api/{job_id}/status"),
        ("GET", f"/api/{job_id}/events"),
        ("DELETE", f"/api/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/token"),
    ]


def test_another_tenants_job_is_404_exactly_like_an_unknown_one(
    http: httpx.Client, admin_key: str
) -> None:
    alice, bob = new_key(http, admin_key), new_key(http, admin_key)
    carol_name = f"t-{uuid.uuid4().hex[:10]}"
    carol = new_key(http, admin_key, name=carol_name)
    assert http.delete(f"/v1/keys/{carol_name}", headers=bearer(admin_key)).status_code == 200
    jobs = [
        http.post("/api/sd/t2i", json=T2I, headers=bearer(alice)).json()["session_id"],
        http.post("/v1/generate", json=GENERATE, headers=bearer(alice)).json()["job_id"],
    ]
    unknown = str(uuid.uuid4())
    for job_id in jobs:
        for (method, path), (_, unknown_path) in zip(
            _job_routes(job_id), _job_routes(unknown), strict=True
        ):
            as_bob = http.request(method, path, headers=bearer(bob))
            as_nobody = http.request(method, unknown_path, headers=bearer(bob))
            assert as_bob.status_code == as_nobody.status_code == 404, (path, as_bob.text)
            assert as_bob.json() == {
                **as_nobody.json(),
                "message": as_nobody.json()["message"].replace(unknown, job_id),
            }
            assert_unauthorized(http.request(method, path))
            assert_unauthorized(http.request(method, path, headers=bearer(carol)))  # revoked
        # Bob's cancels changed nothing; Alice and an admin both see the job.
        mine = http.get(f"/v1/jobs/{job_id}", headers=bearer(alice))
        assert (mine.status_code, mine.json()["status"]) == (200, "PENDING")
        assert http.get(f"/api/{job_id}/status", headers=bearer(admin_key)).status_code == 200

    # An admin may cancel anyone's job and watch it to the end; the owner sees it canceled.
    first = jobs[0]
    assert http.delete(f"/api/{first}", headers=bearer(admin_key)).status_code == 200
    with httpx.Client(base_url=http.base_url, headers=bearer(admin_key), timeout=30) as admin:
        events = read_feed(admin, f"/v1/jobs/{first}/events")
    assert events[-1].data["status"] == "canceled"
    assert http.get(f"/v1/jobs/{first}", headers=bearer(alice)).json()["status"] == "REVOKED"
    # The owner cancels its own.
    assert http.post(f"/v1/jobs/{jobs[1]}/cancel", headers=bearer(alice)).status_code == 200


def test_idempotency_keys_are_per_tenant(
    keys_stack: Stack, http: httpx.Client, admin_key: str
) -> None:
    alice_name = f"t-{uuid.uuid4().hex[:10]}"
    alice, bob = new_key(http, admin_key, name=alice_name), new_key(http, admin_key)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = http.post("/v1/generate", json=GENERATE, headers=headers | bearer(alice)).json()
    retry = http.post("/v1/generate", json=GENERATE, headers=headers | bearer(alice))
    other = http.post("/v1/generate", json=GENERATE, headers=headers | bearer(bob))
    assert retry.json() == first and retry.headers.get("Idempotent-Replayed") == "true"
    assert other.status_code == 200 and "Idempotent-Replayed" not in other.headers
    assert other.json()["job_id"] != first["job_id"]
    assert http.get(f"/v1/jobs/{other.json()['job_id']}", headers=bearer(bob)).status_code == 200
    assert http.get(f"/v1/jobs/{first['job_id']}", headers=bearer(bob)).status_code == 404
    # The gateway's log names the tenant of each job it queued.
    wait_for(
        lambda: any(
            '"job.submitted"' in line and first["job_id"] in line and alice_name in line
            for line in keys_stack.log("gateway").splitlines()
        ),
        timeout_s=10,
        what="job.submitted with the tenant",
    )


def test_revocation_holds_on_every_replica_at_once(
    keys_stack: Stack, http: httpx.Client, admin_key: str
) -> None:
    port = free_port()
    replica = Stack(
        name="auth-replica",
        workdir=keys_stack.workdir,
        env=keys_stack.env
        | {"DARKROOM_PORT": str(port), "DARKROOM_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"},
        port=port,
    )
    replica.start("gateway:replica")
    try:
        name = f"t-{uuid.uuid4().hex[:10]}"
        key = new_key(http, admin_key, name=name)
        with httpx.Client(base_url=replica.base_url, timeout=30) as other:
            assert other.get("/v1/styles", headers=bearer(key)).status_code == 200
            assert http.delete(f"/v1/keys/{name}", headers=bearer(admin_key)).status_code == 200
            # No cache anywhere: the very next request to the other replica is refused.
            assert_unauthorized(other.get("/v1/styles", headers=bearer(key)))
    finally:
        replica.stop_all()


def test_revoking_a_key_ends_the_feeds_open_with_it(http: httpx.Client, admin_key: str) -> None:
    name = f"t-{uuid.uuid4().hex[:10]}"
    key = new_key(http, admin_key, name=name)
    job_id = http.post("/v1/generate", json=GENERATE, headers=bearer(key)).json()["job_id"]
    # No worker: without the revocation this feed would stay open (a read timeout here).
    with httpx.Client(base_url=http.base_url, headers=bearer(key), timeout=10) as watcher:
        with connect_sse(watcher, "GET", f"/v1/jobs/{job_id}/events") as source:
            frames = source.iter_sse()
            assert json.loads(next(frames).data)["status"] == "pending"
            assert http.delete(f"/v1/keys/{name}", headers=bearer(admin_key)).status_code == 200
            # The server ended the feed: no job event came after (queue frames may have).
            assert [sse for sse in frames if sse.event == "message" and sse.data] == []
        assert_unauthorized(watcher.get(f"/v1/jobs/{job_id}/events"))


def test_a_job_token_reads_that_job_and_nothing_else(http: httpx.Client, admin_key: str) -> None:
    alice, bob = new_key(http, admin_key), new_key(http, admin_key)
    submitted = http.post("/api/sd/t2i", json=T2I, headers=bearer(alice))
    other = http.post("/v1/generate", json=GENERATE, headers=bearer(alice))
    job_id, token = submitted.json()["session_id"], submitted.headers["Darkroom-Job-Token"]
    other_id, other_token = other.json()["job_id"], other.headers["Darkroom-Job-Token"]
    assert token.startswith("djt_") and token != other_token
    # The seed's body is exactly as before: the token travels in a header only.
    assert set(submitted.json()) == {"session_id", "status", "message"}

    with httpx.Client(base_url=http.base_url, timeout=10) as page:  # no key at all
        assert page.get(f"/api/{job_id}/status", params={"token": token}).json()["status"] == (
            "pending"
        )
        assert page.get(f"/v1/jobs/{job_id}", params={"token": token}).json()["status"] == (
            "PENDING"
        )
        with connect_sse(page, "GET", f"/v1/jobs/{job_id}/events?token={token}") as source:
            assert json.loads(next(source.iter_sse()).data)["status"] == "pending"
        # Read only, this job only: not another job, not a cancel, not a submit, not the keys.
        assert_unauthorized(page.get(f"/v1/jobs/{other_id}", params={"token": token}))
        assert_unauthorized(page.get(f"/api/{other_id}/events", params={"token": token}))
        assert_unauthorized(page.delete(f"/api/{job_id}", params={"token": token}))
        assert_unauthorized(page.post(f"/v1/jobs/{job_id}/cancel", params={"token": token}))
        assert_unauthorized(page.get(f"/v1/jobs/{job_id}/token", params={"token": token}))
        assert_unauthorized(page.post("/api/sd/t2i", json=T2I, params={"token": token}))
        assert_unauthorized(page.get(f"/v1/jobs/{job_id}", params={"token": token[:-2] + "xx"}))
    # The owner (and an admin) can ask for it again; another tenant cannot learn it exists.
    again = http.get(f"/v1/jobs/{job_id}/token", headers=bearer(alice))
    assert again.json() == {"job_id": job_id, "token": token}
    assert http.get(f"/v1/jobs/{job_id}/token", headers=bearer(admin_key)).json()["token"] == token
    assert http.get(f"/v1/jobs/{job_id}/token", headers=bearer(bob)).status_code == 404
    # An idempotent replay hands out the same token.
    headers = {"Idempotency-Key": str(uuid.uuid4())} | bearer(alice)
    first = http.post("/v1/generate", json=GENERATE, headers=headers)
    replay = http.post("/v1/generate", json=GENERATE, headers=headers)
    assert replay.headers["Darkroom-Job-Token"] == first.headers["Darkroom-Job-Token"]


CHROMIUM = shutil.which("chromium")
# A page that follows a job with its token: EventSource cannot send an API key.
TOKEN_PAGE = """<!doctype html>
<script>
  window.seen = [];
  window.source = new EventSource(%s);
  window.source.onmessage = (e) => window.seen.push(JSON.parse(e.data).status);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs it)")
async def test_a_page_follows_a_job_in_chromium_with_its_token_alone(
    keys_stack: Stack, http: httpx.Client, admin_key: str, redis: Redis
) -> None:
    alice = new_key(http, admin_key)
    async with httpx.AsyncClient(base_url=keys_stack.base_url, timeout=30) as client:
        submitted = await client.post("/v1/generate", json=GENERATE, headers=bearer(alice))
    job_id, token = submitted.json()["job_id"], submitted.headers["Darkroom-Job-Token"]
    feed = f"/v1/jobs/{job_id}/events?token={token}"
    page_url = f"{keys_stack.base_url}/follow.html"  # same origin as the feed
    jobs = JobStore(redis, Keys(keys_stack.prefix), task_ttl_s=60)

    async def serve_page(route: Route) -> None:
        await route.fulfill(body=TOKEN_PAGE % json.dumps(feed), content_type="text/html")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page()
            await page.route(page_url, serve_page)
            await page.goto(page_url)
            await page.wait_for_function("window.seen.length === 1", timeout=20_000)
            await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=50, message="step 1/2")
            await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)
            await page.wait_for_function(
                "window.source.readyState === EventSource.CLOSED", timeout=20_000
            )
            seen = await page.evaluate("window.seen")
        finally:
            await browser.close()
    assert seen == ["pending", "processing", "completed"]


@pytest.fixture(scope="module")
def open_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Auth off on every address: the gateway says so when it starts."""
    extra = {"DARKROOM_HOST": "0.0.0.0"}
    stack = _stack("noauth", ("gateway",), redis_server, models_file, tmp_path_factory, extra)
    yield stack
    stack.stop_all()


def test_with_auth_off_no_key_is_needed_and_key_routes_are_404(open_stack: Stack) -> None:
    wait_for(lambda: "auth.off_on_network" in open_stack.log("gateway"), timeout_s=10, what="warn")
    with httpx.Client(base_url=open_stack.base_url, timeout=30) as client:
        job_id = client.post("/v1/generate", json=GENERATE).json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "PENDING"
        assert client.get("/api/models").status_code == 200
        for method in ("GET", "POST"):
            assert client.request(method, "/v1/keys", json={"name": "x"}).status_code == 404
        assert client.delete("/v1/keys/x").status_code == 404
        assert "securitySchemes" not in client.get("/openapi.json").json()["components"]

"""``Client``: Darkroom over HTTP, blocking. ``AsyncClient`` (``darkroom_client.aio``) is the same
with ``await``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from darkroom_client import _core
from darkroom_client._core import Call, ImageInput
from darkroom_client.errors import (
    ConnectionFailed,
    Unavailable,
    error_from,
)
from darkroom_client.models import (
    Batch,
    BatchState,
    Event,
    Job,
    JobEvent,
    JobState,
    Task,
)

T = TypeVar("T")


class Client:
    """A Darkroom gateway. ``url`` defaults to ``$DARKROOM_URL`` (else http://localhost:8000),
    ``api_key`` to ``$DARKROOM_API_KEY`` (sent as ``Authorization: Bearer``)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = _core.REQUEST_TIMEOUT_S,
        max_retries: int = _core.MAX_RETRIES,
    ) -> None:
        self.url = _core.default_url(url)
        self.max_retries = max_retries
        headers = _core.auth_headers(_core.default_api_key(api_key))
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        # Results on other hosts (S3) are fetched without the API key.
        self._plain = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- submit ---------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        task: Task = "t2i",
        image: ImageInput | None = None,
        idempotency_key: str | None = None,
        cancel_after_s: float | None = None,
        **params: Any,
    ) -> Job:
        """Queue one job on a seed-1 route: ``params`` are the route's fields (``width``,
        ``num_inference_steps``, ``angles``, ``webhook``…). Retried after a connection error or
        a 503 with the same ``Idempotency-Key``, so it is queued once."""
        headers = {"Cancel-After": str(cancel_after_s)} if cancel_after_s else None
        call = _core.submit_call(
            model,
            task,
            prompt,
            image=image,
            params=params,
            headers=headers,
            idempotency_key=idempotency_key,
        )
        return self._send(call, _core.job_from)

    def text_to_image(self, model: str, prompt: str, **params: Any) -> Job:
        return self.submit(model, prompt, task="t2i", **params)

    def image_to_image(self, model: str, image: ImageInput, prompt: str = "", **params: Any) -> Job:
        return self.submit(model, prompt, task="i2i", image=image, **params)

    def text_to_video(self, model: str, prompt: str, **params: Any) -> Job:
        return self.submit(model, prompt, task="t2v", **params)

    def image_to_video(self, model: str, image: ImageInput, prompt: str = "", **params: Any) -> Job:
        return self.submit(model, prompt, task="i2v", image=image, **params)

    def multi_angle(
        self,
        model: str,
        prompt: str,
        angles: Sequence[str] | None = None,
        *,
        image: ImageInput | None = None,
        **params: Any,
    ) -> Job:
        """One image per camera angle (the route's default set when ``angles`` is None)."""
        angles_list = list(angles) if angles is not None else None
        return self.submit(
            model, prompt, task="multi-angle", image=image, angles=angles_list, **params
        )

    def generate(self, prompt: str, *, idempotency_key: str | None = None, **params: Any) -> Job:
        """Seed 2's ``POST /v1/generate`` (``style_id``, ``seed=-1`` for a random one…)."""
        return self._send(_core.generate_call(prompt, params, idempotency_key), _core.job_from)

    def submit_batch(
        self,
        model: str | None,
        requests: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Up to 100 t2i requests on ``model`` at once; ``model=None``: seed 2's ``/v1/batches``
        of ``/v1/generate`` bodies. All are queued, or none."""
        return self._send(_core.batch_call(model, requests, idempotency_key), _core.batch_from)

    def _send(self, call: Call, parse: Callable[[Call, httpx.Response], T]) -> T:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(call.method, call.path, **call.kwargs())
            except httpx.TransportError as exc:
                if last:
                    raise ConnectionFailed(f"{call.method} {call.path}: {exc!r}") from exc
                time.sleep(_core.backoff_s(attempt))
                continue
            wait_s = _core.should_retry_submit(response)
            if wait_s is None or last:
                return parse(call, response)
            time.sleep(min(wait_s, _core.BACKOFF_MAX_S))
        raise AssertionError("unreachable")

    # --- jobs -----------------------------------------------------------------------------

    def status(self, job_id: str) -> JobState:
        response = self._get(f"/api/{job_id}/status")
        return JobState.model_validate(response.json())

    def cancel(self, job_id: str) -> JobState:
        """Cancel a queued or running job; :class:`Conflict` if it had already ended."""
        response = _core.checked(self._http.delete(f"/api/{job_id}"))
        return JobState.model_validate(response.json())

    def watch(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's feed: :class:`JobEvent` (ending with the terminal one), :class:`QueueEvent`
        while it waits and :class:`PreviewEvent` while it renders. A dropped connection is
        reopened with ``Last-Event-ID``: no job event is lost or repeated."""
        cursor = _core.Cursor(last_event_id)
        for sse in self._frames(f"/api/{job_id}/events", cursor):
            event = _core.parse_frame(sse)
            if event is None:
                continue
            if isinstance(event, JobEvent):
                cursor.last_event_id = event.seq
            yield event
            if isinstance(event, JobEvent) and event.terminal:
                return

    def wait(self, job_id: str) -> JobState:
        """Follow the job to its end; its final state, or :class:`JobFailed` /
        :class:`JobCanceled`."""
        for _ in self.watch(job_id):
            pass
        return _core.finished(self.status(job_id))

    def download(self, job: JobState | str, out_dir: str | Path = ".") -> list[Path]:
        """Save every result of a finished job into ``out_dir``; the paths, in result order."""
        state = job if isinstance(job, JobState) else self.status(job)
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        saved = []
        for url in state.result_urls:
            http = self._http if _core.same_origin(self._http.base_url, url) else self._plain
            path = directory / _core.result_name(url)
            with http.stream("GET", url) as response:
                if response.is_error:
                    response.read()
                    raise error_from(response)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            saved.append(path)
        return saved

    def models(self) -> list[dict[str, Any]]:
        """``GET /api/models``: every route with its tasks, defaults and limits."""
        body: list[dict[str, Any]] = self._get("/api/models").json()
        return body

    # --- batches --------------------------------------------------------------------------

    def batch(self, batch_id: str) -> BatchState:
        return BatchState.model_validate(self._get(f"/api/batches/{batch_id}").json())

    def cancel_batch(self, batch_id: str) -> BatchState:
        response = _core.checked(self._http.delete(f"/api/batches/{batch_id}"))
        return BatchState.model_validate(response.json())

    def watch_batch(self, batch_id: str) -> Iterator[BatchState]:
        """The batch's state each time one of its jobs changes, ending when all have ended."""
        cursor = _core.Cursor()
        for sse in self._frames(f"/api/batches/{batch_id}/events", cursor):
            if not sse.data or sse.event != "message":
                continue
            state = BatchState.model_validate_json(sse.data)
            cursor.last_event_id = int(sse.id) if sse.id else cursor.last_event_id
            yield state
            if state.terminal:
                return

    # --- plumbing -------------------------------------------------------------------------

    def _get(self, path: str) -> httpx.Response:
        return _core.checked(self._http.get(path))

    def _frames(self, path: str, cursor: _core.Cursor) -> Iterator[ServerSentEvent]:
        """The feed's frames, across reconnects, until the caller stops or the server says
        there is nothing more (204)."""
        failures = 0
        while True:
            headers = cursor.headers()
            try:
                with connect_sse(
                    self._http, "GET", path, headers=headers, timeout=_core.feed_timeout()
                ) as source:
                    response = source.response
                    if response.status_code == 204:
                        return  # resumed at or past the end: nothing follows
                    if response.is_error:
                        response.read()
                        raise error_from(response)
                    for sse in source.iter_sse():
                        failures = 0
                        yield sse
            except (httpx.TransportError, Unavailable) as exc:
                failures += 1
                if failures > _core.MAX_RECONNECTS:
                    raise ConnectionFailed(f"feed {path}: {exc!r}") from exc
                wait_s = exc.retry_after_s if isinstance(exc, Unavailable) else None
                time.sleep(wait_s or _core.backoff_s(failures - 1))
                continue
            # The server closed the feed before the end (a restart, Redis trouble): resume.
            failures += 1
            if failures > _core.MAX_RECONNECTS:
                raise ConnectionFailed(f"feed {path} keeps closing early")
            time.sleep(_core.backoff_s(failures - 1))

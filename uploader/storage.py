"""Where finished outputs are stored, and the URL a client gets back for each.

Two backends share the ``Storage`` protocol: ``LocalStorage`` writes under a directory the
gateway serves at ``/output`` (the embedded default), and ``S3Storage`` writes to an S3 or
S3-compatible bucket. Every failure surfaces as ``StorageError`` so the uploader loop has one
thing to catch; its ``retryable`` says whether to retry or fail the job at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

# aiobotocore builds client classes at run time and no stubs are installed.
S3Client = Any

# Error codes that will not go away by retrying the same request with the same settings.
_PERMANENT_S3_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
    }
)
# What a person should do about the common permanent errors.
_S3_HINTS = {
    "NoSuchBucket": "create it (`darkroom up` does) or fix S3_BUCKET_NAME",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY and the region",
    "AccessDenied": "the credentials lack s3:PutObject / s3:CreateBucket on this bucket",
}


class StorageError(Exception):
    """Storing an output failed. ``retryable`` is False when retrying unchanged cannot help.

    The message is for operators (endpoint, key, HTTP status); ``summary`` is the short line a
    job's client reads (the error code, the bucket and what to do), without the endpoint.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        summary: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.summary = summary or message
        # The backend's error code (S3's ``AccessDenied``…), where it gave one.
        self.code = code


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key`` (overwriting) and return the URL to hand to the client."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that is not there is not an error."""
        ...

    async def url(self, key: str) -> str:
        """A fresh URL of the stored ``key`` to hand to a client (presigned ones re-signed)."""
        ...

    async def aclose(self) -> None: ...


def result_key(job_id: str, created_at: datetime, index: int, extension: str) -> str:
    """Key of a job's ``index``-th output, e.g. ``generations/20250102_030405_<job_id>.png``.

    Derived only from the job id and its creation time, so a retried upload overwrites the
    same object instead of leaving a duplicate. Aware times are taken in UTC so the key does
    not depend on the uploader host's time zone.
    """
    if index < 0:
        raise ValueError(f"output index must be >= 0, got {index}")
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(UTC)
    suffix = f"_{index}" if index > 0 else ""
    return f"generations/{created_at:%Y%m%d_%H%M%S}_{job_id}{suffix}.{extension.lstrip('.')}"


class LocalStorage:
    """Files under ``root``; the gateway serves them at ``<public_base_url>/output/<key>``.

    Writes go to one writer thread in batches: those that arrive while it is busy go together
    on its next hop, so a busy uploader pays one thread hand-off per batch, not per file.
    """

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = root
        self.public_base_url = public_base_url.rstrip("/")
        # Resolved once: checking a key is then lexical, with no file system call on the loop.
        self._real_root = os.path.realpath(root)
        self._pending: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def path_for(self, key: str) -> Path:
        return Path(self._real_path(key))

    def _real_path(self, key: str) -> str:
        path = os.path.normpath(os.path.join(self._real_root, key))
        # Keys come from result_key, but never let one escape the served directory.
        if not path.startswith(self._real_root + os.sep):
            raise ValueError(f"storage key {key!r} escapes {self.root}")
        return path

    def url_for(self, key: str) -> str:
        return f"{self.public_base_url}/output/{quote(key, safe='/~')}"

    async def url(self, key: str) -> str:
        return self.url_for(key)

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._real_path(key)
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((path, data, written))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending(), name="local-storage")
        try:
            await written
        except OSError as exc:
            raise StorageError(f"writing {len(data)} bytes to {path} failed: {exc}") from exc
        return self.url_for(key)

    async def _write_pending(self) -> None:
        """Hand the waiting writes to the writer thread, batch after batch, until none wait."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-storage")
        batch: list[tuple[str, bytes, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                files = [(path, data) for path, data, _ in batch]
                errors = await loop.run_in_executor(self._executor, _write_files, files)
                for (_, _, written), error in zip(batch, errors, strict=True):
                    if written.done():  # its put was cancelled; the file is written anyway
                        continue
                    if error is None:
                        written.set_result(None)
                    else:
                        written.set_exception(error)
                batch = []
        except BaseException as exc:
            # A bug, or the loop shutting down: no put may wait for ever.
            for _, _, written in [*batch, *self._pending]:
                if not written.done():
                    written.set_exception(exc if isinstance(exc, Exception) else OSError(exc))
            self._pending = []
            raise
        finally:
            self._writer = None

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise StorageError(f"deleting {path} failed: {exc}") from exc

    async def aclose(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _write_files(files: list[tuple[str, bytes]]) -> list[OSError | None]:
    """Write each file atomically and durably; the error of each, ``None`` if it was written.

    Each goes to a temp file in its directory, is flushed to disk (``fdatasync``) and renamed over
    the final name, so a reader (the gateway serving /output) sees the old file or the whole new
    one, never a half-written one, and a retry simply replaces the file. Then each directory is
    synced once for the whole batch, so the renames are on disk too: only after that does the
    uploader write the completed record, so a machine crash cannot leave a completed job whose
    file is empty or missing.
    """
    errors: list[OSError | None] = []
    written: dict[str, list[int]] = {}  # directory → indexes of the files renamed into it
    for index, (path, data) in enumerate(files):
        try:
            _write_atomically(path, data)
        except OSError as exc:
            errors.append(exc)
        else:
            errors.append(None)
            written.setdefault(os.path.dirname(path), []).append(index)
    for directory, indexes in written.items():
        try:
            _sync_directory(directory)
        except OSError as exc:
            for index in indexes:
                errors[index] = exc
    return errors


def _write_atomically(path: str, data: bytes) -> None:
    # Unique per write: another uploader (in another container, perhaps with the same pid) may
    # be storing the same key after taking the job over.
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            # Whatever the umask: outputs are meant to be served, possibly by another user.
            os.fchmod(fd, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # So a crash right after the rename cannot leave an empty file under the final name.
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Storage:
    """One long-lived aioboto3 S3 client writing to ``bucket``; build it with ``open()``."""

    def __init__(
        self,
        *,
        client: S3Client,
        stack: AsyncExitStack,
        bucket: str,
        region: str,
        endpoint_url: str | None,
        public_base_url: str | None,
        presign: bool,
        presign_expires_s: int,
    ) -> None:
        self._client = client
        self._stack = stack
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign = presign
        self.presign_expires_s = presign_expires_s

    @classmethod
    async def open(
        cls,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        public_base_url: str | None = None,
        presign: bool = False,
        presign_expires_s: int = 3600,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
    ) -> S3Storage:
        """Open the client. ``max_attempts`` counts the first try; botocore backs off between.

        The uploader loop retries on its own, so botocore's retries only smooth over blips;
        keep them few so a dead endpoint is reported in seconds rather than minutes.
        """
        config = Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            # Custom endpoints (SeaweedFS, MinIO…) rarely have wildcard DNS for virtual hosts.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        session = aioboto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, config=config)
        )
        return cls(
            client=client,
            stack=stack,
            bucket=bucket,
            region=region,
            endpoint_url=endpoint_url,
            public_base_url=public_base_url,
            presign=presign,
            presign_expires_s=presign_expires_s,
        )

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            # aiobotocore wraps aiohttp's connection and timeout errors in BotoCoreError subclasses.
            raise self._error(f"putting s3://{self.bucket}/{key}", exc) from exc
        return await self.url(key)

    async def url(self, key: str) -> str:
        if not self.presign:
            return self.url_for(key)
        try:
            url: str = await self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_expires_s,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"signing a URL of s3://{self.bucket}/{key}", exc) from exc
        return url

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(f"deleting s3://{self.bucket}/{key}", exc) from exc

    def url_for(self, key: str) -> str:
        """Unsigned URL of ``key``: readable only if the bucket (or a CDN in front) is public."""
        quoted = quote(key, safe="/~")
        if self.public_base_url:
            return f"{self.public_base_url}/{quoted}"
        if self.endpoint_url is None:
            return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{quoted}"
        return f"{self.endpoint_url}/{self.bucket}/{quoted}"

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it already exists and is ours; safe to call every start."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        if self.endpoint_url is None and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await self._client.create_bucket(**kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                # Some S3-compatible servers answer this even to the owner; ours only if we can
                # reach it with these credentials.
                await self._check_bucket_reachable(exc)
                return
            raise self._error(f"creating bucket {self.bucket}", exc) from exc
        except BotoCoreError as exc:
            raise self._error(f"creating bucket {self.bucket}", exc) from exc

    async def _check_bucket_reachable(self, create_exc: ClientError) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise StorageError(
                f"bucket {self.bucket} already exists and belongs to someone else "
                f"({_error_code(exc)} on HEAD); choose another S3_BUCKET_NAME",
                retryable=False,
            ) from create_exc
        except BotoCoreError as exc:
            raise self._error(f"checking bucket {self.bucket}", exc) from exc

    def _error(self, action: str, exc: ClientError | BotoCoreError) -> StorageError:
        where = self.endpoint_url or f"AWS {self.region}"
        bucket = f"bucket '{self.bucket}'"
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            reason = f"{code} (HTTP {status}): {message}".rstrip(": ")
            hint = _S3_HINTS.get(code)
            if hint:
                reason = f"{reason}; {hint}"
            return StorageError(
                f"{action} at {where} failed: {reason}",
                retryable=code not in _PERMANENT_S3_CODES,
                summary=f"{code} on {bucket}: {hint or message or f'HTTP {status}'}",
                code=code,
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            fix = (
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or an AWS profile / instance role)"
            )
            return StorageError(
                f"{action} at {where} failed: {exc}; {fix}",
                retryable=False,
                summary=f"no credentials for {bucket}: {fix}",
                code="NoCredentials",
            )
        return StorageError(
            f"{action} at {where} failed: {type(exc).__name__}: {exc}",
            summary=f"{bucket} unreachable ({type(exc).__name__})",
        )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))

"""``darkroom generate`` and ``darkroom jobs`` as a user runs them: in a real pseudo-terminal
(pexpect) with a progress bar, and piped, against a live stack (tiny worker, real S3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pexpect

from tests.support.client import png_size
from tests.support.stack import REPO_ROOT, Stack
from tests.support.waiting import wait_for

# Upper bounds for a loaded machine (a route loads on first use here), not timings.
TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "REDIS_"))}
    return env | {"PYTHONPATH": str(REPO_ROOT), "TERM": "xterm-256color", "COLUMNS": "120"}


def _spawn(cwd: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "common.cli", *args],
        cwd=cwd,
        env=_env(),
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(30, 120),
    )


def _job_id(text: str) -> str:
    found = re.search(r"job ([0-9a-f-]{36}) submitted", ANSI.sub("", text))
    assert found, text
    return found[1]


def test_generate_in_a_terminal_shows_a_bar_and_saves_the_files(
    s3_stack: Stack, tmp_path: Path
) -> None:
    child = _spawn(
        tmp_path,
        *("generate", "a red armchair", "--model", "qwen-multi-angle"),
        *("--task", "multi-angle", "--angles", "front,top-down"),
        *("--width", "64", "--height", "64", "--steps", "6", "--seed", "3"),
        *("--out", "renders", "--url", s3_stack.base_url),
    )
    child.expect(r"job [0-9a-f-]{36} submitted")
    submitted = child.before + child.after
    child.expect("━")  # rich's bar
    child.expect(r"\d+%")
    child.expect(pexpect.EOF)
    child.close()
    output = ANSI.sub("", submitted + child.before)

    assert child.exitstatus == 0, output
    job_id = _job_id(output)
    assert "completed" in output and "100%" in output
    saved = re.findall(r"^(renders/\S+\.png)\r?$", output, re.MULTILINE)
    assert len(saved) == 2 and all(job_id in name for name in saved), output
    assert [png_size((tmp_path / name).read_bytes()) for name in saved] == [(64, 64)] * 2


def test_ctrl_c_cancels_the_job_on_the_server(s3_stack: Stack, tmp_path: Path) -> None:
    child = _spawn(
        tmp_path,
        *("generate", "a very long render", "--model", "sd", "--url", s3_stack.base_url),
        *("--width", "2048", "--height", "2048", "--steps", "150"),
    )
    child.expect(r"job [0-9a-f-]{36} submitted")
    job_id = _job_id(child.after)
    child.expect(r"step \d+/150")  # rendering now
    child.send("\x03")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 130, child.before
    assert f"canceled job {job_id}" in child.before
    status = httpx.get(f"{s3_stack.base_url}/api/{job_id}/status").json()
    assert status["status"] == "canceled"
    # The worker drops the render at its next step and is free for the next test.
    wait_for(
        lambda: not any(m["queued"] for m in httpx.get(f"{s3_stack.base_url}/api/models").json()),
        timeout_s=60,
        what="the queues to empty",
    )


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_piped_output_is_plain_lines_and_paths_alone_on_stdout(
    s3_stack: Stack, tmp_path: Path
) -> None:
    url = ("--url", s3_stack.base_url)
    done = _run(
        tmp_path,
        *("generate", "a lighthouse", "--model", "sd", "--width", "64", "--height", "64"),
        *("--steps", "3", *url),
    )
    assert done.returncode == 0, done.stderr
    (path,) = done.stdout.splitlines()
    assert png_size((tmp_path / path).read_bytes()) == (64, 64)
    assert not ANSI.search(done.stderr) and "━" not in done.stderr
    lines = done.stderr.splitlines()
    assert (
        lines[0].startswith("job ")
        and lines[-1] == "completed 100% Generation completed successfully"
    )
    job_id = _job_id(lines[0])

    status = _run(tmp_path, "jobs", "status", job_id, *url)
    assert status.returncode == 0 and f'"id": "{job_id}"' in status.stdout
    assert '"status": "completed"' in status.stdout
    watched = _run(tmp_path, "jobs", "watch", job_id, *url)
    assert watched.returncode == 0 and job_id in watched.stdout  # its result URL
    again = _run(tmp_path, "jobs", "cancel", job_id, *url)
    assert again.returncode == 1 and "409 job_finished" in again.stderr


def test_a_failure_prints_the_servers_error_and_exits_non_zero(
    s3_stack: Stack, tmp_path: Path
) -> None:
    child = _spawn(tmp_path, "generate", "x", "--model", "nope", "--url", s3_stack.base_url)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "404 unknown_model: No model route 'nope'" in ANSI.sub("", child.before)

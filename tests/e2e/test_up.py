"""``darkroom up`` in a fresh directory: embedded Redis, demo models, a job, a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from common.cpus import available_cpus, can_pin, format_cpu_list
from common.redis_server import free_port
from tests.support.client import png_size, wait_terminal
from tests.support.receiver import Receiver
from tests.support.stack import REPO_ROOT
from tests.support.waiting import wait_for

START_TIMEOUT_S = 240


def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        pytest.fail(f"darkroom up exited with {process.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    port, probe_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "REDIS_"))}
    env.update({"DARKROOM_PORT": str(port), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)})
    # Each consumer's probes on a port of its own: the worker's, then the next two.
    env["DARKROOM_HEALTH_PORT"] = str(probe_port)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "up"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://localhost:{port}"
    receiver = Receiver().start()
    try:
        wait_for(
            lambda: _healthy(base + "/", process, log),
            timeout_s=START_TIMEOUT_S,
            what="darkroom up",
        )
        with httpx.Client(base_url=base, timeout=30) as client:
            job_id = (
                client.post(
                    "/v1/generate",
                    json={
                        "prompt": "a castle",
                        "width": 128,
                        "height": 128,
                        "num_inference_steps": 2,
                        # Its notifier signs with the secret it made, and lets loopback in.
                        "webhook": receiver.url,
                    },
                )
                .raise_for_status()
                .json()["job_id"]
            )
            job = wait_terminal(client, f"/v1/jobs/{job_id}")
            assert job["status"] == "SUCCESS", job
            (url,) = job["result_urls"]
            assert url.startswith(f"{base}/output/generations/")
            assert png_size(client.get(url).content) == (128, 128)
        secret = (tmp_path / ".darkroom" / "webhook-secret").read_text().strip()
        wait_for(lambda: receiver.of_job(job_id), timeout_s=30, what="the webhook")
        payload = receiver.of_job(job_id)[0].verified(secret)
        assert payload["type"] == "job.completed" and payload["data"]["result_urls"] == [url]
        assert (
            tmp_path / ".darkroom" / "models" / "stable-diffusion" / "model_index.json"
        ).exists()
        redis_port = int(
            next(line for line in log.read_text().splitlines() if "redis.embedded" in line)
            .split("127.0.0.1:")[1]
            .split("/")[0]
        )
        # Auth off, this machine only, and it says so; `darkroom keys` finds its Redis.
        up_line = next(line for line in log.read_text().splitlines() if '"darkroom.up"' in line)
        assert '"auth": "off"' in up_line and '"host": "127.0.0.1"' in up_line, up_line
        for offset, service in enumerate(("worker", "uploader", "notifier")):
            assert f'"{service}": {probe_port + offset}' in up_line, up_line
            ready = httpx.get(f"http://127.0.0.1:{probe_port + offset}/readyz", timeout=5)
            assert ready.status_code == 200, (service, ready.text)
        worker_metrics = httpx.get(f"http://127.0.0.1:{probe_port}/metrics", timeout=5).text
        assert 'darkroom_batch_size_count{model="sd"} 1.0' in worker_metrics
        # The worker shares the machine with every other service: half the cores at most.
        torch_line = next(line for line in log.read_text().splitlines() if "worker.torch" in line)
        threads = max(1, len(available_cpus()) // 2)
        assert f'"threads": {threads}' in torch_line, torch_line
        if can_pin() and len(available_cpus()) > threads:
            # The worker has cores of its own; Redis and every other service share the rest.
            render = set(sorted(available_cpus())[:threads])
            services = available_cpus() - render
            assert f'"render_cpus": "{format_cpu_list(frozenset(render))}"' in torch_line
            children = psutil.Process(process.pid).children()
            assert {" ".join(child.cmdline()).split()[-1] for child in children} >= {
                "gateway",
                "worker",
                "uploader",
                "notifier",
            }
            for child in children:
                # Every thread: the worker's render and the loop that feeds it alike.
                pinned = [os.sched_getaffinity(thread.id) for thread in child.threads()]
                expected = render if child.cmdline()[-1] == "worker" else services
                assert pinned == [expected] * len(pinned), (child.cmdline(), pinned)
        keys = subprocess.run(
            [sys.executable, "-m", "common.cli", "keys", "create", "--name", "laptop"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert keys.returncode == 0, keys.stderr
        stored = redis.Redis(port=redis_port, decode_responses=True).hgetall("darkroom:apikeys")
        assert list(stored.values()) == ["laptop"]
    finally:
        receiver.stop()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    assert not (tmp_path / ".darkroom" / "redis.url").exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()

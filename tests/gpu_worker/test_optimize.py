"""A route's GPU settings: compilation happens in the warm-up render, never on a job's clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from common.catalog import demo_catalog
from common.schemas import JobSpec, RenderParams, Task
from gpu_worker.families import family
from gpu_worker.registry import ModelRegistry


def test_regional_compile_happens_in_the_warm_up_not_on_a_job(tiny_models: Path) -> None:
    catalog = demo_catalog(tiny_models)
    sd = catalog.routes["sd"]
    gpu = sd.gpu.model_copy(update={"compile": "regional", "attention_backend": "native"})
    route = sd.model_copy(update={"gpu": gpu})
    catalog = catalog.model_copy(update={"routes": {"sd": route}})
    registry = ModelRegistry(catalog, ["sd"], torch.device("cpu"))
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]

    registry.load_all()  # loads, applies the settings, renders the warm-up
    graphs_after_warm_up = counters["stats"]["unique_graphs"]
    assert graphs_after_warm_up > graphs_before  # the repeated blocks were compiled

    spec = JobSpec(
        job_id="after-warm-up",
        model="sd",
        task=Task.T2I,
        # The route's default size, as the warm-up used; more steps do not change the shapes.
        params=RenderParams(
            prompt="a job",
            width=route.defaults.width,
            height=route.defaults.height,
            num_inference_steps=4,
            guidance_scale=route.defaults.guidance_scale,
            seed=3,
        ),
        created_at=datetime.now(UTC),
    )
    (artifact,) = family("stable-diffusion").render(
        registry.pipelines("sd"), spec, None, lambda done, total: None
    )
    assert artifact.image is not None and artifact.image.size == (512, 512)
    assert counters["stats"]["unique_graphs"] == graphs_after_warm_up  # nothing compiled now
    torch._dynamo.reset()

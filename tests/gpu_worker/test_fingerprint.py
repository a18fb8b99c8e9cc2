"""A route's render fingerprint changes with its weights on disk, LoRAs and settings, and with
nothing else; a hub id not in the local cache has none (its results are not cached)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from common.catalog import GpuSettings, Lora, ModelRoute, demo_catalog
from common.schemas import Task
from gpu_worker.fingerprint import UnknownWeights, route_fingerprint
from gpu_worker.registry import ModelRegistry

CPU = torch.device("cpu")


@pytest.fixture
def route(tiny_models: Path, tmp_path: Path) -> ModelRoute:
    """The demo SD route on a private copy of its checkpoint, free to change."""
    sd = demo_catalog(tiny_models).routes["sd"]
    copy = tmp_path / "sd"
    shutil.copytree(sd.weights, copy)
    return sd.model_copy(update={"weights": str(copy)})


def fingerprint(route: ModelRoute, dtype: torch.dtype = torch.float32) -> str:
    return route_fingerprint(route, dtype, CPU)


def test_the_same_route_has_the_same_fingerprint(route: ModelRoute) -> None:
    assert fingerprint(route) == fingerprint(route.model_copy())


def test_a_changed_checkpoint_changes_it(route: ModelRoute) -> None:
    before = fingerprint(route)
    weights = next(Path(route.weights).rglob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert fingerprint(route) != before

    touched = fingerprint(route)
    (Path(route.weights) / "unet" / "extra.json").write_text("{}")
    assert fingerprint(route) != touched


@pytest.mark.parametrize(
    "changes",
    [
        {"dtype": "bfloat16"},  # the route's setting alone is not what renders: see below
        {"max_steps": 10},
        {"gpu": GpuSettings(max_batch=2)},
    ],
)
def test_what_does_not_change_a_render_does_not_change_it(
    route: ModelRoute, changes: dict[str, object]
) -> None:
    assert fingerprint(route.model_copy(update=changes)) == fingerprint(route)


@pytest.mark.parametrize(
    "changes",
    [
        {"family": "stable-diffusion-xl"},
        {"gpu": GpuSettings(channels_last=True)},
        {"gpu": GpuSettings(attention_backend="native")},
        {"gpu": GpuSettings(compile="regional")},
    ],
)
def test_what_changes_a_render_changes_it(route: ModelRoute, changes: dict[str, object]) -> None:
    assert fingerprint(route.model_copy(update=changes)) != fingerprint(route)


def test_the_dtype_used_and_lora_scales_change_it(route: ModelRoute, tmp_path: Path) -> None:
    assert fingerprint(route, torch.float16) != fingerprint(route)
    lora_file = tmp_path / "style.safetensors"
    lora_file.write_bytes(b"lora")
    with_lora = route.model_copy(update={"loras": [Lora(weights=str(lora_file), scale=1.0)]})
    assert fingerprint(with_lora) != fingerprint(route)
    scaled = route.model_copy(update={"loras": [Lora(weights=str(lora_file), scale=0.5)]})
    assert fingerprint(scaled) != fingerprint(with_lora)


def test_a_hub_id_not_cached_locally_has_none(route: ModelRoute) -> None:
    with pytest.raises(UnknownWeights):
        fingerprint(route.model_copy(update={"weights": "nobody/not-downloaded-here"}))


def test_the_registry_takes_it_when_the_route_loads(route: ModelRoute, tiny_models: Path) -> None:
    catalog = demo_catalog(tiny_models)
    catalog = catalog.model_copy(update={"routes": {**catalog.routes, "sd": route}})
    registry = ModelRegistry(catalog, ["sd"], CPU)
    assert registry.fingerprints == {}
    registry.pipeline("sd", Task.T2I)
    assert registry.fingerprints == {"sd": fingerprint(route)}

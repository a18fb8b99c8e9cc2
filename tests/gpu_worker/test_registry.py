"""The registry loads each route once, from the catalogue's weights, via the production loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from common.catalog import demo_catalog, production_catalog
from common.schemas import Task
from gpu_worker.families import family
from gpu_worker.registry import ModelRegistry, RouteUnavailable, pipelines_bytes


def test_pipelines_are_resident_and_img2img_shares_the_weights(tiny_models: Path) -> None:
    registry = ModelRegistry(demo_catalog(tiny_models), [], torch.device("cpu"))
    t2i = registry.pipeline("sd", Task.T2I)
    i2i = registry.pipeline("sd", Task.I2I)
    assert type(t2i).__name__ == "StableDiffusionPipeline"
    assert type(i2i).__name__ == "StableDiffusionImg2ImgPipeline"
    assert i2i.unet is t2i.unet and i2i.vae is t2i.vae and i2i.text_encoder is t2i.text_encoder
    assert registry.pipeline("sd", Task.T2I) is t2i  # never a load per job


def test_every_demo_route_has_a_family_and_a_checkpoint(tiny_models: Path) -> None:
    catalog = demo_catalog(tiny_models)
    # The registry refuses a batching route whose family renders one job at a time.
    ModelRegistry(catalog, [], torch.device("cpu"))
    for route in catalog.routes.values():
        assert family(route.family) is not None, route.name
        assert (Path(route.weights) / "model_index.json").is_file(), route.name


def test_sdxl_loads_with_its_production_gpu_settings(tiny_models: Path) -> None:
    catalog = demo_catalog(tiny_models)
    # NHWC as on a GPU, and the warm-up render at the route's default size, 512².
    route = catalog.routes["sdxl"].model_copy(
        update={"gpu": production_catalog().routes["sdxl"].gpu}
    )
    catalog = catalog.model_copy(update={"routes": {"sdxl": route}, "v1_route": "sdxl"})
    registry = ModelRegistry(catalog, ["sdxl"], torch.device("cpu"))
    t2i, i2i = registry.pipeline("sdxl", Task.T2I), registry.pipeline("sdxl", Task.I2I)
    assert type(i2i).__name__ == "StableDiffusionXLImg2ImgPipeline" and i2i.unet is t2i.unet
    weight = t2i.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_a_worker_serves_only_its_routes(tiny_models: Path) -> None:
    catalog = demo_catalog(tiny_models)
    assert ModelRegistry(catalog, ["sd"], torch.device("cpu")).route_names == ["sd"]
    with pytest.raises(ValueError, match="unknown route"):
        ModelRegistry(catalog, ["flux-typo"], torch.device("cpu"))


def test_missing_weights_fail_loudly(tmp_path: Path) -> None:
    registry = ModelRegistry(demo_catalog(tmp_path / "nowhere"), [], torch.device("cpu"))
    with pytest.raises(RouteUnavailable, match="'sd' is unavailable") as raised:
        registry.pipeline("sd", Task.T2I)
    assert isinstance(raised.value.__cause__, (OSError, ValueError))


def test_a_route_whose_weights_fail_to_load_leaves_the_others_loaded(
    tiny_models: Path, tmp_path: Path
) -> None:
    catalog = demo_catalog(tiny_models)
    # An existing directory with nothing in it: weights never downloaded, a wrong mount.
    broken = catalog.routes["sd"].model_copy(update={"name": "broken", "weights": str(tmp_path)})
    catalog.routes["broken"] = broken
    registry = ModelRegistry(catalog, ["broken", "sd"], torch.device("cpu"))

    registry.load_all()

    assert registry.loaded_route_names == ["sd"]
    assert "model_index.json" in registry.load_errors["broken"]
    assert list(registry.load_errors) == ["broken"]
    unavailable = registry.unavailable("broken")
    assert unavailable is not None and "'broken' is unavailable" in str(unavailable)
    gauge = "darkroom_model_load_failed"
    assert REGISTRY.get_sample_value(gauge, {"model": "broken"}) == 1
    assert REGISTRY.get_sample_value(gauge, {"model": "sd"}) == 0


def test_past_the_memory_budget_the_least_recently_used_route_is_unloaded(
    tiny_models: Path,
) -> None:
    catalog = demo_catalog(tiny_models)
    sd = catalog.routes["sd"]
    # Two routes on the same weights, and room for one of them only.
    catalog.routes["sd-copy"] = sd.model_copy(update={"name": "sd-copy"})
    size = pipelines_bytes(ModelRegistry(catalog, ["sd"], torch.device("cpu")).pipelines("sd"))
    registry = ModelRegistry(catalog, [], torch.device("cpu"), memory_budget_bytes=size * 3 // 2)

    first = registry.pipelines("sd")
    assert registry.loaded_route_names == ["sd"]
    registry.pipelines("sd-copy")
    assert registry.loaded_route_names == ["sd-copy"]
    assert registry.pipelines("sd") is not first  # loaded again, evicting sd-copy
    assert registry.loaded_route_names == ["sd"]

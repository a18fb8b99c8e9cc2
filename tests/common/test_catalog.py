"""The model catalogue file: written and read back, and refused when it names nonsense."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.catalog import (
    Catalog,
    GpuSettings,
    RouteDefaults,
    demo_catalog,
    production_catalog,
    write_catalog,
)
from common.schemas import Task


def test_round_trip(tmp_path: Path) -> None:
    catalog = demo_catalog(tmp_path / "models")
    write_catalog(catalog, tmp_path / "models.toml")
    assert Catalog.load(tmp_path / "models.toml") == catalog
    assert catalog.routes["sd"].weights == str(tmp_path / "models" / "stable-diffusion")


def test_production_defaults_are_hub_ids() -> None:
    assert Catalog.load(None) == production_catalog()
    assert (
        production_catalog().routes["sd"].weights == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


def test_sdxl_is_served_on_its_hub_weights_and_batches(tmp_path: Path) -> None:
    sdxl = production_catalog().routes["sdxl"]
    assert (sdxl.family, sdxl.weights) == (
        "stable-diffusion-xl",
        "stabilityai/stable-diffusion-xl-base-1.0",
    )
    assert sdxl.tasks == [Task.T2I, Task.I2I] and sdxl.dtype == "float16"
    assert sdxl.max_width == sdxl.max_height == 1536 and sdxl.size_multiple == 8
    assert sdxl.gpu == GpuSettings(channels_last=True, max_batch=4, batch_window_ms=5)
    # The seeds' image defaults, whatever the model.
    assert sdxl.defaults == RouteDefaults()
    # The demo serves it from its tiny checkpoint, batching without waiting for a batch.
    demo = demo_catalog(tmp_path)
    assert demo.routes["sdxl"].weights == str(tmp_path / "stable-diffusion-xl")
    assert demo.routes["sdxl"].gpu.max_batch == 4 and demo.routes["sdxl"].gpu.batch_window_ms == 0


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [("gpu", production_catalog), ("dev", lambda: demo_catalog(Path("/models")))],
)
def test_the_deploy_catalogues_are_the_codes_own(
    overlay: str, expected: Callable[[], Catalog]
) -> None:
    # Written by write_catalog; a route added to the code and not to deploy/ fails here.
    path = Path(__file__).parents[2] / "deploy" / "k8s" / "overlays" / overlay / "models.toml"
    assert Catalog.load(path) == expected()


def test_style_templates() -> None:
    style = production_catalog().styles[1]
    prompt, negative = style.apply("a cat", "blurry")
    assert prompt.startswith("a cat, photograph") and negative == f"blurry, {style.negative_prompt}"


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[routes.sd]\nfamily = "stable-diffusion"\nweights = "w"\ntasks = ["t2i"]\n'
        'max_widht = 5\n[styles.0]\nname = "none"\n'
    )
    with pytest.raises(ValidationError, match="max_widht"):
        Catalog.load(path)


def test_the_readme_catalogue_example_is_valid() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = [block.split("```")[0] for block in readme.split("```toml")[1:]]
    example = next(block for block in blocks if "v1_route" in block)  # the whole-file example
    catalog = Catalog.model_validate(tomllib.loads(example))
    assert {"sd", "flux", "qwen-multi-angle", "ltx"} <= set(catalog.routes)
    assert set(catalog.routes) <= set(production_catalog().routes)
    assert catalog.routes["qwen-multi-angle"].loras[0].adapter_name == "multiple-angles"

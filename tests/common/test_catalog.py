"""The model catalogue file: written and read back, and refused when it names nonsense."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.catalog import Catalog, demo_catalog, production_catalog, write_catalog


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
    example = readme.split("```toml")[1].split("```")[0]
    catalog = Catalog.model_validate(tomllib.loads(example))
    assert set(catalog.routes) == {"sd", "flux", "qwen-multi-angle", "ltx"}
    assert catalog.routes["qwen-multi-angle"].loras[0].adapter_name == "multiple-angles"

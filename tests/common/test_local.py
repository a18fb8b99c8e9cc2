"""``darkroom up``'s demo models: a models folder is checked against every checkpoint the demo
catalogue names, so one written before a route was added gains that route's checkpoint."""

from __future__ import annotations

from pathlib import Path

from common.catalog import demo_catalog
from common.local import missing_checkpoints


def test_only_the_checkpoints_not_written_yet_are_missing(tmp_path: Path) -> None:
    catalog = demo_catalog(tmp_path)
    folders = {Path(r.weights) for r in catalog.routes.values()}
    folders |= {Path(r.edit_weights) for r in catalog.routes.values() if r.edit_weights}
    assert set(missing_checkpoints(catalog)) == folders  # a fresh directory: every one
    # A folder from before SDXL was added: every checkpoint but SDXL's is complete, and one was
    # interrupted while being written (save_pretrained writes model_index.json last).
    for folder in folders - {tmp_path / "stable-diffusion-xl"}:
        folder.mkdir()
        (folder / "model_index.json").write_text("{}")
    (tmp_path / "flux" / "model_index.json").unlink()
    assert set(missing_checkpoints(catalog)) == {
        tmp_path / "stable-diffusion-xl",
        tmp_path / "flux",
    }

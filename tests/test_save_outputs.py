"""ComfyUI 0.33's SaveImage and PreviewImage pass their images on (upstream commit b0f9e326).

``tests/data/comfy/v0.33/save_outputs/`` holds a turbo workflow whose SaveImage output feeds an
ImageScaleBy, whose result goes through a PreviewImage into a second SaveImage, and the two PNGs real
ComfyUI de6b062f wrote for it (v0.18.1 refuses the links from SaveImage: "tuple index out of range").
"""
from __future__ import annotations

from pathlib import Path

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import Runner

from test_comfy_pipeline import PIPELINE, pixel_agreement

DATA = Path(__file__).parent / "data" / "comfy" / "v0.33" / "save_outputs"


def test_saved_images_feed_later_nodes_like_comfyui(tmp_path: Path) -> None:
    options = RunOptions(output_dir=tmp_path, extra={"models_dirs": [str(PIPELINE / "models")]})
    result = graphrun.load(DATA / "workflow.api.json", runner=Runner(options)).run()
    saved = sorted(p for p in result.files if p.parent == tmp_path)
    assert [p.name for p in saved] == ["chain_full_00001_.png", "chain_half_00001_.png"]
    for png in saved:
        identical, worst = pixel_agreement(DATA / png.name, png)
        assert identical >= 0.999 and worst <= 2, f"{png.name}: {identical:.4%} identical, max diff {worst}"
    previews = [p for p in result.files if p.parent.name == ".preview"]
    assert len(previews) == 1


def test_save_nodes_declare_their_image_output() -> None:
    from graphrun.engine.node import builtin_registry

    registry = builtin_registry()
    for name in ("SaveImage", "PreviewImage"):
        assert [(o.name, o.type_name) for o in registry.get(name).outputs] == [("images", "IMAGE")]


def test_links_from_save_image_are_refused_under_the_0181_setting(tmp_path: Path) -> None:
    """ComfyUI v0.18.1's SaveImage has no output: it refuses the ImageScaleBy fed by one ("tuple index out of
    range"); graphrun refuses the link at validation under that setting, naming the node and the way out."""
    options = RunOptions(output_dir=tmp_path, comfy="0.18.1", extra={"models_dirs": [str(PIPELINE / "models")]})
    errors = [d for d in graphrun.load(DATA / "workflow.api.json", runner=Runner(options)).validate() if d.is_error]
    assert len(errors) == 2  # ImageScaleBy from SaveImage, SaveImage from PreviewImage
    assert all(d.code == "GR007" and "has no outputs in the ComfyUI version followed" in d.message
               and "ComfyUI 0.33" in d.message and "--comfy 0.33" in (d.hint or "") for d in errors)

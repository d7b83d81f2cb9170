"""`GET /object_info` as `graphrun serve` answers it: ComfyUI's node descriptions generated from the registry.

What the web editor needs from it: every class_type graphrun runs, ComfyUI's input names and types, widget options
(seed controls, combos listing graphrun's samplers and the server's files, prompt text boxes, upload buttons), and a
widget order that lets a workflow made in the editor convert back to the values the user set. Also the listing of
model folders behind `/models/{folder}` and the combos.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from graphrun.engine.comfy.specs import (
    ALIASES,
    DISPLAY_ONLY,
    FOLDED,
    comfy_node_spec,
    known_class_types,
    shim_spec,
    spec_lookup,
)
from graphrun.engine.comfy.api_to_ui import api_to_ui
from graphrun.engine.comfy.ui_to_api import ui_to_api
from graphrun.engine.node import Comfy, NodeDeclarationError, builtin_registry, make_registry, node
from graphrun.engine.serve.object_info import FRONTEND_ONLY, TITLES_033, node_info, object_info
from graphrun.nodes import model_files
from graphrun.nodes.model_files import list_model_files, model_folder_names
from graphrun.nodes.sampling.registry import sampler_names, scheduler_names
from graphrun.nodes.types import Image, Mask

#: The keys v0.18.1's node_info sends for every classic node.
NODE_INFO_KEYS = {
    "input", "input_order", "is_input_list", "output", "output_is_list", "output_name", "name", "display_name",
    "description", "python_module", "category", "output_node", "has_intermediate_output", "search_aliases",
}
#: ComfyUI's socket types (comfy/comfy_types IO) that graphrun's nodes use.
COMFY_SOCKET_TYPES = {
    "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "SIGMAS", "SAMPLER", "NOISE", "GUIDER",
    "UPSCALE_MODEL", "*",
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(autouse=True)
def _no_model_settings(monkeypatch):
    """Model folders come from each test only (never the tiny model, never the caller's environment)."""
    for name in (model_files.MODELS_ENV, model_files.EXTRA_PATHS_ENV):
        monkeypatch.delenv(name, raising=False)


def fake_files(folder: str) -> list[str]:
    return {
        "diffusion_models": ["z_image_turbo_bf16.safetensors", "sub/other.safetensors"],
        "input": ["cat.png", "pets/dog.webp"],
    }.get(folder, [])


@pytest.fixture(scope="module")
def info() -> dict[str, dict[str, Any]]:
    return object_info(builtin_registry(), fake_files)


def widget(entry: dict[str, Any], name: str) -> list[Any]:
    for section in ("required", "optional"):
        if name in entry["input"].get(section, {}):
            return entry["input"][section][name]
    raise KeyError(name)


def is_widget(spec: list[Any]) -> bool:
    """The editor's rule: a widget for INT/FLOAT/STRING/BOOLEAN/COMBO and value lists, unless forceInput."""
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def widget_order(entry: dict[str, Any]) -> list[str]:
    """Widget names in the order the editor creates them: input_order, required then optional."""
    order = []
    for section in ("required", "optional"):
        for name in entry["input_order"].get(section, []):
            if is_widget(entry["input"][section][name]):
                order.append(name)
    return order


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- shapes of real class_types ------------------------------------------------------------------------------------


def test_ksampler_has_comfyuis_widget_options_and_input_order(info):
    entry = info["KSampler"]
    assert set(entry) == NODE_INFO_KEYS
    assert widget(entry, "seed") == ["INT", {"default": 0, "tooltip": "noise seed", "control_after_generate": True,
                                             "min": 0, "max": 2**64 - 1, "step": 1}]
    assert widget(entry, "steps") == ["INT", {"default": 20, "min": 1, "max": 10000, "step": 1}]
    # ComfyUI's cfg: 0.1 a click, values rounded to 0.01 (graphrun's declaration only bounds it)
    assert widget(entry, "cfg") == ["FLOAT", {
        "default": 8.0, "tooltip": "classifier-free guidance; 1 skips the negative", "min": 0.0, "max": 100.0,
        "step": 0.1, "round": 0.01}]
    assert widget(entry, "denoise") == ["FLOAT", {
        "default": 1.0, "tooltip": "< 1 runs `steps` steps on the tail of a longer schedule", "min": 0.0, "max": 1.0,
        "step": 0.01, "round": 0.01}]
    samplers, options = widget(entry, "sampler_name")
    assert samplers == list(sampler_names()) and samplers[0] == "euler"
    assert options == {"default": "euler", "tooltip": "a registered sampler (plugins can add some)"}
    schedulers, options = widget(entry, "scheduler")
    assert schedulers == list(scheduler_names()) and options["default"] == "simple"
    assert widget(entry, "latent_image") == ["LATENT"]  # graphrun's `latent`, under ComfyUI's name
    # ComfyUI's INPUT_TYPES order (sockets among the widgets); the widgets keep the importer's order
    assert entry["input_order"] == {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                 "positive", "negative", "latent_image", "denoise"]}
    assert (entry["output"], entry["output_name"], entry["output_is_list"]) == (["LATENT"], ["LATENT"], [False])
    assert (entry["name"], entry["display_name"], entry["category"], entry["python_module"], entry["output_node"]) == (
        "KSampler", "KSampler", "model/sampling", "nodes", False)  # 0.33's folder (v0.18.1: "sampling")
    assert entry["description"] == "Denoise a latent (ComfyUI KSampler semantics)."
    advanced = info["KSamplerAdvanced"]
    assert widget(advanced, "cfg")[1]["step"] == 0.1 and widget(info["CFGGuider"], "cfg")[1]["step"] == 0.1
    # the options ComfyUI's editor keeps behind "show advanced"
    assert [name for name in widget_order(advanced) if widget(advanced, name)[1].get("advanced")] == [
        "add_noise", "start_at_step", "end_at_step", "return_with_leftover_noise"]
    assert widget(info["UNETLoader"], "weight_dtype")[1]["advanced"] is True
    assert "advanced" not in widget(entry, "steps")[1]


#: ComfyUI v0.18.1's display name and category of every class_type a built-in node declares (NODE_DISPLAY_NAME_MAPPINGS
#: and CATEGORY in nodes.py, display_name= and category= of the V3 schemas in comfy_extras/; no display name: the
#: class_type). The last one is a custom node's, graphrun's plugin example.
COMFYUI_TITLES = {
    "UNETLoader": ("Load Diffusion Model", "advanced/loaders"),
    "CLIPLoader": ("Load CLIP", "advanced/loaders"),
    "VAELoader": ("Load VAE", "loaders"),
    "LoraLoader": ("Load LoRA (Model and CLIP)", "loaders"),
    "LoraLoaderModelOnly": ("Load LoRA", "loaders"),
    "UpscaleModelLoader": ("Load Upscale Model", "loaders"),
    "ModelSamplingAuraFlow": ("ModelSamplingAuraFlow", "advanced/model"),
    "ModelSamplingSD3": ("ModelSamplingSD3", "advanced/model"),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", "conditioning"),
    "ConditioningZeroOut": ("ConditioningZeroOut", "advanced/conditioning"),
    "EmptyLatentImage": ("Empty Latent Image", "latent"),
    "EmptySD3LatentImage": ("EmptySD3LatentImage", "latent/sd3"),
    "LatentUpscale": ("Upscale Latent", "latent"),
    "LatentUpscaleBy": ("Upscale Latent By", "latent"),
    "VAEDecode": ("VAE Decode", "latent"),
    "VAEEncode": ("VAE Encode", "latent"),
    "KSampler": ("KSampler", "sampling"),
    "KSamplerAdvanced": ("KSampler (Advanced)", "sampling"),
    "SamplerCustom": ("SamplerCustom", "sampling/custom_sampling"),
    "SamplerCustomAdvanced": ("SamplerCustomAdvanced", "sampling/custom_sampling"),
    "KSamplerSelect": ("KSamplerSelect", "sampling/custom_sampling/samplers"),
    "SamplerER_SDE": ("SamplerER_SDE", "sampling/custom_sampling/samplers"),
    "SamplerLCM": ("SamplerLCM", "sampling/custom_sampling/samplers"),  # new in 0.33; v0.18.1's sampler category
    "BasicScheduler": ("BasicScheduler", "sampling/custom_sampling/schedulers"),
    "RandomNoise": ("RandomNoise", "sampling/custom_sampling/noise"),
    "DisableNoise": ("DisableNoise", "sampling/custom_sampling/noise"),
    "CFGGuider": ("CFGGuider", "sampling/custom_sampling/guiders"),
    "BasicGuider": ("BasicGuider", "sampling/custom_sampling/guiders"),
    "SplitSigmas": ("SplitSigmas", "sampling/custom_sampling/sigmas"),
    "SplitSigmasDenoise": ("SplitSigmasDenoise", "sampling/custom_sampling/sigmas"),
    "ManualSigmas": ("ManualSigmas", "_for_testing/custom_sampling"),
    "AddNoise": ("AddNoise", "_for_testing/custom_sampling/noise"),
    "LoadImage": ("Load Image", "image"),
    "SaveImage": ("Save Image", "image"),
    "PreviewImage": ("Preview Image", "image"),
    "GetImageSize": ("Get Image Size", "image"),
    "ImageScale": ("Upscale Image", "image/upscaling"),
    "ImageScaleBy": ("Upscale Image By", "image/upscaling"),
    "ImageScaleToTotalPixels": ("Scale Image to Total Pixels", "image/upscaling"),
    "ImageScaleToMaxDimension": ("ImageScaleToMaxDimension", "image/upscaling"),
    "ImageUpscaleWithModel": ("Upscale Image (using Model)", "image/upscaling"),
    "FlowMatchEulerDiscreteScheduler (Custom)": ("FlowMatchEulerDiscreteScheduler (Custom)", "sampling/custom"),
}


def test_display_names_and_categories_are_comfyuis(info):
    """v0.18.1's titles and node-library folders under that setting; 0.33's (which moved the model nodes
    under ``model/`` and renamed a few: real ComfyUI de6b062f's /object_info) under the default."""
    assert set(COMFYUI_TITLES) == set(builtin_registry().comfy_index())  # a new mapping needs its row here
    old = object_info(builtin_registry(), fake_files, "0.18.1")
    assert {c: (old[c]["display_name"], old[c]["category"]) for c in COMFYUI_TITLES} == COMFYUI_TITLES
    current = {c: TITLES_033.get(c, titles) for c, titles in COMFYUI_TITLES.items()}
    assert {c: (info[c]["display_name"], info[c]["category"]) for c in COMFYUI_TITLES} == current
    assert current["KSampler"] == ("KSampler", "model/sampling")
    assert current["ConditioningZeroOut"] == ("Conditioning Zero Out", "model/conditioning/transform")
    # graphrun's own categories stay graphrun's (`graphrun nodes`), and its own types keep their names
    assert builtin_registry().get("LoadDiffusionModel").category == "loaders"
    assert (info["LoadZImage"]["display_name"], info["LoadZImage"]["category"]) == ("LoadZImage", "loaders")


def test_lora_loader_model_only_has_only_the_model_output(info):
    entry = info["LoraLoaderModelOnly"]
    assert (entry["output"], entry["output_name"], entry["output_is_list"]) == (["MODEL"], ["MODEL"], [False])
    both = info["LoraLoader"]
    assert (both["output"], both["output_name"]) == (["MODEL", "CLIP"], ["MODEL", "CLIP"])
    # ComfyUI's LoraLoader requires its clip, in ComfyUI's place (graphrun would also run it without one)
    assert both["input_order"] == {"required": ["model", "clip", "lora_name", "strength_model", "strength_clip"]}
    # the UI-format exporter draws the node with that one output slot too
    registry = builtin_registry()
    assert comfy_node_spec(*registry.comfy_index()["LoraLoaderModelOnly"]).outputs == ("MODEL",)
    prompt = {"1": {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["2", 0], "lora_name": "style.safetensors", "strength_model": 0.5}},
              "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "z.safetensors", "weight_dtype": "default"}}}
    (lora,) = [n for n in api_to_ui(prompt, registry)["nodes"] if n["type"] == "LoraLoaderModelOnly"]
    assert [(o["name"], o["type"]) for o in lora["outputs"]] == [("MODEL", "MODEL")]


def test_clip_loader_offers_the_types_graphrun_runs_as_comfyui_does(info):
    entry = info["CLIPLoader"]
    types, options = widget(entry, "type")
    # ComfyUI v0.18.1's list but flux2 (a Qwen3-4B file becomes the Flux.2 Klein encoder there, Z-Image's here)
    assert types == ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                     "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "ovis",
                     "longcat_image"]
    assert options == {"default": "lumina2", "tooltip": "ComfyUI's architecture hint; Z-Image uses lumina2"}
    # device sits in ComfyUI's optional section, behind "show advanced"
    assert entry["input_order"] == {"required": ["clip_name", "type"], "optional": ["device"]}
    assert entry["input"]["optional"] == {"device": [["default", "cpu"], {"default": "default", "advanced": True}]}
    # graphrun still takes any text there (a workflow from another ComfyUI version keeps loading)
    assert builtin_registry().get("LoadTextEncoder").input("clip_type").type_name == "STRING"


def test_sockets_sit_where_comfyui_puts_them_and_latent_widgets_step_like_comfyuis(info):
    assert info["VAEDecode"]["input_order"] == {"required": ["samples", "vae"]}
    assert info["VAEEncode"]["input_order"] == {"required": ["pixels", "vae"]}
    assert info["CLIPTextEncode"]["input_order"] == {"required": ["text", "clip"]}
    assert info["SamplerCustom"]["input_order"] == {"required": ["model", "add_noise", "noise_seed", "cfg", "positive",
                                                                 "negative", "sampler", "sigmas", "latent_image"]}
    assert widget(info["EmptyLatentImage"], "width")[1]["step"] == 8
    assert widget(info["LatentUpscale"], "height")[1]["step"] == 8
    assert widget(info["ImageScaleToTotalPixels"], "resolution_steps")[1]["advanced"] is True


def test_clip_text_encode_text_is_a_multiline_dynamic_prompt(info):
    assert widget(info["CLIPTextEncode"], "text") == [
        "STRING", {"default": "", "tooltip": "the prompt", "multiline": True, "dynamicPrompts": True}]
    options = widget(info["SaveImage"], "filename_prefix")[1]
    assert "multiline" not in options and "dynamicPrompts" not in options  # a one-line text field


def test_save_image_is_an_output_node_passing_its_images_on(info):
    entry = info["SaveImage"]
    assert entry["output_node"] is True
    # ComfyUI 0.33's SaveImage and PreviewImage (v0.18.1's had no outputs), as its /object_info lists them
    for class_type in ("SaveImage", "PreviewImage"):
        entry = info[class_type]
        assert (entry["output"], entry["output_name"], entry["output_is_list"]) == (["IMAGE"], ["images"], [False])
    assert info["PreviewImage"]["output_node"] is True and info["VAEDecode"]["output_node"] is False
    old = object_info(builtin_registry(), fake_files, "0.18.1")
    for class_type in ("SaveImage", "PreviewImage"):
        assert (old[class_type]["output"], old[class_type]["output_name"]) == ([], [])


def test_unet_loader_lists_the_diffusion_models_of_the_models_dir(tmp_path):
    models = tmp_path / "models"
    touch(models / "diffusion_models" / "z_image_turbo_bf16.safetensors")
    touch(models / "unet" / "flux" / "old.safetensors")
    touch(models / "diffusion_models" / "unsafe.ckpt")  # a pickle: the loader refuses it, so it is not offered
    touch(models / "vae" / "ae.safetensors")

    def files(folder: str) -> list[str]:  # as the server answers: uploads apart, model folders listed
        return [] if folder == "input" else list_model_files(folder, [str(models)])

    info = object_info(builtin_registry(), files)
    names, options = widget(info["UNETLoader"], "unet_name")
    assert names == ["flux/old.safetensors", "z_image_turbo_bf16.safetensors"]
    assert "default" not in options  # like ComfyUI: the first file is the editor's choice
    assert widget(info["VAELoader"], "vae_name")[0] == ["ae.safetensors"]
    assert widget(info["CLIPLoader"], "clip_name")[0] == []
    assert widget(info["UNETLoader"], "weight_dtype") == [
        ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {"default": "default", "advanced": True}]


def test_load_image_lists_input_files_with_an_upload_button(info):
    entry = info["LoadImage"]
    assert widget(entry, "image") == [["cat.png", "pets/dog.webp"], {"tooltip": "image file path",
                                                                      "image_upload": True}]
    assert (entry["output"], entry["output_name"]) == (["IMAGE", "MASK"], ["IMAGE", "MASK"])


def test_file_inputs_are_declared_on_the_mappings_and_listed_once_per_folder():
    asked: list[str] = []

    def files(folder: str) -> list[str]:
        asked.append(folder)
        return [f"{folder}.safetensors"]

    info = object_info(builtin_registry(), files)
    assert widget(info["LoraLoader"], "lora_name")[0] == ["loras.safetensors"]
    assert widget(info["LoraLoaderModelOnly"], "lora_name")[0] == ["loras.safetensors"]
    assert widget(info["UpscaleModelLoader"], "model_name")[0] == ["upscale_models.safetensors"]
    assert widget(info["CLIPLoader"], "clip_name")[0] == ["text_encoders.safetensors"]
    assert sorted(asked) == ["diffusion_models", "input", "loras", "text_encoders", "upscale_models", "vae"]


def test_graphrun_only_inputs_and_narrow_mappings_leave_inputs_out(info):
    assert info["EmptyLatentImage"]["input_order"] == {"required": ["width", "height", "batch_size"]}
    assert info["EmptySD3LatentImage"]["input_order"] == {"required": ["width", "height", "batch_size"]}
    assert widget(info["EmptySD3LatentImage"], "width")[1] == {
        "default": 1024, "tooltip": "image width in pixels", "min": 16, "max": 16384, "step": 16}
    assert info["LoraLoaderModelOnly"]["input_order"] == {"required": ["model", "lora_name", "strength_model"]}


def test_unbounded_numbers_get_explicit_bounds(info):
    # the editor clamps a number without min/max to 0..2048: FlowMatch's shifts must stay free
    options = widget(info["FlowMatchEulerDiscreteScheduler (Custom)"], "base_shift")[1]
    assert (options["min"], options["max"]) == (-(2**63 - 1), 2**63 - 1)
    options = widget(info["FlowMatchEulerDiscreteScheduler (Custom)"], "max_image_seq_len")[1]
    assert (options["min"], options["max"], options["step"]) == (1, 2**63 - 1, 1)


def test_socket_types_are_comfyui_type_names(info):
    used = {spec[0] for entry in info.values() for section in entry["input"].values()
            for spec in section.values() if not is_widget(spec)}
    used |= {t for entry in info.values() for t in entry["output"]} - WIDGET_TYPES
    assert used <= COMFY_SOCKET_TYPES, used - COMFY_SOCKET_TYPES
    assert {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "SIGMAS", "UPSCALE_MODEL"} <= used


def test_shims_the_importer_accepts_have_comfyui_shapes(info):
    assert widget(info["PrimitiveInt"], "value")[1]["control_after_generate"] is True
    assert widget(info["PrimitiveStringMultiline"], "value") == ["STRING", {"default": "", "multiline": True}]
    assert widget(info["ResolutionSelector"], "aspect_ratio")[0][:2] == ["1:1 (Square)", "3:2 (Photo)"]
    assert info["ResolutionSelector"]["output_name"] == ["width", "height"]
    # SaveImageAdvanced runs as SaveImage: its format combos offer only what graphrun reproduces
    assert widget(info["SaveImageAdvanced"], "format") == [["png"], {"default": "png"}]
    assert info["SaveImageAdvanced"]["description"].startswith("Runs as SaveImage")
    assert info["ImageCompare"]["input"] == {"required": {}, "optional": {"image_a": ["IMAGE"], "image_b": ["IMAGE"]}}
    assert info["PreviewAny"]["input"]["required"] == {"source": ["*"]}
    assert info["PreviewAny"]["output_node"] is True


def test_a_plugin_node_appears_with_its_pack_and_widget_order(tmp_path):
    plugin = tmp_path / "stamp_pack.py"
    plugin.write_text(textwrap.dedent('''
        from typing import Annotated
        from pydantic import Field
        from graphrun import Comfy, node
        from graphrun.nodes.types import Image

        @node("StampText", category="test/plugin",
              comfy=Comfy("StampTextNode", inputs={"amount": "times"}, widgets=("times", "words", "font"),
                          files={"font": "fonts"}, control_after_generate=("times",)))
        def stamp(image: Image, words: str = "hi", amount: Annotated[int, Field(ge=1, le=9)] = 2,
                  font: str = "") -> Image:
            """Stamp words on an image."""
            return image
    '''))
    registry = make_registry([plugin])
    entry = object_info(registry, lambda folder: ["mono.ttf"] if folder == "fonts" else [])["StampTextNode"]
    assert entry["input_order"] == {"required": ["image", "times", "words", "font"]}  # the mapping's widget order
    assert widget(entry, "times") == ["INT", {"default": 2, "control_after_generate": True, "min": 1, "max": 9,
                                              "step": 1}]
    assert widget(entry, "font") == [["mono.ttf"], {"default": ""}]
    assert (entry["python_module"], entry["category"], entry["description"]) == (
        "custom_nodes.stamp_pack", "test/plugin", "Stamp words on an image.")
    assert "StampTextNode" not in object_info(builtin_registry(), fake_files)
    assert object_info(builtin_registry(), fake_files)["FlowMatchEulerDiscreteScheduler (Custom)"][
        "python_module"] == "custom_nodes.flowmatch_scheduler"


def test_a_files_entry_must_name_an_input_of_the_node():
    with pytest.raises(NodeDeclarationError, match="lists files for unknown input 'ckpt_name'"):
        @node("BadFiles", category="test", comfy=Comfy("BadFilesNode", files={"ckpt_name": "checkpoints"}))
        def bad(name: str) -> None:
            pass


class _Pair(NamedTuple):
    image: Image
    mask: Mask


@pytest.mark.parametrize("comfy, message", [
    (Comfy("Bad", outputs=("mask",)), r"outputs \['mask'\] must be the first outputs of the node, in order"),
    (Comfy("Bad", outputs=("alpha",)), r"outputs names unknown outputs \['alpha'\]; the node has \['image', 'mask'\]"),
    (Comfy("Bad", options={"amount": {"min": 2}}),
     r"options for 'amount' may only set \['advanced', 'round', 'step'\], not \['min'\]"),
    (Comfy("Bad", options={"size": {"step": 8}}), r"options names unknown inputs \['size'\]"),
    (Comfy("Bad", choices={"amount": (1, 2)}), "choices for 'amount' need a text input"),
    (Comfy("Bad", choices={"words": ("a", "b")}), "choices for 'words' lack its default 'hi'"),
    (Comfy("Bad", optional=("image",)), "optional names 'image', which graphrun requires"),
    (Comfy("Bad", optional=("amount",)), r"optional widgets \['amount'\] must come last in the widget order"),
    (Comfy("Bad", input_order=("image", "pixels")), r"input_order names unknown inputs \['pixels'\]"),
])
def test_a_mappings_editor_facts_must_fit_the_node(comfy, message):
    with pytest.raises(NodeDeclarationError, match=message):
        @node("BadFacts", category="test", comfy=comfy)
        def bad(image: Image, amount: int = 1, words: str = "hi") -> _Pair:
            return _Pair(image, image)


# --- coverage and consistency --------------------------------------------------------------------------------------


def test_every_class_type_the_importer_accepts_is_described_and_json_serialisable(info):
    registry = builtin_registry()
    expected = set(known_class_types(registry)) - FRONTEND_ONLY
    expected |= {spec.name for spec in registry if not spec.comfy}  # graphrun's own types: LoadZImage
    assert set(info) == expected
    assert "LoadZImage" in info and "Note" not in info and "MarkdownNote" not in info
    assert "Sampler" not in info  # a graphrun name that stands for KSampler is not offered twice
    for class_type, entry in info.items():
        assert set(entry) == NODE_INFO_KEYS, class_type
        assert entry["name"] == class_type
        assert len(entry["output"]) == len(entry["output_name"]) == len(entry["output_is_list"])
        assert entry["input_order"] == {section: list(values) for section, values in entry["input"].items()}
    assert json.loads(json.dumps(info, allow_nan=False)) == info


def test_widget_order_of_every_entry_is_the_ui_importers(info):
    registry = builtin_registry()
    index = registry.comfy_index()
    for class_type, entry in info.items():
        if class_type in index:
            expected = comfy_node_spec(*index[class_type]).widget_names
        elif shim_spec(class_type) is not None:
            expected = shim_spec(class_type).widget_names
        else:  # graphrun's own types: primitive inputs in declaration order, as api_to_ui writes them
            expected = tuple(i.name for i in registry.get(class_type).inputs if not i.socket)
        assert tuple(widget_order(entry)) == expected, class_type


def _editor_value(spec: list[Any]) -> Any:
    """A value a user could pick in the editor, other than the default where possible."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    default = options.get("default")
    if isinstance(kind, list):
        return kind[-1] if kind else "missing.safetensors"
    if kind == "INT":
        return options["min"] + 1 if options["min"] + 1 <= options["max"] else options["min"]
    if kind == "FLOAT":
        return (options["min"] + options["max"]) / 2 if options["max"] < 1e6 else 0.25
    if kind == "BOOLEAN":
        return not default
    return f"typed into {default!r}"


def _editor_widgets_values(entry: dict[str, Any], values: dict[str, Any]) -> list[Any]:
    """widgets_values as the editor stores them: each widget's value, then its stored-only companions."""
    stored = []
    for section in ("required", "optional"):
        for name in entry["input_order"].get(section, []):
            spec = entry["input"][section][name]
            if not is_widget(spec):
                continue
            options = spec[1] if len(spec) > 1 else {}
            stored.append(values[name])
            if options.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
                stored += ["fixed", ""] if isinstance(spec[0], list) else ["fixed"]
            if options.get("image_upload"):
                stored.append("image")
    return stored


def test_a_workflow_made_in_the_editor_converts_back_to_the_values_set(info):
    registry = builtin_registry()
    nodes, expected = [], {}
    served = [c for c in sorted(info) if c in registry.comfy_index() or c in ALIASES]
    for number, class_type in enumerate(served, start=1):
        entry = info[class_type]
        values = {name: _editor_value(widget(entry, name)) for name in widget_order(entry)}
        nodes.append({"id": number, "type": class_type, "mode": 0, "inputs": [], "outputs": [],
                      "widgets_values": _editor_widgets_values(entry, values)})
        expected[str(number)] = (class_type, values)
    prompt, _ = ui_to_api({"nodes": nodes, "links": []}, spec_lookup(registry), known=known_class_types(registry))
    assert {node_id: (node["class_type"], node["inputs"]) for node_id, node in prompt.items()} == expected
    assert "KSampler" in served and "LoadImage" in served and "SaveImageAdvanced" in served


def test_node_info_answers_one_class_and_none_for_unknown_ones(info):
    registry = builtin_registry()
    assert node_info(registry, "KSampler", fake_files) == info["KSampler"]
    assert node_info(registry, "PrimitiveInt", fake_files) == info["PrimitiveInt"]
    assert node_info(registry, "LoadZImage", fake_files) == info["LoadZImage"]
    assert node_info(registry, "NoSuchNode", fake_files) is None
    assert node_info(registry, "Sampler", fake_files) is None  # graphrun's name of KSampler
    assert node_info(registry, "Note", fake_files) is None  # the editor's own node
    assert sorted(DISPLAY_ONLY.keys() - FRONTEND_ONLY) == ["ImageCompare", "PreviewAny"]
    assert set(FOLDED) <= set(info)


# --- model folders -------------------------------------------------------------------------------------------------


def test_list_model_files_walks_every_folder_like_comfyui(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    touch(first / "diffusion_models" / "b.safetensors")
    touch(first / "diffusion_models" / "deep" / "er" / "c.SAFETENSORS")
    touch(first / "diffusion_models" / "d.sft")
    touch(first / "unet" / "a.safetensors")
    touch(second / "diffusion_models" / "b.safetensors")  # the same name in two dirs: listed once
    for ignored in ("x.ckpt", "x.pt", "x.bin", "notes.txt", ".hidden.safetensors", ".cache/y.safetensors"):
        touch(first / "diffusion_models" / ignored)
    names = list_model_files("diffusion_models", [str(first), str(second)])
    assert names == ["a.safetensors", "b.safetensors", "d.sft", "deep/er/c.SAFETENSORS"]
    assert list_model_files("unet", [str(first)]) == names  # ComfyUI's old name of the folder
    assert list_model_files("loras", [str(first)]) == []
    # every listed name resolves the way the loaders resolve it
    for name in names:
        assert model_files.resolve_model_file(name, "diffusion_models", [str(first)], announce=False).is_file()


def test_list_model_files_reads_extra_model_paths_and_lists_upscale_pickles(tmp_path):
    base = tmp_path / "comfy"
    touch(base / "models" / "my_loras" / "style.safetensors")
    touch(base / "models" / "upscalers" / "RealESRGAN_x4plus.pth")
    touch(base / "models" / "upscalers" / "4x_compact.safetensors")
    extra = tmp_path / "extra_model_paths.yaml"
    extra.write_text(f"comfyui:\n  base_path: {base}/models\n  loras: my_loras/\n  upscale_models: upscalers/\n")
    assert list_model_files("loras", [], str(extra)) == ["style.safetensors"]
    # LoadUpscaleModel reads .pth with torch's weights-only loader: offered; other loaders refuse pickles
    assert list_model_files("upscale_models", [], str(extra)) == ["4x_compact.safetensors", "RealESRGAN_x4plus.pth"]


def test_list_model_files_refuses_unknown_folders_and_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown model folder 'checkpoints'; expected one of diffusion_models"):
        list_model_files("checkpoints", [str(tmp_path)])
    assert model_folder_names() == ["diffusion_models", "text_encoders", "vae", "loras", "upscale_models",
                                    "embeddings"]
    assert list_model_files("vae", [str(tmp_path / "missing")]) == []

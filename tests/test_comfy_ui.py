"""ComfyUI UI-format import: widget mapping, links, virtual nodes, bypass/mute, subgraphs, value transforms.

Fixtures in tests/data/comfy/ui/ are hand-made UI workflows (see the README there); expected API prompts are written
out by hand from SEMANTICS.md §1.
"""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from graphrun.engine.comfy.formats import Workflow, detect_format, load_workflow
from graphrun.engine.comfy.png import png_info_for, read_png_chunks
from graphrun.engine.comfy.ui_to_api import (
    ComfyConversionError,
    ComfyFormatError,
    apply_text_replacements,
    expand_dynamic_prompt,
    format_date,
    map_widgets_values,
    ui_to_api,
)
from graphrun.engine.comfy.widgets import ComfyNodeSpec, WidgetSlot, spec_table

UI = Path(__file__).parent / "data" / "comfy" / "ui"
NOW = datetime(2025, 1, 5, 7, 8, 9)

# --- a hand-written SpecLookup for the core nodes the fixtures use ---------------------------------------------------

W = WidgetSlot
SAMPLERS = ["euler", "euler_ancestral", "res_multistep", "dpmpp_2m"]
SPECS = [
    ComfyNodeSpec(
        "KSampler",
        ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image",
         "denoise"),
        (
            W("seed", "INT", 0, control_after_generate=True),
            W("steps", "INT", 20),
            W("cfg", "FLOAT", 8.0),
            W("sampler_name", "COMBO", "euler"),
            W("scheduler", "COMBO", "simple"),
            W("denoise", "FLOAT", 1.0),
        ),
        ("LATENT",),
    ),
    ComfyNodeSpec(
        "CLIPTextEncode", ("text", "clip"), (W("text", "STRING", "", dynamic_prompts=True),), ("CONDITIONING",)
    ),
    ComfyNodeSpec("ConditioningZeroOut", ("conditioning",), (), ("CONDITIONING",)),
    ComfyNodeSpec(
        "EmptySD3LatentImage",
        ("width", "height", "batch_size"),
        (W("width", "INT", 1024), W("height", "INT", 1024), W("batch_size", "INT", 1)),
        ("LATENT",),
    ),
    ComfyNodeSpec(
        "LatentUpscale",
        ("samples", "upscale_method", "width", "height", "crop"),
        (W("upscale_method", "COMBO", "nearest-exact"), W("width", "INT", 512), W("height", "INT", 512),
         W("crop", "COMBO", "disabled")),
        ("LATENT",),
    ),
    ComfyNodeSpec("VAEDecode", ("samples", "vae"), (), ("IMAGE",)),
    ComfyNodeSpec("SaveImage", ("images", "filename_prefix"), (W("filename_prefix", "STRING", "ComfyUI"),), ()),
    ComfyNodeSpec("LoadImage", ("image",), (W("image", "COMBO", "", image_upload=True),), ("IMAGE", "MASK")),
    ComfyNodeSpec("GetImageSize", ("image",), (), ("INT", "INT", "INT")),
    ComfyNodeSpec(
        "UNETLoader", ("unet_name", "weight_dtype"),
        (W("unet_name", "COMBO", ""), W("weight_dtype", "COMBO", "default")), ("MODEL",),
    ),
    ComfyNodeSpec(
        "CLIPLoader", ("clip_name", "type", "device"),
        (W("clip_name", "COMBO", ""), W("type", "COMBO", "stable_diffusion"), W("device", "COMBO", "default")),
        ("CLIP",),
    ),
    ComfyNodeSpec("VAELoader", ("vae_name",), (W("vae_name", "COMBO", ""),), ("VAE",)),
    ComfyNodeSpec(
        "LoraLoaderModelOnly", ("model", "lora_name", "strength_model"),
        (W("lora_name", "COMBO", ""), W("strength_model", "FLOAT", 1.0)), ("MODEL",),
    ),
    ComfyNodeSpec("ModelSamplingAuraFlow", ("model", "shift"), (W("shift", "FLOAT", 1.73),), ("MODEL",)),
    # Test-only shapes: a COMBO with control_after_generate, and a forceInput input with an old dummy value.
    ComfyNodeSpec(
        "TestComboControl", ("choice", "amount"),
        (W("choice", "COMBO", "a", control_after_generate=True), W("amount", "INT", 1)), ("INT",),
    ),
    ComfyNodeSpec(
        "TestForceInput", ("a", "b", "c"), (W("a", "INT", 0), W("c", "STRING", "")), ("STRING",), force_inputs=("b",)
    ),
]
LOOKUP = spec_table(SPECS)
KNOWN = [s.class_type for s in SPECS]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((UI / name).read_text())


def convert(name_or_workflow: str | dict[str, Any]) -> tuple[dict[str, Any], list]:
    workflow = fixture(name_or_workflow) if isinstance(name_or_workflow, str) else name_or_workflow
    return ui_to_api(workflow, LOOKUP, known=KNOWN, now=NOW)


def inputs(prompt: dict[str, Any], node_id: str) -> dict[str, Any]:
    return prompt[node_id]["inputs"]


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


# --- the official template (trimmed) --------------------------------------------------------------------------------


def test_official_z_image_turbo_template_converts_like_comfyui():
    prompt, warnings = convert("z_image_turbo_template.json")
    assert warnings == []
    assert set(prompt) == {"9", "57:3", "57:8", "57:11", "57:13", "57:27", "57:28", "57:29", "57:30", "57:33"}
    assert inputs(prompt, "57:3") == {
        "seed": 0, "steps": 8, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple", "denoise": 1,
        "model": ["57:11", 0], "positive": ["57:27", 0], "negative": ["57:33", 0], "latent_image": ["57:13", 0],
    }
    assert inputs(prompt, "57:30") == {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}
    assert inputs(prompt, "57:11") == {"shift": 3, "model": ["57:28", 0]}
    assert inputs(prompt, "57:13") == {"width": 1024, "height": 1024, "batch_size": 1}
    assert inputs(prompt, "57:27")["text"].startswith("Latina female with thick wavy hair")
    assert inputs(prompt, "9") == {"filename_prefix": "z-image-turbo", "images": ["57:8", 0]}
    assert prompt["57:3"]["class_type"] == "KSampler"
    assert "35" not in prompt  # MarkdownNote dropped


# --- bypass and mute ------------------------------------------------------------------------------------------------


def test_bypass_passes_through_by_type():
    prompt, warnings = convert("bypass.json")
    assert not {"2", "3", "10", "14", "16"} & set(prompt)  # bypassed nodes are not emitted
    assert inputs(prompt, "4")["model"] == ["1", 0]  # through two bypassed LoRA loaders
    assert inputs(prompt, "11")["samples"] == ["9", 0]  # same slot, same type
    assert inputs(prompt, "17")["samples"] == ["9", 0]  # slot 0 is VAE: first input of the consumer's type


def test_bypass_without_a_matching_input_leaves_the_input_unconnected():
    prompt, warnings = convert("bypass.json")
    assert inputs(prompt, "15") == {"filename_prefix": "unmatched"}
    unmatched = [d for d in warnings if d.code == "comfy_bypass_unmatched"]
    assert [(d.node, d.input) for d in unmatched] == [("15", "images")]


def test_bypassed_unknown_node_type_is_not_an_error():
    convert("bypass.json")  # MysteryLatentNode (mode 4) has no spec and must not be reported


def test_mute_removes_the_node_and_the_inputs_it_fed():
    prompt, warnings = convert("mute.json")
    assert not {"2", "4", "7", "8"} & set(prompt)
    assert "model" not in inputs(prompt, "3")
    # A widget input linked to a muted node is deleted outright (value included), as graphToPrompt does.
    assert inputs(prompt, "5") == {"height": 768, "batch_size": 1}
    muted = {(d.node, d.input) for d in warnings if d.code == "comfy_muted_source"}
    assert muted == {("3", "model"), ("5", "width")}


def test_muted_subgraph_instance_emits_nothing_inside():
    workflow = fixture("subgraph_nested.json")
    workflow["nodes"][0]["mode"] = 2
    prompt, warnings = convert(workflow)
    assert not any(k.startswith("57:") for k in prompt)
    assert "images" not in inputs(prompt, "9")


def test_bypassed_subgraph_instance_passes_its_input_through():
    workflow = fixture("subgraph_nested.json")
    workflow["nodes"][0]["mode"] = 4
    # Give the instance an IMAGE input fed by a loader so the bypass has something to pass.
    workflow["nodes"][0]["inputs"].append({"name": "image", "type": "IMAGE", "link": 99})
    workflow["nodes"].append({"id": 70, "type": "LoadImage", "mode": 0, "inputs": [],
                              "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [99]}],
                              "widgets_values": ["in.png", "image"]})
    workflow["links"].append([99, 70, 0, 57, 1, "IMAGE"])
    prompt, _ = convert(workflow)
    assert not any(k.startswith("57:") for k in prompt)
    assert inputs(prompt, "9")["images"] == ["70", 0]


# --- reroutes and primitives ----------------------------------------------------------------------------------------


def test_reroute_chain_resolves_to_the_real_source():
    prompt, warnings = convert("reroute_chain.json")
    assert not {"2", "3", "6"} & set(prompt)
    assert inputs(prompt, "4")["model"] == ["1", 0]
    assert inputs(prompt, "5")["model"] == ["1", 0]
    assert inputs(prompt, "7") == {"samples": ["8", 0]}  # reroute 6 has no input: vae unconnected


def test_primitive_node_value_is_pushed_into_both_targets():
    prompt, warnings = convert("primitive.json")
    assert inputs(prompt, "2")["seed"] == 1234
    assert inputs(prompt, "3")["seed"] == 1234
    assert not {"1", "4", "6", "8", "9"} & set(prompt)


def test_primitive_core_nodes_are_inlined():
    prompt, _ = convert("primitive.json")
    assert inputs(prompt, "2")["steps"] == 9  # PrimitiveInt
    assert inputs(prompt, "3")["cfg"] == 2.5  # PrimitiveFloat
    assert inputs(prompt, "3")["steps"] == 30  # unlinked widgets keep their own values


def test_dynamic_prompts_apply_to_primitive_node_values_but_not_to_primitive_string_outputs():
    prompt, _ = convert("primitive.json")
    # PrimitiveNode writes into the text widget, whose serialisation processes dynamic prompts.
    assert inputs(prompt, "5")["text"] == "a cat \nbig dog"
    # PrimitiveStringMultiline is a backend node: ComfyUI sends its text through a link, unprocessed. The
    # target's own widget value ("{unused|value} …") is overridden, so its choice group is not an error.
    assert inputs(prompt, "7")["text"] == "{x} // stays verbatim"


# --- widget mapping -------------------------------------------------------------------------------------------------


def test_linked_widget_keeps_its_slot_and_resolves_by_name():
    prompt, _ = convert("widgets.json")
    # height is linked through input socket 0 (compressed), but it is the 2nd widget: values stay aligned.
    assert inputs(prompt, "3") == {"width": 512, "height": ["2", 1], "batch_size": 2}
    ksampler = inputs(prompt, "4")
    assert ksampler["steps"] == ["2", 2]
    assert ksampler["cfg"] == 4.5  # not 20: the linked steps still owns its widgets_values slot
    assert (ksampler["seed"], ksampler["sampler_name"], ksampler["scheduler"], ksampler["denoise"]) == (
        5, "dpmpp_2m", "karras", 0.7,
    )


def test_control_after_generate_and_upload_slots_are_not_sent():
    prompt, _ = convert("widgets.json")
    assert "control_after_generate" not in inputs(prompt, "4")
    assert inputs(prompt, "1") == {"image": "example.png"}
    assert inputs(prompt, "8") == {"choice": "b", "amount": 3}  # COMBO control: two stored companions


def test_short_widgets_values_use_defaults():
    prompt, _ = convert("widgets.json")
    assert inputs(prompt, "5") == {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}
    assert inputs(prompt, "9") == {"lora_name": "style.safetensors", "strength_model": 1.0, "model": ["6", 0]}


def test_dict_form_and_named_widgets_values():
    prompt, _ = convert("widgets.json")
    assert inputs(prompt, "6") == {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "fp8_e4m3fn"}
    assert inputs(prompt, "7") == {"vae_name": "ae.safetensors"}  # widgets_values_named preferred


def test_extra_values_warn_and_force_input_dummies_are_dropped():
    prompt, warnings = convert("widgets.json")
    assert inputs(prompt, "10")["shift"] == 3
    assert ("10", "comfy_extra_widget_values") in {(d.node, d.code) for d in warnings}
    assert inputs(prompt, "11") == {"a": 1, "c": "x"}


def test_map_widgets_values_directly():
    ksampler = LOOKUP("KSampler")
    values, problems = map_widgets_values(ksampler, [1, "fixed", 2, None])
    assert values == {"seed": 1, "steps": 2, "cfg": 8.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    assert codes(problems) == ["comfy_null_widget_value"]
    assert map_widgets_values(ksampler, None)[0]["steps"] == 20


def test_list_values_are_wrapped_and_not_shared_with_the_input():
    workflow = fixture("widgets.json")
    node = next(n for n in workflow["nodes"] if n["id"] == 6)
    node["widgets_values"] = {"unet_name": ["a", "b"], "weight_dtype": "default"}
    before = copy.deepcopy(workflow)
    prompt, _ = convert(workflow)
    assert inputs(prompt, "6")["unet_name"] == {"__value__": ["a", "b"]}
    inputs(prompt, "6")["unet_name"]["__value__"].append("c")
    assert workflow == before


# --- subgraphs ------------------------------------------------------------------------------------------------------


def test_nested_subgraph_ids_and_links():
    prompt, warnings = convert("subgraph_nested.json")
    assert warnings == []
    expected_ids = {"9", "10"} | {
        f"{i}:{n}" for i in ("57", "58") for n in ("28", "30", "29", "27", "33", "13", "8", "12:11", "12:3")
    }
    assert set(prompt) == expected_ids
    ksampler = inputs(prompt, "57:12:3")
    assert ksampler["model"] == ["57:12:11", 0]
    assert (ksampler["positive"], ksampler["negative"], ksampler["latent_image"]) == (
        ["57:27", 0], ["57:33", 0], ["57:13", 0],
    )
    assert inputs(prompt, "57:12:11")["model"] == ["57:28", 0]
    assert inputs(prompt, "57:8") == {"samples": ["57:12:3", 0], "vae": ["57:29", 0]}
    assert inputs(prompt, "9")["images"] == ["57:8", 0]
    assert inputs(prompt, "10")["images"] == ["58:8", 0]


def test_promoted_widgets_proxy_widgets_form():
    prompt, _ = convert("subgraph_nested.json")
    assert inputs(prompt, "57:27")["text"] == "a red fox"  # ["-1", "text"]: widget-backed subgraph input
    assert inputs(prompt, "57:12:3")["seed"] == 4242  # through the nested instance's linked seed input
    assert inputs(prompt, "57:13")["width"] == 640  # ["13", "width"]: inner node widget
    assert inputs(prompt, "57:12:3")["steps"] == 9  # ["12", "steps"]: the nested instance's promoted widget
    assert inputs(prompt, "57:29")["vae_name"] == "ae.safetensors"  # null entry keeps the inner value


def test_promoted_widgets_io_widget_form():
    prompt, _ = convert("subgraph_nested.json")
    assert inputs(prompt, "58:27")["text"] == "a blue bird"
    assert inputs(prompt, "58:12:3")["seed"] == 7
    assert inputs(prompt, "58:12:3")["steps"] == 6  # the nested instance's own io value
    assert inputs(prompt, "58:13")["width"] == 1024


def test_subgraph_input_linked_outside_overrides_the_promoted_value():
    workflow = fixture("subgraph_nested.json")
    workflow["nodes"].append({"id": 80, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                              "outputs": [{"name": "INT", "type": "INT", "links": [90]}], "widgets_values": [31337]})
    workflow["nodes"][1]["inputs"][1]["link"] = 90  # instance 58, input "seed"
    workflow["links"].append([90, 80, 0, 58, 1, "INT"])
    prompt, _ = convert(workflow)
    assert inputs(prompt, "58:12:3")["seed"] == 31337


def test_recursive_subgraph_is_an_error():
    workflow = fixture("subgraph_nested.json")
    inner = workflow["definitions"]["subgraphs"][0]["definitions"]["subgraphs"][0]
    inner["nodes"].append({"id": 40, "type": workflow["definitions"]["subgraphs"][0]["id"], "mode": 0,
                           "inputs": [], "outputs": []})
    with pytest.raises(ComfyConversionError) as info:
        convert(workflow)
    assert "comfy_subgraph_cycle" in codes(info.value.errors)


# --- frontend value transforms --------------------------------------------------------------------------------------


def test_comment_stripping_and_brace_groups_in_dynamic_prompts():
    prompt, _ = convert("prompts.json")
    assert inputs(prompt, "1")["text"] == "a cat \non a mat\nsmall {literal} dog\nsee http:"
    assert inputs(prompt, "4")["text"] == "photo %date:yyyy% "  # %…% is not a dynamic-prompt feature


def test_filename_prefix_date_and_widget_replacements():
    prompt, _ = convert("prompts.json")
    assert inputs(prompt, "2")["filename_prefix"] == "runs/2025-01-05/1234_070809_%width%"
    # By title; an unknown node stays; "yy.M" has a dot, so the frontend treats it as a node lookup and keeps it.
    assert inputs(prompt, "5")["filename_prefix"] == "euler/%Missing.seed%/%date:yy.M%"


def test_date_in_subgraph_save_node_is_expanded():
    prompt, _ = convert("subgraph_nested.json")
    assert inputs(prompt, "9")["filename_prefix"] == "fox/2025-01-05"


def test_choice_groups_are_an_error_with_every_group_listed():
    with pytest.raises(ComfyConversionError) as info:
        convert("choice.json")
    errors = info.value.errors
    assert [(d.code, d.node, d.input) for d in errors] == [
        ("comfy_dynamic_prompt_choice", "1", "text"),
        ("comfy_dynamic_prompt_choice", "2", "text"),
    ]
    assert "{red|blue}" in errors[0].message
    assert "{a|{b|c}}" in errors[1].message and "{x|y}" in errors[1].message
    assert "{p|q" not in errors[1].message  # escaped braces are literal
    assert "random" in errors[0].message and errors[0].hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", ("plain", [])),
        ("{a}", ("a", [])),
        ("{a {b} c}", ("a b c", [])),
        ("\\{a|b\\}", ("{a|b}", [])),
        ("x /* c */ y // z", ("x  y ", [])),
        ("{a|b}", ("{a|b}", ["{a|b}"])),
        ("{unclosed", ("unclosed", [])),
        ("a|b}", ("a|b}", [])),
        ("{" * 5000, ("", [])),
    ],
)
def test_expand_dynamic_prompt(text, expected):
    assert expand_dynamic_prompt(text) == expected


def test_format_date_tokens():
    assert format_date("yyyy yy MM M dd d hh h mm m ss s", datetime(2024, 3, 4, 5, 6, 7)) == (
        "2024 24 03 3 04 4 05 5 06 6 07 7"
    )
    assert apply_text_replacements("%date:yyyy.MM.dd%", NOW) == "2025"  # frontend: 2+ dots -> first part only
    assert apply_text_replacements("%a.b%", NOW, lambda n, w: 1.0) == "1"
    assert apply_text_replacements("%a.b%", NOW, lambda n, w: "x/y\\z") == "x_y_z"


# --- unsupported types ----------------------------------------------------------------------------------------------


def test_unsupported_types_are_one_error_listing_all_nodes_with_suggestions():
    with pytest.raises(ComfyConversionError) as info:
        convert("unsupported.json")
    errors = info.value.errors
    assert len(errors) == 1
    error = errors[0]
    assert error.code == "comfy_unsupported_node"
    assert info.value.unsupported == {
        "KSamplr": ("3 'My sampler'", "4"),
        "FancyUpscaler": ("7", "20:2"),
        "clipTextEncode": ("21",),
    }
    for needle in ("KSamplr", "3 'My sampler'", "FancyUpscaler", "20:2", "clipTextEncode"):
        assert needle in error.message
    assert "'KSamplr' -> 'KSampler'" in error.hint
    assert "'clipTextEncode' -> 'CLIPTextEncode'" in error.hint
    assert "KSamplr" in str(info.value)


def test_several_errors_are_reported_together():
    workflow = fixture("choice.json")
    workflow["nodes"].append({"id": 9, "type": "NoSuchNode", "mode": 0})
    with pytest.raises(ComfyConversionError) as info:
        convert(workflow)
    assert sorted(set(codes(info.value.errors))) == ["comfy_dynamic_prompt_choice", "comfy_unsupported_node"]


# --- structural errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "workflow",
    [
        [],
        {"nodes": "x"},
        {"nodes": [{"id": 1}]},
        {"nodes": [{"id": 1, "type": "VAELoader", "mode": "always"}]},
        {"nodes": [{"id": 1, "type": "VAELoader"}, {"id": 1, "type": "VAELoader"}]},
        {"nodes": [], "links": [[1, 2]]},
        {"nodes": [], "definitions": {"subgraphs": [{"name": "no id"}]}},
    ],
)
def test_malformed_structure_raises_conversion_error(workflow):
    with pytest.raises(ComfyConversionError) as info:
        convert(workflow)
    assert info.value.errors


def test_dangling_link_is_a_warning():
    workflow = {"nodes": [{"id": 1, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 5}]}]}
    prompt, warnings = convert(workflow)
    assert prompt == {"1": {"inputs": {}, "class_type": "VAEDecode", "_meta": {"title": "VAEDecode"}}}
    assert codes(warnings) == ["comfy_dangling_link"]


def test_reroute_cycle_is_an_error():
    workflow = {
        "nodes": [
            {"id": 1, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}], "outputs": []},
            {"id": 2, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 1}], "outputs": []},
            {"id": 3, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 3}]},
        ],
        "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "VAE"]],
    }
    with pytest.raises(ComfyConversionError) as info:
        convert(workflow)
    assert codes(info.value.errors) == ["comfy_link_cycle"]


# --- loading: formats, PNG ------------------------------------------------------------------------------------------

API_PROMPT = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}}


def test_load_ui_json_path():
    workflow = load_workflow(UI / "widgets.json")
    assert workflow.format == "ui" and workflow.source.endswith("widgets.json")
    prompt, _ = workflow.to_api(LOOKUP, known=KNOWN, now=NOW)
    assert inputs(prompt, "1") == {"image": "example.png"}


def test_load_api_dict_and_envelope():
    assert load_workflow(API_PROMPT).format == "api"
    ui = fixture("mute.json")
    envelope = {"prompt": API_PROMPT, "client_id": "x", "extra_data": {"extra_pnginfo": {"workflow": ui}}}
    workflow = load_workflow(envelope)
    assert workflow.format == "api" and workflow.ui is not None
    assert workflow.to_api(LOOKUP) == (API_PROMPT, [])


def test_png_prefers_prompt_over_workflow(tmp_path):
    path = tmp_path / "out.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=png_info_for(API_PROMPT, fixture("mute.json"), {"extra": [1]}))
    chunks = read_png_chunks(path)
    assert json.loads(chunks["prompt"]) == API_PROMPT and json.loads(chunks["extra"]) == [1]
    workflow = load_workflow(path)
    assert (workflow.format, workflow.data) == ("api", API_PROMPT)
    assert workflow.ui == fixture("mute.json")


def test_png_with_only_a_workflow_chunk_or_a_broken_prompt(tmp_path):
    path = tmp_path / "ui.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=png_info_for(None, fixture("mute.json")))
    assert load_workflow(path).format == "ui"
    info = png_info_for(None, fixture("mute.json"))
    info.add_text("prompt", "{not json")
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    workflow = load_workflow(path)
    assert workflow.format == "ui" and "prompt" in workflow.notes[0]


def test_png_utf8_in_a_latin1_text_chunk_is_repaired(tmp_path):
    info = PngImagePlugin.PngInfo()
    prompt = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "café ☕"}}}
    info.add_text("prompt", json.dumps(prompt, ensure_ascii=False).encode("utf-8"))  # bytes: written as tEXt
    path = tmp_path / "utf8.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    assert load_workflow(path).data == prompt


def test_png_info_rejects_a_workflow_given_twice():
    with pytest.raises(ValueError):
        png_info_for(None, {"nodes": []}, {"workflow": {}})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "JSON list"),
        (b"{}", "empty"),
        (b'{"a": 1}', "expected a ComfyUI workflow"),
        (b'{"nodes": []}', "no nodes"),
        (b'{"1": {"class_type": "X", "inputs": {}}, "2": {"inputs": {}}}', "no class_type"),
        (b"\xff\xfe\x00garbage", "neither a PNG"),
    ],
)
def test_load_errors_are_clear(tmp_path, content, message):
    path = tmp_path / "w.json"
    path.write_bytes(content)
    with pytest.raises(ComfyFormatError, match=message):
        load_workflow(path)


def test_png_without_workflow_chunks(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(path)
    with pytest.raises(ComfyFormatError, match="no ComfyUI workflow"):
        load_workflow(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ComfyFormatError, match="not a readable PNG"):
        load_workflow(broken)


def test_missing_file():
    with pytest.raises(ComfyFormatError, match="not found"):
        load_workflow("/nonexistent/workflow.json")


def test_detect_format():
    assert detect_format(fixture("bypass.json")) == "ui"
    assert detect_format(API_PROMPT) == "api"
    with pytest.raises(ComfyFormatError):
        detect_format("text")


def test_no_torch_import():
    code = (
        "import sys; import graphrun.engine.comfy.formats, graphrun.engine.comfy.png, "
        "graphrun.engine.comfy.ui_to_api, graphrun.engine.comfy.widgets; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- fuzz: anything malformed ends in ComfyFormatError --------------------------------------------------------------

FIXTURES = sorted(p.name for p in UI.glob("*.json"))
json_scalars = st.none() | st.booleans() | st.integers(-3, 100) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def _containers(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list inside obj."""
    found = [path]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            found.extend(_containers(value, path + (key,)))
    return found


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def mutated_workflows(draw) -> Any:
    workflow = fixture(draw(st.sampled_from(FIXTURES)))
    for _ in range(draw(st.integers(1, 6))):
        paths = _containers(workflow)
        path = draw(st.sampled_from(paths))
        container = _get(workflow, path)
        if not container:
            continue
        key = draw(st.sampled_from(list(container.keys()) if isinstance(container, dict) else range(len(container))))
        action = draw(st.sampled_from(["delete", "replace", "retype", "swap_ids"]))
        if action == "delete":
            del container[key]
        elif action == "replace":
            container[key] = draw(json_values)
        elif action == "retype":
            value = container[key]
            container[key] = str(value) if not isinstance(value, str) else draw(st.integers(-20, 100))
        else:
            container[key] = draw(st.sampled_from([-10, -20, 0, 1, 3, 12, 57, "57", "-1", 1.5, True]))
    return workflow


def _check_conversion(workflow: Any) -> None:
    try:
        prompt, warnings = ui_to_api(workflow, LOOKUP, known=KNOWN, now=NOW)
    except ComfyFormatError as exc:
        assert exc.diagnostics
        return
    assert isinstance(prompt, dict) and isinstance(warnings, list)
    json.dumps(prompt)  # plain JSON data, always serialisable


def _check_loading(workflow: Any) -> None:
    try:
        loaded = load_workflow(workflow) if isinstance(workflow, dict) else load_workflow(json.dumps(workflow))
    except ComfyFormatError:
        return
    assert isinstance(loaded, Workflow)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_workflows())
def test_fuzz_mutated_fixtures_only_raise_comfy_errors(workflow):
    _check_conversion(workflow)
    _check_loading(workflow)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_random_json_only_raises_comfy_errors(value):
    _check_conversion(value)
    _check_loading(value)
    _check_conversion({"nodes": [value] if not isinstance(value, list) else value, "links": value})


def test_nan_values_survive_conversion():
    workflow = fixture("widgets.json")
    next(n for n in workflow["nodes"] if n["id"] == 10)["widgets_values"] = [math.inf]
    prompt, _ = convert(workflow)
    assert inputs(prompt, "10")["shift"] == math.inf

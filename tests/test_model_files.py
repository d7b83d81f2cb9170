"""Model files as users hand them to graphrun: the bundled Qwen tokenizer, models folders and the
extra_model_paths.yaml file, ComfyUI models folders and Hugging Face repo ids for LoadZImage, damaged
and NaN files, the tiny-model notice, and the permissions of cached files. User-facing behaviour is
checked through the CLI: exit code and message."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import struct
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graphrun.engine.cli import main
from graphrun.nodes import model_files
from graphrun.nodes.zimage import loading, text, tiny, tokenizers

ROOT = Path(__file__).parent.parent
TURBO = ROOT / "graphs" / "zimage_turbo.yaml"
NOTICE = "using the tiny random-weight model: pictures are noise"
SMALL = ["--set", "width=64", "--set", "height=64", "--set", "steps=1", "--progress", "none"]
QWEN_VOCAB = 151_936  # Qwen3-4B's embedding rows

torch.set_num_threads(1)

# A graph on ComfyUI's split files, small enough to run in a second.
SPLIT_GRAPH = {
    "graph": "split",
    "params": {"prompt": {"type": "STRING", "default": "a red fox in the snow 🦊, café"}},
    "nodes": {
        "unet": {"type": "LoadDiffusionModel", "name": "z_image_turbo_bf16.safetensors"},
        "clip": {"type": "LoadTextEncoder", "name": "qwen_3_4b.safetensors"},
        "vae": {"type": "LoadVAE", "name": "ae.safetensors"},
        "pos": {"type": "TextEncode", "clip": "clip", "text": "$prompt"},
        "neg": {"type": "ConditioningZeroOut", "conditioning": "pos"},
        "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
        "sample": {"type": "Sampler", "model": "unet", "positive": "pos", "negative": "neg", "latent": "empty",
                   "seed": 1, "steps": 1, "cfg": 1.0},
        "decode": {"type": "VAEDecode", "vae": "vae", "latent": "sample"},
        "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "split"},
    },
}


@pytest.fixture(autouse=True)
def _fresh_notice(monkeypatch):
    """Each test sees the process-wide tiny notice as not given yet, and no model settings."""
    monkeypatch.setattr(model_files, "_TINY_NOTICE_GIVEN", False)
    for name in ("GRAPHRUN_MODELS", "GRAPHRUN_EXTRA_MODEL_PATHS", "GRAPHRUN_TOKENIZER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tiny_comfy() -> Path:
    return tiny.tiny_comfy_dir()


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _link_split_files(root: Path, tiny_comfy: Path, *, text_encoder: Path | None = None) -> Path:
    """A ComfyUI models folder with the tiny model's three split files."""
    for rel in (tiny.COMFY_TRANSFORMER, tiny.COMFY_TEXT_ENCODER, tiny.COMFY_VAE):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = text_encoder if (text_encoder is not None and rel == tiny.COMFY_TEXT_ENCODER) else tiny_comfy / rel
        target.symlink_to(source)
    return root


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# 1. The bundled Qwen tokenizer


def _tokenizer_folder() -> Path:
    from importlib import resources

    return Path(str(resources.files("graphrun.nodes.zimage") / "tokenizer"))


def test_bundled_tokenizer_is_package_data_with_its_provenance_note():
    """The files load through importlib.resources, match the hashes in PROVENANCE.md (ComfyUI's copies),
    and pyproject's package-data globs take every one of them into the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    folder = _tokenizer_folder()
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["LICENSE", "PROVENANCE.md", "merges.txt", "tokenizer_config.json", "vocab.json"]
    provenance = (folder / "PROVENANCE.md").read_text("utf-8")
    assert "Apache License" in provenance and "Qwen" in provenance and "ComfyUI" in provenance
    assert "Apache License" in (folder / "LICENSE").read_text("utf-8")
    for name in ("merges.txt", "tokenizer_config.json", "vocab.json"):
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() in provenance, name
    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    globs = data["graphrun.nodes.zimage"]
    for name in names:
        assert any(fnmatch.fnmatch(f"tokenizer/{name}", g) for g in globs), (name, globs)


class _ReferenceBPE:
    """Qwen2's byte-level BPE written out from its definition (NFC, the pre-tokenizer regex, GPT-2's
    byte table, merges by rank, added tokens matched first): an independent check of the tokenizer
    transformers builds from the bundled files."""

    PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

    def __init__(self, folder: Path) -> None:
        regex = pytest.importorskip("regex")
        self.regex = regex
        self.vocab = json.loads((folder / "vocab.json").read_text("utf-8"))
        merges = (folder / "merges.txt").read_text("utf-8").splitlines()[1:]
        self.ranks = {tuple(line.split(" ")): i for i, line in enumerate(merges) if line}
        config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
        self.added = {t["content"]: int(i) for i, t in config["added_tokens_decoder"].items()}
        self.split_added = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(self.added, key=len,
                                                                                       reverse=True)) + ")")
        self.pretokenize = regex.compile(self.PATTERN)
        printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        codes, extra = printable[:], 0
        for b in range(256):
            if b not in printable:
                printable.append(b)
                codes.append(256 + extra)
                extra += 1
        self.byte_char = {b: chr(c) for b, c in zip(printable, codes)}

    def _bpe(self, word: str) -> list[int]:
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == float("inf"):
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j + 1 < len(parts) and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return [self.vocab[p] for p in parts]

    def encode(self, text_: str) -> list[int]:
        ids: list[int] = []
        for segment in self.split_added.split(text_):
            if segment in self.added:
                ids.append(self.added[segment])
                continue
            for piece in self.pretokenize.findall(unicodedata.normalize("NFC", segment)):
                ids += self._bpe("".join(self.byte_char[b] for b in piece.encode("utf-8")))
        return ids


PROMPTS = [
    "a red fox",
    "A young woman with long brown hair, summer street, photo, 35mm, f/1.8",
    "Café naïve façade — «déjà vu» 1234567 3.14159",
    "cafe\u0301 (decomposed accent)",
    "🦊🔥 family 👩‍👩‍👧 flags 🇯🇵 skin 👍🏽",
    "一只红色的狐狸在雪地里奔跑，电影感",
    "東京の夜景、ネオン、雨",
    "  leading spaces,\ttabs\n\nand\r\nnewlines   ",
    "don't it's THEY'RE we'll I'm you'd",
    "def f(x):\n    return x**2  # code",
    "<think>literal tags</think> <tool_call> <|fim_prefix|>",
    "\\(escaped\\) (weighted:1.2) [brackets] {braces}",
]


def test_bundled_tokenizer_gives_qwen_token_ids():
    """Against the reference BPE, on plain, unicode, emoji, CJK, whitespace and chat-template text;
    and the well-known Qwen ids of the Z-Image template."""
    reference = _ReferenceBPE(_tokenizer_folder())
    tokenizer = tokenizers.bundled_tokenizer()
    assert len(tokenizer) == loading.BUNDLED_TOKENIZER_SIZE
    for prompt in PROMPTS:
        templated = text.format_prompt(prompt)
        expected = reference.encode(templated)
        assert tokenizer(templated, add_special_tokens=False)["input_ids"] == expected, prompt
        assert text.tokenize_prompt(tokenizer, prompt) == expected, prompt  # graphrun's own path
        assert tokenizer.decode(expected) == unicodedata.normalize("NFC", templated)
    ids = text.tokenize_prompt(tokenizer, "Hello world")
    assert ids == [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]


def test_tiny_encoder_keeps_its_byte_tokenizer(tiny_comfy):
    """The tiny model's encoder (vocab 512) keeps the byte tokenizer ComfyUI's reference runs used, so
    every existing result stays as it was."""
    te = loading.load_text_encoder_file(tiny_comfy / tiny.COMFY_TEXT_ENCODER, "cpu", "fp32")
    assert len(te.tokenizer) == 261
    assert text.tokenize_prompt(te.tokenizer, "ab")[6:8] == [ord("a"), ord("b")]


@pytest.fixture(scope="module")
def qwen_vocab_models(tmp_path_factory, tiny_comfy) -> Path:
    """The tiny split files with a text encoder of Qwen3's full vocabulary and no tokenizer beside it
    (as ComfyUI's text_encoders/qwen_3_4b.safetensors)."""
    root = tmp_path_factory.mktemp("qwen_vocab")
    source = tiny_comfy / tiny.COMFY_TEXT_ENCODER
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(source))
    hidden = state["model.embed_tokens.weight"].shape[1]
    state["model.embed_tokens.weight"] = torch.randn(QWEN_VOCAB, hidden, generator=torch.Generator().manual_seed(5))
    encoder = root / "encoder" / "qwen_3_4b.safetensors"
    encoder.parent.mkdir()
    save_file(state, str(encoder), metadata=metadata)
    return _link_split_files(root / "models", tiny_comfy, text_encoder=encoder)


def test_split_text_encoder_without_tokenizer_folder_runs(tmp_path, capsys, qwen_vocab_models):
    """Before: `validate` said valid and the run failed after loading the diffusion model."""
    graph = _write(tmp_path / "split.yaml", SPLIT_GRAPH)
    rc, _, err = _run(["validate", str(graph), "--models-dir", str(qwen_vocab_models)], capsys)
    assert rc == 0, err
    rc, out, err = _run([str(graph), "--models-dir", str(qwen_vocab_models), "--out", str(tmp_path / "out"),
                         "--progress", "none"], capsys)
    assert rc == 0, err
    assert Path(out.strip()).is_file()
    te = loading.load_text_encoder_file(qwen_vocab_models / tiny.COMFY_TEXT_ENCODER, "cpu", "fp32")
    assert te.tokenizer is tokenizers.bundled_tokenizer()
    assert text.tokenize_prompt(te.tokenizer, "Hello world")[:5] == [151644, 872, 198, 9707, 1879]


def test_graphrun_tokenizer_pointing_nowhere_is_a_validation_error(tmp_path, capsys, monkeypatch, qwen_vocab_models):
    monkeypatch.setenv("GRAPHRUN_TOKENIZER", str(tmp_path / "no-tokenizer"))
    graph = _write(tmp_path / "split.yaml", SPLIT_GRAPH)
    rc, _, err = _run(["validate", str(graph), "--models-dir", str(qwen_vocab_models)], capsys)
    assert rc == 2
    assert "GR018" in err and "node 'clip'" in err and f"GRAPHRUN_TOKENIZER={tmp_path / 'no-tokenizer'}" in err


# ---------------------------------------------------------------------------------------------
# 2. Models folders that do not exist


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_models_dir_that_is_no_folder_is_one_usage_error(tmp_path, capsys, kind):
    target = {"missing": str(tmp_path / "nope"), "file": str(_write(tmp_path / "x.yaml", {})), "empty": ""}[kind]
    for args in (["validate", str(TURBO)], ["run", str(TURBO), "--out", str(tmp_path / "out")]):
        rc, _, err = _run([*args, "--models-dir", target], capsys)
        assert rc == 2
        assert err.count("error") == 1 and f"--models-dir {target or repr('')}" in err
        assert ("does not exist" if kind == "missing" else "is a file" if kind == "file" else "empty") in err
    assert not (tmp_path / "out").exists()


def test_graphrun_models_pointing_nowhere_is_one_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAPHRUN_MODELS", f"tiny{os.pathsep}{tmp_path / 'gone'}")
    rc, _, err = _run(["validate", str(TURBO)], capsys)
    assert rc == 2
    assert err.count("error") == 1 and f"GRAPHRUN_MODELS entry {tmp_path / 'gone'}: " in err


# ---------------------------------------------------------------------------------------------
# 3. The tiny-model notice


def test_tiny_notice_once_for_load_zimage_tiny_in_a_batch(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a fox"}\n{"prompt": "a cat"}\n', "utf-8")
    rc, _, err = _run([str(TURBO), "--batch", str(rows), "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert rc == 0, err
    assert err.count(NOTICE) == 1


def test_tiny_notice_once_for_split_files_resolved_in_the_tiny_model(tmp_path, capsys):
    graph = _write(tmp_path / "split.yaml", SPLIT_GRAPH)
    rc, _, err = _run([str(graph), "--out", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert rc == 0, err
    assert err.count(NOTICE) == 1


# ---------------------------------------------------------------------------------------------
# 4. LoadZImage given a ComfyUI models folder, or a folder of neither layout


@pytest.fixture(scope="module")
def tiny_png(tmp_path_factory) -> np.ndarray:
    """The shipped turbo graph at 64x64 on `model: tiny` (the diffusers folder)."""
    out = tmp_path_factory.mktemp("tiny_ref")
    assert main([str(TURBO), "--out", str(out), *SMALL]) == 0
    return _pixels(out / "zimage_turbo_00001_.png")


def test_load_zimage_takes_a_comfyui_models_folder(tmp_path, capsys, tiny_comfy, tiny_png):
    models = _link_split_files(tmp_path / "ComfyUI" / "models", tiny_comfy)
    (models / "loras").mkdir()
    shutil.copy(tiny_comfy / "vae" / "ae.safetensors", models / "loras" / "not_a_vae_slot.safetensors")
    (models / "text_encoders" / "clip_l.safetensors").write_bytes(b"")  # unreadable: not a candidate
    rc, out, err = _run([str(TURBO), "--set", f"model={models}", "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert rc == 0, err
    assert np.array_equal(_pixels(Path(out.strip())), tiny_png)  # the same weights as the diffusers folder


def test_comfyui_models_folder_with_several_candidates_lists_them(tmp_path, capsys, tiny_comfy):
    models = _link_split_files(tmp_path / "models", tiny_comfy)
    (models / "unet").mkdir()
    (models / "unet" / "z_image_fp8.safetensors").symlink_to(tiny_comfy / tiny.COMFY_TRANSFORMER)
    rc, _, err = _run(["validate", str(TURBO), "--set", f"model={models}"], capsys)
    assert rc == 2
    assert "node 'zimage' input 'path'" in err and "2 Z-Image diffusion model files" in err
    assert "diffusion_models/z_image_turbo_bf16.safetensors" in err and "unet/z_image_fp8.safetensors" in err
    assert "LoadDiffusionModel, LoadTextEncoder and LoadVAE" in err


def test_comfyui_models_folder_without_a_vae_folder(tmp_path, capsys, tiny_comfy):
    models = _link_split_files(tmp_path / "models", tiny_comfy)
    shutil.rmtree(models / "vae")
    rc, _, err = _run(["validate", str(TURBO), "--set", f"model={models}"], capsys)
    assert rc == 2 and "has no vae/ folder" in err


def test_folder_of_neither_layout_says_what_was_expected(tmp_path, capsys):
    (tmp_path / "ComfyUI" / "models" / "vae").mkdir(parents=True)
    (tmp_path / "ComfyUI" / "models" / "diffusion_models").mkdir()
    for folder, hint in ((tmp_path / "random", ""), (tmp_path / "ComfyUI", "did you mean that?")):
        folder.mkdir(exist_ok=True)
        rc, _, err = _run(["validate", str(TURBO), "--set", f"model={folder}"], capsys)
        assert rc == 2
        assert err.count("error[") == 1
        assert "is neither a diffusers folder nor a ComfyUI models folder" in err and hint in err
        assert "model_index.json" in err and "diffusion_models/ or unet/" in err


def test_diffusers_folder_without_tokenizer(tmp_path, capsys):
    """Without tokenizer/ the bundled Qwen tokenizer is used, which fits only Qwen's vocabulary: the tiny
    model's folder without it is an error at validation, naming what is missing."""
    folder = tmp_path / "zimage"
    shutil.copytree(tiny.tiny_model_dir(), folder)
    shutil.rmtree(folder / "tokenizer")
    rc, _, err = _run(["validate", str(TURBO), "--set", f"model={folder}"], capsys)
    assert rc == 2 and "not a complete Z-Image diffusers folder: missing tokenizer/" in err


# ---------------------------------------------------------------------------------------------
# 5. Hugging Face repo ids, from the local cache only


def _fake_hf_cache(root: Path, repo: str) -> Path:
    org, name = repo.split("/")
    entry = root / f"models--{org}--{name}"
    snapshot = entry / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny.tiny_model_dir(), snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(snapshot.name)
    return root


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_repo_id_resolves_from_the_local_hf_cache(tmp_path, capsys, monkeypatch, tiny_png, variable):
    cache = _fake_hf_cache(tmp_path / "hf" / "hub", "Tongyi-MAI/Z-Image-Turbo")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else cache.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # "Tongyi-MAI/Z-Image-Turbo" is no local path here
    args = [str(TURBO), "--set", "model=Tongyi-MAI/Z-Image-Turbo", "--out", str(tmp_path / "out"), *SMALL]
    if variable == "HF_HOME":
        rc, _, err = _run(["validate", *args[:3]], capsys)
        assert rc == 0, err
        return
    rc, out, err = _run(args, capsys)
    assert rc == 0, err
    assert np.array_equal(_pixels(Path(out.strip())), tiny_png)


def test_repo_id_not_in_the_cache_says_nothing_is_downloaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run([str(TURBO), "--set", "model=Tongyi-MAI/Z-Image-Turbo", "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert "not in the Hugging Face cache" in err and "never downloads" in err
    assert "hf download Tongyi-MAI/Z-Image-Turbo" in err and str(tmp_path / "empty-cache") in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# 6. extra_model_paths.yaml that is missing or malformed


BAD_EXTRA = {
    "missing": (None, "does not exist"),
    "directory": ("DIR", "is a folder"),
    "empty": (b"", "is empty"),
    "comment_only": (b"# nothing here\n", "is empty"),
    "list": (b"- a\n- b\n", "holds a list at the top level"),
    "scalar": (b"just text\n", "holds text at the top level"),
    "number": (b"42\n", "holds a number (42) at the top level"),
    "bad_syntax": (b"comfyui:\n  base_path: [unclosed\n", "is not valid YAML at line"),
    "tab_indent": (b"comfyui:\n\tvae: vae\n", "is not valid YAML"),
    "section_text": (b"comfyui: /models\n", "section 'comfyui' holds text, not a mapping"),
    "section_list": (b"comfyui:\n  - vae\n", "section 'comfyui' holds a list"),
    "list_value": (b"comfyui:\n  loras: [a, b]\n", "'loras' holds a list"),
    "number_value": (b"comfyui:\n  vae: 3\n", "'vae' holds a number (3)"),
    "null_value": (b"comfyui:\n  vae:\n", "'vae' holds nothing"),
    "mapping_value": (b"comfyui:\n  vae: {a: b}\n", "'vae' holds a mapping"),
    "base_path_number": (b"comfyui:\n  base_path: 7\n  vae: vae\n", "base_path holds a number (7)"),
    "base_path_list": (b"comfyui:\n  base_path: [a]\n", "base_path holds a list"),
    "binary": (bytes(range(256)) * 4, "is not a text file"),
    "latin1": ("comfyui:\n  vae: caf\xe9\n".encode("latin-1"), "is not a text file"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXTRA))
def test_bad_extra_model_paths_file_is_one_clear_error(tmp_path, capsys, case):
    content, message = BAD_EXTRA[case]
    path = tmp_path / "extra_model_paths.yaml"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    for verb in (["validate"], ["run"]):
        rc, _, err = _run([*verb, str(ROOT / "graphs" / "zimage_3stage.yaml"), "--extra-model-paths", str(path)]
                          + (["--out", str(tmp_path / "out")] if verb == ["run"] else []), capsys)
        assert rc == 2, err
        assert err.count("error") == 1 and f"extra model paths file {path}" in err and message in err, err
        assert "Traceback" not in err and "IndexError" not in err
    assert not (tmp_path / "out").exists()


def test_bad_extra_model_paths_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAPHRUN_EXTRA_MODEL_PATHS", str(tmp_path / "nope.yaml"))
    rc, _, err = _run(["validate", str(TURBO)], capsys)
    assert rc == 2 and err.count("error") == 1
    assert f"GRAPHRUN_EXTRA_MODEL_PATHS: extra model paths file {tmp_path / 'nope.yaml'} does not exist" in err


def test_extra_model_paths_without_base_path_is_relative_to_the_file(tmp_path, tiny_comfy):
    """As in ComfyUI: no base_path means paths relative to the yaml's folder; empty sections are skipped."""
    (tmp_path / "cfg").mkdir()
    extra = tmp_path / "cfg" / "extra.yaml"
    extra.write_text("empty:\ncomfyui:\n  is_default: true\n  vae: |\n    my_vae\n    /abs/vae\n  checkpoints: ckpt\n")
    assert model_files.extra_model_paths(extra) == {"vae": [tmp_path / "cfg" / "my_vae", Path("/abs/vae")]}


# ---------------------------------------------------------------------------------------------
# 7. NaN / Inf weights


def _poison(source: Path, target: Path, key: str | None = None) -> str:
    state = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    key = key or sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    state[key].view(-1)[1] = float("inf")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata=metadata)
    return key


def test_lora_with_nan_is_an_error_naming_file_and_tensor(tmp_path, capsys, tiny_comfy):
    models = tmp_path / "models"
    key = _poison(tiny_comfy / "loras" / "tiny_lora_peft.safetensors", models / "loras" / "nan.safetensors")
    doc = yaml.safe_load(TURBO.read_text())
    doc["nodes"]["lora"] = {"type": "LoadLora", "model": "model", "name": "nan.safetensors"}
    doc["nodes"]["sample"]["model"] = "lora.model"
    graph = _write(tmp_path / "lora.yaml", doc)
    rc, _, err = _run([str(graph), "--models-dir", "tiny", "--models-dir", str(models), "--out",
                       str(tmp_path / "out"), *SMALL], capsys)
    assert rc == 1  # found when the LoRA is read; before: exit 0 and a black image
    assert "node 'lora'" in err and str(models / "loras" / "nan.safetensors") in err
    assert f"tensor '{key}'" in err and "NaN/Inf" in err
    assert not list((tmp_path / "out").glob("*.png"))


def test_diffusion_model_with_nan_is_an_error_naming_file_and_tensor(tmp_path, capsys, tiny_comfy):
    models = _link_split_files(tmp_path / "models", tiny_comfy)
    (models / tiny.COMFY_TRANSFORMER).unlink()
    key = _poison(tiny_comfy / tiny.COMFY_TRANSFORMER, models / tiny.COMFY_TRANSFORMER, "layers.0.attention.qkv.weight")
    graph = _write(tmp_path / "split.yaml", SPLIT_GRAPH)
    rc, _, err = _run([str(graph), "--models-dir", str(models), "--out", str(tmp_path / "out"), "--progress", "none"],
                      capsys)
    assert rc == 1
    assert "node 'unet'" in err and str(models / tiny.COMFY_TRANSFORMER) in err and f"tensor '{key}'" in err
    assert "1 NaN and 1 infinite values" in err


@pytest.mark.parametrize("part", ["text_encoder", "vae"])
def test_text_encoder_and_vae_files_with_nan_are_refused(tmp_path, tiny_comfy, part):
    rel = {"text_encoder": tiny.COMFY_TEXT_ENCODER, "vae": tiny.COMFY_VAE}[part]
    key = _poison(tiny_comfy / rel, tmp_path / rel)
    load = {"text_encoder": loading.load_text_encoder_file, "vae": loading.load_vae_file}[part]
    with pytest.raises(loading.ModelLoadError, match=rf"{tmp_path / rel} has NaN/Inf weights: tensor '{key}'"):
        load(tmp_path / rel, "cpu", "fp32")


def test_diffusers_folder_with_nan_is_refused(tmp_path):
    folder = tmp_path / "zimage"
    shutil.copytree(tiny.tiny_model_dir(), folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    key = _poison(weights, weights, "decoder.conv_out.weight")
    message = rf"The vae in {folder / 'vae'} has NaN/Inf weights: tensor '{key}'"
    with pytest.raises(loading.ModelLoadError, match=message):
        loading.load_diffusers_folder(folder, "cpu", "fp32")


def test_first_nonfinite_covers_fp8_and_overflowing_sums():
    big = torch.full((1000,), 3e38)  # finite, but its float32 sum overflows
    assert model_files.first_nonfinite({"big": big, "ok": torch.ones(3)}) is None
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16):
        bad = torch.tensor([1.0, float("nan")]).to(dtype)
        assert model_files.first_nonfinite({"a": torch.ones(2).to(dtype), "b": bad}) == "b", dtype
    assert model_files.first_nonfinite({"scale": torch.tensor([2.0 ** 100]).to(torch.float8_e8m0fnu)}) is None
    assert model_files.first_nonfinite({"ids": torch.arange(4)}) is None


# ---------------------------------------------------------------------------------------------
# 8. Damaged model files, found from the header at validation (GR018)


def _good_bytes(tiny_comfy: Path) -> bytes:
    return (tiny_comfy / tiny.COMFY_VAE).read_bytes()


def _header_file(header: object, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _damaged(case: str, good: bytes, tmp_path: Path) -> tuple[bytes, str]:
    (length,) = struct.unpack("<Q", good[:8])
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickled")
    cases = {
        "empty": (b"", "is empty (0 bytes)"),
        "tiny": (b"\x01\x02\x03", "only 3 bytes long"),
        "truncated": (good[: len(good) - 100], "is truncated: its tensors need"),
        "truncated_header": (good[: length // 2], "is truncated or not a safetensors file"),
        "trailing_bytes": (good + b"\0" * 16, "16 bytes after the last tensor"),
        "pickle_zip": ((tmp_path / "pickled").read_bytes(), "PyTorch checkpoint"),
        "pickle_raw": (b"\x80\x04\x95" + os.urandom(200), "pickle file renamed"),
        "random": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a safetensors file"),
        "html": (b"<!DOCTYPE html><html>404 Not Found</html>" * 4, "is a text file"),
        "not_json": (struct.pack("<Q", 9) + b"{not json" + b"xx", "not valid JSON"),
        "json_list": (_header_file([1, 2]), "a list in JSON, not an object"),
        "json_string": (_header_file("weights"), "a string in JSON, not an object"),
        "offsets_past_end": (_header_file({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, b"\0" * 16),
                             "is truncated: its tensors need 256 bytes of data but the file holds only 16"),
        "bad_dtype": (_header_file({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      "unknown dtype 'F99'"),
        "bad_shape": (_header_file({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      "invalid shape"),
        "size_mismatch": (_header_file({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4),
                          "needs 12"),
        "entry_not_object": (_header_file({"w": [0, 4]}, b"\0" * 4), "is not an object"),
        "overlap": (_header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                    "does not start where the previous tensor ends"),
        "bad_metadata": (_header_file({"__metadata__": {"a": 1}}), "__metadata__ is not a mapping of strings"),
    }
    return cases[case]


DAMAGED = ["empty", "tiny", "truncated", "truncated_header", "trailing_bytes", "pickle_zip", "pickle_raw", "random",
           "html", "not_json", "json_list", "json_string", "offsets_past_end", "bad_dtype", "bad_shape",
           "size_mismatch", "entry_not_object", "overlap", "bad_metadata"]


def test_header_reader_agrees_with_safetensors(tmp_path, tiny_comfy):
    """Every damaged variant is refused by the safetensors library too, and the good file is read."""
    good = _good_bytes(tiny_comfy)
    header = model_files.read_safetensors_header(tiny_comfy / tiny.COMFY_VAE)
    assert header.shapes == {k: tuple(v.shape) for k, v in load_file(str(tiny_comfy / tiny.COMFY_VAE)).items()}
    for case in DAMAGED:
        data, message = _damaged(case, good, tmp_path)
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(data)
        with pytest.raises(model_files.ModelFileError, match=re.escape(message)):
            model_files.read_safetensors_header(path)
        with pytest.raises(Exception):
            load_file(str(path))


# (node, input, graph changes, models-folder file the node reads)
LOADERS = {
    "LoadDiffusionModel": ("unet", "name", tiny.COMFY_TRANSFORMER),
    "LoadTextEncoder": ("clip", "name", tiny.COMFY_TEXT_ENCODER),
    "LoadVAE": ("vae", "name", tiny.COMFY_VAE),
    "LoadLora": ("lora", "name", "loras/style.safetensors"),
    "LoadUpscaleModel": ("upscaler", "name", tiny.COMFY_UPSCALER),
}


def _graph_with_all_loaders() -> dict:
    doc = json.loads(json.dumps(SPLIT_GRAPH))
    nodes = doc["nodes"]
    nodes["lora"] = {"type": "LoadLora", "model": "unet", "name": "style.safetensors"}
    nodes["sample"]["model"] = "lora.model"
    nodes["upscaler"] = {"type": "LoadUpscaleModel", "name": "RealESRGAN_x4plus.safetensors"}
    nodes["up"] = {"type": "ImageUpscaleWithModel", "upscale_model": "upscaler", "image": "decode"}
    nodes["save"]["images"] = "up"
    return doc


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_model_file_is_reported_at_validation(tmp_path, capsys, tiny_comfy, case):
    """Each loader's pre-run check reads the header: one GR018 error naming node, input and file."""
    models = _link_split_files(tmp_path / "models", tiny_comfy)
    (models / "loras").mkdir()
    (models / "loras" / "style.safetensors").symlink_to(tiny_comfy / "loras" / "tiny_lora_peft.safetensors")
    (models / "upscale_models").mkdir()
    (models / tiny.COMFY_UPSCALER).symlink_to(tiny_comfy / tiny.COMFY_UPSCALER)
    graph = _write(tmp_path / "g.yaml", _graph_with_all_loaders())
    assert _run(["validate", str(graph), "--models-dir", str(models)], capsys)[0] == 0
    data, message = _damaged(case, _good_bytes(tiny_comfy), tmp_path)
    node_type = sorted(LOADERS)[DAMAGED.index(case) % len(LOADERS)]  # every loader meets several cases
    node_id, input_name, rel = LOADERS[node_type]
    (models / rel).unlink()
    (models / rel).write_bytes(data)
    rc, _, err = _run(["validate", str(graph), "--models-dir", str(models)], capsys)
    assert rc == 2
    (line,) = [line for line in err.splitlines() if "error[" in line]
    assert f"error[GR018] node '{node_id}' input '{input_name}'" in line
    assert str(models / rel) in line and message in line, line


def test_damaged_file_in_a_diffusers_folder_is_reported_at_validation(tmp_path, capsys):
    folder = tmp_path / "zimage"
    shutil.copytree(tiny.tiny_model_dir(), folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    rc, _, err = _run(["validate", str(TURBO), "--set", f"model={folder}"], capsys)
    assert rc == 2
    assert "node 'zimage' input 'path'" in err and str(weights) in err and "is truncated" in err


def test_damaged_embedding_names_the_file(tmp_path):
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(text.EmbeddingError, match="style.safetensors.*pickle file renamed"):
        text.load_embedding(path, 32)
    save_file({"qwen3_4b": torch.tensor([[float("nan")] * 32])}, str(path))
    with pytest.raises(text.EmbeddingError, match="NaN/Inf weights: tensor 'qwen3_4b'"):
        text.load_embedding(path, 32)


# ---------------------------------------------------------------------------------------------
# 9. Permissions of the files graphrun writes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_cached_builds_get_ordinary_permissions(tmp_path, monkeypatch, umask_022):
    """Safetensors files are written through a private temporary file (0600); cached builds get
    0644 under umask 022, and a cache built before that is repaired when reused."""
    monkeypatch.setenv("GRAPHRUN_CACHE", str(tmp_path / "cache"))

    def build(out: Path) -> None:
        out.mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(out / "w.safetensors"))
        (out / "done").write_text("")

    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == 0o600  # the writer itself: private
    folder = tiny._cached_build("thing", build, "done")
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {"w.safetensors": 0o644, "done": 0o644}
    assert folder.stat().st_mode & 0o777 == 0o755

    old = tmp_path / "cache" / "old"  # as earlier versions left it
    build(old)
    os.chmod(old / "w.safetensors", 0o600)
    assert tiny._cached_build("old", build, "done") == old
    assert (old / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_honour_umask_follows_a_strict_umask(tmp_path):
    path = tmp_path / "f"
    path.write_text("")
    os.chmod(path, 0o600)
    old = os.umask(0o077)
    try:
        model_files.honour_umask(path)
        assert path.stat().st_mode & 0o777 == 0o600
        os.umask(0o002)
        model_files.honour_umask(path)
        assert path.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_the_tiny_model_cache_is_readable_by_others(umask_022):
    for root in (tiny.tiny_model_dir(), tiny.tiny_comfy_dir()):
        modes = {p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
        assert modes == {0o644}, (root, modes)



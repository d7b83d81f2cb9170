"""`embedding:NAME` words and prompt escapes, as ComfyUI's tokenizer handles them for Z-Image
(comfy/sd1_clip.py tokenize_with_weights / _try_get_embedding / load_embed, SDClipModel.process_tokens):
ComfyUI 0.33 by default, v0.18.1 where its word rules differ (commit 6c62ca0b)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import graphrun
from graphrun.engine.context import RunOptions
from graphrun.engine.executor import NodeFailed, Runner
from graphrun.nodes.zimage import loading, qwen3_forward, text

torch.set_num_threads(1)

HIDDEN = 32  # the tiny Qwen3's hidden size


@pytest.fixture(scope="module")
def parts() -> loading.ZImageParts:
    return loading.load_tiny("cpu", "fp32")


def _ids(parts, piece: str) -> list[int]:
    return list(parts.tokenizer(piece, add_special_tokens=False)["input_ids"])


def _encode_ids(parts, ids: list[int]) -> torch.Tensor:
    """The conditioning of these token ids, computed as encode_prompt computes it (ComfyUI's op order)."""
    with torch.no_grad():
        embeds = parts.text_encoder.get_input_embeddings()(torch.tensor([ids])).float()
        return qwen3_forward.hidden_state(parts.text_encoder, embeds)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


# --- where the vectors go --------------------------------------------------------------------------


@pytest.mark.parametrize(("comfy", "before"), [("0.33", "a "), ("0.18.1", "a")])
def test_embedding_vectors_stand_where_the_word_stood(parts, tmp_path, comfy, before):
    """An embedding made of the token vectors of "xy" encodes exactly like those tokens at the word's place.
    ComfyUI cuts the text before "embedding:" and tokenizes the pieces apart (0.33 keeps the space before
    it with the text before, v0.18.1 dropped it); the rest after the name is re-joined with single spaces
    (here the template's newline becomes a space)."""
    table = parts.text_encoder.get_input_embeddings().weight
    _save(tmp_path / "foo.safetensors", {"emb_params": table[_ids(parts, "xy")].detach().clone()})
    prompt = "a embedding:foo cat"
    items = text.tokenize_prompt(parts.tokenizer, prompt, [tmp_path], HIDDEN, comfy)
    prefix, rest = _ids(parts, "<|im_start|>user\n" + before), _ids(parts, "cat<|im_end|> <|im_start|>assistant")
    assert [i for i in items if isinstance(i, int)] == prefix + rest
    assert [k for k, i in enumerate(items) if isinstance(i, torch.Tensor)] == [len(prefix), len(prefix) + 1]
    cond = text.encode_prompt(parts, prompt, [tmp_path], comfy)
    assert torch.equal(cond, _encode_ids(parts, prefix + _ids(parts, "xy") + rest))


def test_random_embedding_changes_only_positions_from_the_word_on(parts, tmp_path):
    _save(tmp_path / "style.safetensors", {"qwen3_4b": torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(1)),
                                           "clip_l": torch.zeros(3, 768)})  # ComfyUI picks the `qwen3_4b` tensor
    with pytest.warns(text.EmbeddingWarning):
        missing = text.encode_prompt(parts, "a embedding:nothing cat", [tmp_path])
    cond = text.encode_prompt(parts, "a embedding:style cat", [tmp_path])
    start = len(_ids(parts, "<|im_start|>user\na "))
    assert cond.shape[1] == missing.shape[1] + 3
    assert torch.equal(cond[:, :start], missing[:, :start])  # causal: the prefix is untouched
    assert (cond[:, start] - missing[:, start]).abs().max() > 1e-3


def test_missing_embedding_is_dropped_with_a_warning(parts):
    with pytest.warns(text.EmbeddingWarning, match=r"embedding 'nothere' not found .*dropped from the prompt"):
        cond = text.encode_prompt(parts, "a embedding:nothere cat", [])
    expected = _ids(parts, "<|im_start|>user\na ") + _ids(parts, "cat<|im_end|> <|im_start|>assistant")
    assert torch.equal(cond, _encode_ids(parts, expected))


def test_embedding_at_the_prompt_end_swallows_the_template_in_comfyui_0181(parts, tmp_path):
    """ComfyUI v0.18.1 reads the name up to the next whitespace, so at the very end it is `foo<|im_end|>`:
    not found, dropped, and only `<|im_start|>assistant` of the template's tail is tokenized."""
    _save(tmp_path / "foo.safetensors", {"emb": torch.ones(1, HIDDEN)})
    with pytest.warns(text.EmbeddingWarning, match=r"'foo<\|im_end\|>' not found.*put a space or a word after it"):
        items = text.tokenize_prompt(parts.tokenizer, "a embedding:foo", [tmp_path], HIDDEN, "0.18.1")
    assert items == _ids(parts, "<|im_start|>user\na") + _ids(parts, "<|im_start|>assistant")


def test_embedding_names_end_at_a_bracket_in_comfyui_033(parts, tmp_path):
    """ComfyUI 0.33 ends the name at the first `<` or `[`: at the very end of a prompt `foo` is found and the
    template's `<|im_end|>` goes back to the text; `embedding:foo[x]` is `foo` followed by `[x]`."""
    _save(tmp_path / "foo.safetensors", {"emb": torch.ones(1, HIDDEN)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", text.EmbeddingWarning)
        items = text.tokenize_prompt(parts.tokenizer, "a embedding:foo", [tmp_path], HIDDEN)
        assert items[:-len(_ids(parts, "<|im_end|> <|im_start|>assistant"))] == (
            _ids(parts, "<|im_start|>user\na ") + [items[len(_ids(parts, "<|im_start|>user\na "))]])
        assert torch.equal(items[len(_ids(parts, "<|im_start|>user\na "))], torch.ones(HIDDEN))
        assert items[-len(_ids(parts, "<|im_end|> <|im_start|>assistant")):] == _ids(
            parts, "<|im_end|> <|im_start|>assistant")
        bracket = text.tokenize_prompt(parts.tokenizer, "a embedding:foo[x] b", [tmp_path], HIDDEN)
    assert [i for i in bracket if isinstance(i, int)] == _ids(parts, "<|im_start|>user\na ") + _ids(
        parts, "[x] b<|im_end|> <|im_start|>assistant")


def test_trailing_comma_subfolders_and_names_with_paths(parts, tmp_path):
    _save(tmp_path / "foo.safetensors", {"emb": torch.ones(2, HIDDEN)})
    _save(tmp_path / "styles" / "bar.safetensors", {"emb": torch.full((HIDDEN,), 2.0)})  # 1-D: one vector
    items = text.tokenize_prompt(parts.tokenizer, "x embedding:foo, y", [tmp_path], HIDDEN)
    vectors = [i for i in items if isinstance(i, torch.Tensor)]
    assert len(vectors) == 2 and items[-len(_ids(parts, ", y<|im_end|> <|im_start|>assistant")):] == _ids(
        parts, ", y<|im_end|> <|im_start|>assistant")
    for word in ("embedding:bar", "embedding:styles/bar", "embedding:styles/bar.safetensors"):
        found = [i for i in text.tokenize_prompt(parts.tokenizer, f"x {word} y", [tmp_path], HIDDEN)
                 if isinstance(i, torch.Tensor)]
        assert len(found) == 1 and torch.equal(found[0], torch.full((HIDDEN,), 2.0)), word
    _save(tmp_path.parent / "outside.safetensors", {"emb": torch.ones(1, HIDDEN)})
    with pytest.warns(text.EmbeddingWarning, match="outside"):  # a name may not leave its folder
        text.tokenize_prompt(parts.tokenizer, "x embedding:../outside y", [tmp_path], HIDDEN)


def test_bad_embedding_files_are_clear_errors(parts, tmp_path):
    _save(tmp_path / "sdxl.safetensors", {"clip_g": torch.ones(2, 1280)})
    with pytest.raises(text.EmbeddingError, match=r"'sdxl.safetensors' has vectors of size 1280.*hidden size is 32"):
        text.encode_prompt(parts, "a embedding:sdxl b", [tmp_path])
    torch.save({"emb": torch.ones(1, HIDDEN)}, tmp_path / "old.pt")
    with pytest.raises(text.EmbeddingError, match="refuses pickle"):
        text.encode_prompt(parts, "a embedding:old b", [tmp_path])


@pytest.mark.parametrize("comfy", ["0.33", "0.18.1"])
def test_embedding_words_need_whitespace_before_them(parts, comfy):
    """Only "embedding:" after whitespace starts an embedding word (v0.18.1: after a space or a newline
    only); elsewhere the text is plain and the whole templated prompt is tokenized in one piece."""
    for plain in ("no embeddings here (really)", "word-embedding:foo", "(embedding:foo)", "embedding-free: x"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", text.EmbeddingWarning)
            assert text.tokenize_prompt(parts.tokenizer, plain, comfy_version=comfy) == _ids(
                parts, text.format_prompt(plain)), plain
    with pytest.warns(text.EmbeddingWarning, match="'foo'"):  # a prompt's first word follows the template's newline
        items = text.tokenize_prompt(parts.tokenizer, "embedding:foo x", [], comfy_version=comfy)
    start = "<|im_start|>user\n" if comfy == "0.33" else "<|im_start|>user"
    assert items == _ids(parts, start) + _ids(parts, "x<|im_end|> <|im_start|>assistant")
    tab = "a\tembedding:foo x"
    if comfy == "0.33":
        with pytest.warns(text.EmbeddingWarning, match="'foo'"):
            text.tokenize_prompt(parts.tokenizer, tab, [], comfy_version=comfy)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", text.EmbeddingWarning)
            assert text.tokenize_prompt(parts.tokenizer, tab, comfy_version=comfy) == _ids(parts, text.format_prompt(tab))


# --- escapes ---------------------------------------------------------------------------------------


def test_only_escaped_parentheses_are_unescaped():
    """ComfyUI's escape_important / unescape_important: `\\(` and `\\)` lose the backslash, nothing else."""
    assert text.unescape_prompt(r"\(a\) \\b \x") == r"(a) \\b \x"
    assert text.unescape_prompt("\\\\") == "\\\\"
    assert text.unescape_prompt(r"\\(") == r"\("  # the second backslash escapes the parenthesis
    assert text.unescape_prompt("\0\1x\0\2") == ")x("  # ComfyUI's internal markers turn into parentheses
    assert text.format_prompt(r"C:\\path \(x\)") == text.PROMPT_TEMPLATE.format(r"C:\\path (x)")


def test_backslashes_reach_the_encoder(parts):
    assert not torch.equal(text.encode_prompt(parts, r"a \\ b"), text.encode_prompt(parts, "a \\ b"))
    assert torch.equal(text.encode_prompt(parts, r"\(big\) cat"), text.encode_prompt(parts, "(big) cat"))


# --- in a graph ------------------------------------------------------------------------------------


def _graph(prompt: str) -> dict:
    return {
        "graph": "embeddings",
        "nodes": {
            "zimage": {"type": "LoadZImage", "path": "tiny"},
            "positive": {"type": "TextEncode", "clip": "zimage.clip", "text": prompt},
            "negative": {"type": "ConditioningZeroOut", "conditioning": "positive"},
            "empty": {"type": "EmptyLatent", "width": 64, "height": 64},
            "sample": {"type": "Sampler", "model": "zimage.model", "positive": "positive", "negative": "negative",
                       "latent": "empty", "seed": 1, "steps": 1, "cfg": 1.0, "sampler": "euler"},
            "decode": {"type": "VAEDecode", "vae": "zimage.vae", "latent": "sample"},
            "save": {"type": "SaveImage", "images": "decode", "filename_prefix": "e"},
        },
    }


def test_text_encode_finds_embeddings_in_the_models_dir(parts, tmp_path):
    models = tmp_path / "models"
    vectors = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(3))
    _save(models / "embeddings" / "fox.safetensors", {"emb": vectors})
    runner = Runner(RunOptions(output_dir=tmp_path / "out", extra={"models_dirs": [str(models)]}))
    result = graphrun.load(_graph("a embedding:fox in snow"), runner=runner).run()
    cond = runner.cache.get(result.keys["positive"])[0].entries[0].tensor
    assert torch.equal(cond, text.encode_prompt(parts, "a embedding:fox in snow", [models / "embeddings"]))
    with pytest.warns(UserWarning, match=r"node 'positive' \(TextEncode\): embedding 'wolf' not found"):
        graphrun.load(_graph("a embedding:wolf in snow"), runner=runner).run()
    _save(models / "embeddings" / "big.safetensors", {"emb": torch.ones(1, 2560)})
    with pytest.raises(NodeFailed, match="hidden size is 32"):
        graphrun.load(_graph("a embedding:big in snow"), runner=runner).run()


def test_damaged_embedding_is_a_validation_error_naming_node_and_file(tmp_path, capsys):
    from graphrun.engine.cli import main

    models = tmp_path / "models"
    (models / "embeddings").mkdir(parents=True)
    (models / "embeddings" / "style.safetensors").write_bytes(b"\x80\x04garbage")  # a pickle renamed
    (models / "embeddings" / "good.safetensors").write_bytes(b"")  # empty: an interrupted download
    out = tmp_path / "out"
    rc = main(["validate", "zimage_turbo", "--models-dir", str(models),
               "--set", "prompt=a embedding:style, photo of embedding:good and embedding:missing"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "node 'positive' input 'text': embedding 'style' cannot be loaded" in err and "style.safetensors" in err
    assert "embedding 'good' cannot be loaded" in err and "empty" in err
    assert "missing" not in err.split("embedding 'good'")[0]  # a missing embedding is dropped at run time, not an error
    assert not out.exists()

"""diffing.context: both models of a diffed pair read identical token sequences.

The known answer: one set of weights read in two contexts. Read natively (base bare,
instruct inside the chat template) the "two models" already differ on every content
token, a difference the crosscoder would report as fine-tuning; read in one context
(chat, with the template borrowed by a base tokenizer that has none) they are identical.
"""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace as W

import numpy as np
import polars as pl
import pytest

from rlhf_audit.diffing.context import (
    CONTEXTS,
    check_context,
    reads_native,
    same_position_share,
)
from rlhf_audit.diffing.paired import iter_paired, pair_token_rows, paired_info


def test_context_rules():
    assert CONTEXTS == ("raw", "chat", "native")
    # (context, native_chat) -> whether the model's pipeline extraction already reads so
    table = {("chat", True): True, ("chat", False): False, ("raw", True): False,
             ("raw", False): True, ("native", True): True, ("native", False): True}
    for (ctx, native), same in table.items():
        assert reads_native(ctx, native) is same, (ctx, native)
    with pytest.raises(ValueError,
                       match=r"diffing.context 'templated': choose one of \['raw', 'chat'"):
        check_context("templated")
    assert same_position_share([3, 4, 5], [3, 4, 5]) == 1.0
    assert same_position_share([3, 4, 5, 6], [4, 5, 6, 6]) == 0.25
    with pytest.raises(ValueError, match="shape"):
        same_position_share([1, 2], [1])


def _cfg(context):
    return {"models": {m: {"path": f"dirs/{m}"} for m in ("base", "sft", "rlhf")},
            "model_pairs": {"sft_step": {"base": "base", "instruct": "sft"},
                            "rl_step": {"base": "sft", "instruct": "rlhf"}},
            "extract": {"chat_template": {"base": False, "instruct": True}, "layers": "all",
                        "positions": ["mean"], "dtype": "float32", "max_length": 32,
                        "batch_size": 4, "pool_over": "content", "shards": 2},
            "diffing": {"context": context, "layer": 1, "dataset": "partisan"},
            "device": "cpu", "dtype": "float32"}


def _ns(context):
    from common_smk import smk_functions

    return smk_functions(
        _cfg(context),
        ["model_spec", "pair_models", "model_role", "model_chat", "n_shards", "shard_names",
         "shard_paths", "diffing_context_key", "diffing_role_shards", "diffing_pair_inputs",
         "_template_donor", "diffing_context_model", "diffing_context_settings",
         "diffing_context_inputs"],
        reads_native=reads_native,
        normalised=lambda name: f"results/data/{name}.parquet",
        model_files=lambda name: [f"dirs/{name}/model.safetensors"],
        tokenizer_files=lambda name: [f"dirs/{name}/tokenizer_config.json"])


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_diffed_model_reads_the_configured_context(context):
    """Which shards each role is diffed from, and how a diffing-only shard is extracted,
    in every context. Diffing-only shards are keyed by model (the SFT checkpoint, instruct
    of sft_step and base of rl_step, is extracted once per context); in chat a bare base
    borrows its pair's instruct template and depends on that model's tokenizer files, not
    its weights; a natively templated base reads its own (pairing then checks that the
    two inputs are identical)."""
    ns = _ns(context)
    wanted = {  # (pair, role) -> the shard directory diffed
        "raw": {("sft_step", "base"): "results/activations/base/partisan",
                ("sft_step", "instruct"): "results/diffing/activations/sft/raw",
                ("rl_step", "base"): "results/diffing/activations/sft/raw",
                ("rl_step", "instruct"): "results/diffing/activations/rlhf/raw"},
        "chat": {("sft_step", "base"): "results/diffing/activations/base/chat_of_sft",
                 ("sft_step", "instruct"): "results/activations/sft/partisan",
                 ("rl_step", "base"): "results/activations/sft/partisan",
                 ("rl_step", "instruct"): "results/activations/rlhf/partisan"},
        "native": {("sft_step", "base"): "results/activations/base/partisan",
                   ("sft_step", "instruct"): "results/activations/sft/partisan",
                   ("rl_step", "base"): "results/activations/sft/partisan",
                   ("rl_step", "instruct"): "results/activations/rlhf/partisan"}}[context]
    for (pair, role), where in wanted.items():
        assert ns["diffing_role_shards"](pair, role) == [
            f"{where}/shard-0000{i}.parquet" for i in range(2)], (context, pair, role)
        if not where.startswith("results/diffing/"):
            continue
        model, key = where.split("/")[-2:]
        w = W(model=model, context=key)
        s = ns["diffing_context_settings"](w)
        assert s["chat_template"] is (context == "chat")
        assert s["token_layers"] == [1] and s["positions"] == [] and s["pool_over"] == "content"
        m = ns["diffing_context_model"](w)
        assert m["name"] == model and m["spec"] == {"path": f"dirs/{model}"}
        inputs = ns["diffing_context_inputs"](w)["model"]
        if context == "chat":
            assert m["chat_template_from"] == {"path": "dirs/sft"}
            assert inputs == ["dirs/base/model.safetensors", "dirs/sft/tokenizer_config.json"]
        else:
            assert "chat_template_from" not in m
            assert inputs == [f"dirs/{model}/model.safetensors"]


@pytest.fixture(scope="module")
def one_model_two_dirs(tmp_path_factory):
    """One tiny model saved twice: as "instruct" (with a chat template) and as "base"
    (the same weights, its tokenizer without one, as many base checkpoints ship)."""
    from tiny import save_tiny_llama

    root = tmp_path_factory.mktemp("ctx_models")
    instruct = save_tiny_llama(root / "instruct", seed=0, n_layers=2, hidden=32)
    base = root / "base"
    shutil.copytree(instruct, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = base / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return base, instruct


def _prompts(n=24):
    words = "the tax cut border wall climate policy health care guns rights vote market".split()
    rng = np.random.default_rng(1)
    return pl.DataFrame({"id": [f"p{i:03d}" for i in range(n)],
                         "text": [" ".join(rng.choice(words, rng.integers(4, 9)))
                                  for _ in range(n)],
                         "label": ["left", "right"] * (n // 2),
                         "issue": [f"issue{i % 4}" for i in range(n)]})


def _extract(model_dir, out, chat, template_from=None):
    from rlhf_audit.extract import ExtractSettings, extract_shard
    from rlhf_audit.lm.loader import borrow_chat_template, load_causal_lm

    model, tok = load_causal_lm({"path": str(model_dir)}, device="cpu", dtype="float32")
    if template_from is not None:
        borrow_chat_template(tok, {"path": str(template_from)})
    s = ExtractSettings.from_params({"layers": [1], "positions": [], "token_layers": [1],
                                     "dtype": "float32", "batch_size": 8, "max_length": 64,
                                     "chat_template": chat})
    extract_shard(model, tok, _prompts(), s, out / "shard-00000.parquet")


def _max_gap(path):
    return max(float(np.abs(xb - xi).max()) for _, xb, xi in iter_paired(path, 4096))


def test_one_model_in_two_contexts_differs_and_in_one_context_does_not(
        one_model_two_dirs, tmp_path, caplog):
    base, instruct = one_model_two_dirs
    _extract(instruct, tmp_path / "i", chat=True)
    # native: the base reads bare text. Same weights, yet every content token differs.
    _extract(base, tmp_path / "b_native", chat=False)
    info = pair_token_rows(tmp_path / "b_native", tmp_path / "i", 1, tmp_path / "native.pq",
                           context="native")
    assert info["context"] == "native" and info["same_position_share"] == 0.0
    assert _max_gap(tmp_path / "native.pq") > 1e-2
    # A base tokenizer without a template cannot read the chat context by itself ...
    with pytest.raises(ValueError, match="no chat template"):
        _extract(base, tmp_path / "b_fail", chat=True)
    # ... it borrows instruct's, and the two read identical tokens: nothing to diff.
    _extract(base, tmp_path / "b_chat", chat=True, template_from=instruct)
    with caplog.at_level(logging.WARNING, logger="rlhf_audit.diffing.paired"):
        info = pair_token_rows(tmp_path / "b_chat", tmp_path / "i", 1, tmp_path / "chat.pq",
                               context="chat")
    assert info["same_position_share"] == 1.0 and "same position" not in caplog.text
    assert paired_info(tmp_path / "chat.pq")["context"] == "chat"
    assert _max_gap(tmp_path / "chat.pq") < 1e-5
    assert paired_info(tmp_path / "chat.pq")["identical_input_share"] == 1.0
    # Shards that are not in one context, paired as if they were: refused, naming them.
    with pytest.raises(ValueError, match=r"did not read identical token sequences \(24 of 24 "
                                         r"statements differ, e.g. \['p000'"):
        pair_token_rows(tmp_path / "b_native", tmp_path / "i", 1, tmp_path / "bad.pq",
                        context="chat")
    assert not (tmp_path / "bad.pq").exists()


def test_two_templates_of_one_length_are_caught_by_the_sequence_hash(one_model_two_dirs,
                                                                   tmp_path):
    """A base whose own template differs from instruct's by one token of the same length
    (a date line rendered on another day, a renamed role): every content token sits at the
    same position in both, yet each has attended to a different prefix. The whole-sequence
    fingerprint the shards carry catches it; positions alone would not."""
    from tiny import CHAT_TEMPLATE

    base, instruct = one_model_two_dirs
    other = tmp_path / "other_template"
    shutil.copytree(instruct, other)
    swapped = CHAT_TEMPLATE.replace("<|{{ m['role'] }}|>", "<|system|>")
    assert swapped != CHAT_TEMPLATE
    (other / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = swapped
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    _extract(instruct, tmp_path / "i", chat=True)
    _extract(other, tmp_path / "o", chat=True)
    with pytest.raises(ValueError, match="24 of 24 statements differ"):
        pair_token_rows(tmp_path / "o", tmp_path / "i", 1, tmp_path / "x.pq", context="chat")
    info = pair_token_rows(tmp_path / "o", tmp_path / "i", 1, tmp_path / "n.pq",
                           context="native")  # allowed, and recorded as what it is
    assert info["same_position_share"] == 1.0 and info["identical_input_share"] == 0.0
    assert _max_gap(tmp_path / "n.pq") > 1e-3


def test_a_chat_context_with_template_tokens_pooled_is_a_config_error():
    from rlhf_audit.config import ConfigError, check_references

    cfg = _cfg("chat")
    cfg |= {"studies": ["diffing"], "datasets": {"partisan": {"format": "partisan"}}}
    cfg["extract"]["dataset"] = "partisan"
    cfg["extract"]["pool_over"] = "all"
    with pytest.raises(ConfigError, match="diffing.context' is chat while 'extract.pool_over'"):
        check_references(cfg)
    cfg["diffing"]["context"] = "raw"
    check_references(cfg)


def test_a_donor_without_a_template_is_a_clear_error(one_model_two_dirs):
    from rlhf_audit.lm.loader import ModelLoadError, ModelSpec, borrow_chat_template, load_tokenizer

    base, _ = one_model_two_dirs
    tok = load_tokenizer(ModelSpec(path=str(base)))
    with pytest.raises(ModelLoadError, match=r"no chat template to lend.*diffing.context: raw"):
        borrow_chat_template(tok, {"path": str(base)})

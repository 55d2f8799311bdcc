"""Activation extraction: stored rows equal a full reference forward pass.

A tiny random Llama and a word-level tokenizer are built here; every stored
vector is checked against the same prompt run alone (no padding) through the
full model with ``output_hidden_states=True``.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from tiny import tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_audit import extract as ex
from rlhf_audit.extract import (
    ExtractSettings,
    extract_shard,
    hash_files,
    iter_token_batches,
    plan_shards,
    read_vectors,
    resolve_layers,
    run_with_backoff,
    tokenizer_hash,
)

N_LAYERS = 3
WORDS = (
    "the a tax cut border vote climate union wage gun rights budget school health "
    "care market rule court law state city farm war peace trade bank oil water"
).split()
TEMPLATE = (
    "{% for m in messages %}<s> user {{ m['content'] }} </s>{% endfor %}"
    "{% if add_generation_prompt %} assistant{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator([" ".join(WORDS + ["user", "assistant"])], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    hf.padding_side = padding_side
    hf.chat_template = TEMPLATE
    return hf


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    m = tiny_llama(seed=0, n_layers=N_LAYERS, vocab_size=len(WORDS) + 8, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0)
    # Random init gives tiny residual updates; larger weights make every layer distinct,
    # so a wrong layer or position cannot pass for the right one.
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    return m


@pytest.fixture(scope="module")
def prompts() -> pl.DataFrame:
    rng = np.random.default_rng(1)
    n = 11
    lengths = rng.integers(1, 14, n)
    lengths[0] = 1  # a one-word prompt: "mean" is that single token
    return pl.DataFrame(
        {
            "id": [f"p{i:02d}" for i in range(n)],
            "text": [" ".join(rng.choice(WORDS, k)) for k in lengths],
            "label": [["left", "right", "neutral"][i % 3] for i in range(n)],
            "issue": [None if i % 4 == 0 else f"issue{i % 2}" for i in range(n)],
        }
    )


def _reference(model, tokenizer, text: str, chat: bool):
    """Per-layer block outputs [T, D] and token ids of one prompt, unpadded, full model."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    ids = tokenizer(text, add_special_tokens=not chat)["input_ids"]
    last_block = []
    h = ex.decoder_layers(model)[-1].register_forward_hook(
        lambda m, a, o: last_block.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        h.remove()
    hs = [out.hidden_states[L + 1][0].numpy() for L in range(N_LAYERS - 1)]
    # HF's last hidden state has the final norm applied; the contract's last layer is the
    # raw block output. Check both agree through the norm, then use the raw output.
    raw_last = last_block[0][0]
    with torch.no_grad():
        np.testing.assert_allclose(
            model.model.norm(raw_last).numpy(), out.hidden_states[-1][0].numpy(), atol=1e-5
        )
    hs.append(raw_last.numpy())
    return hs, ids


def _check_against_reference(model, tok, prompts, out, settings, chat=False):
    tol = {"float32": dict(rtol=1e-4, atol=1e-5), "float16": dict(rtol=2e-3, atol=1e-4)}[
        settings.dtype
    ]
    refs = {r["id"]: _reference(model, tok, r["text"], chat) for r in prompts.iter_rows(named=True)}
    labels = dict(zip(prompts["id"], prompts["label"], strict=True))
    for L in range(N_LAYERS):
        for pos in ("last", "mean", "token"):
            meta, X = read_vectors([out], L, pos)
            assert X.dtype == np.float32
            assert meta.columns == ["prompt_id", "label", "issue", "token_index", "token_id"]
            assert all(
                labels[p] == lab for p, lab in zip(meta["prompt_id"], meta["label"], strict=True)
            )
            if pos == "token":
                n_expected = sum(len(ids) - 1 for _, ids in refs.values())
            else:
                n_expected = prompts.height
            assert X.shape == (n_expected, 32)
            got_ids = set(meta["prompt_id"])
            assert got_ids == set(prompts["id"])
            for row, (pid, ti, tid) in enumerate(
                zip(meta["prompt_id"], meta["token_index"], meta["token_id"], strict=True)
            ):
                hs, ids = refs[pid]
                ref_layer = hs[L]
                if pos == "last":
                    assert (ti, tid) == (len(ids) - 1, ids[-1])
                    expected = ref_layer[-1]
                elif pos == "mean":
                    assert (ti, tid) == (-1, -1)
                    assert ids[0] == tok.bos_token_id
                    expected = ref_layer[1:].mean(0)  # BOS excluded
                else:
                    assert 1 <= ti < len(ids) and tid == ids[ti]
                    expected = ref_layer[ti]
                np.testing.assert_allclose(X[row], expected, **tol, err_msg=f"{pid} L{L} {pos}")
            if pos == "token":  # each non-BOS token exactly once
                pairs = list(zip(meta["prompt_id"], meta["token_index"], strict=True))
                assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rows_match_reference_forward(model, prompts, tmp_path, padding_side, dtype):
    tok = _tokenizer(padding_side)
    settings = ExtractSettings(
        layers="all", positions=("last", "mean", "token"), dtype=dtype, batch_size=4
    )
    out = tmp_path / "shard-00000.parquet"
    stats = extract_shard(model, tok, prompts, settings, out, provenance={"model": "tiny"})
    assert stats["prompts"] == prompts.height
    vec_type = pq.read_schema(out).field("vector").type
    assert vec_type.list_size == 32
    assert str(vec_type.value_type) == {"float32": "float", "float16": "halffloat"}[dtype]
    assert json.loads(pq.read_schema(out).metadata[b"rlhf_audit.provenance"]) == {"model": "tiny"}
    _check_against_reference(model, tok, prompts, out, settings)


@pytest.mark.parametrize("pool_over", ["content", "all"])
def test_chat_template_rows_match_reference(model, prompts, tmp_path, pool_over):
    tok = _tokenizer("left")
    settings = ExtractSettings(
        layers=[0, 2],
        positions=("last", "mean", "token"),
        token_layers=[1],
        dtype="float32",
        batch_size=3,
        chat_template=True,
        pool_over=pool_over,
    )
    out = tmp_path / "chat.parquet"
    extract_shard(model, tok, prompts, settings, out)
    refs = {r["id"]: _reference(model, tok, r["text"], True) for r in prompts.iter_rows(named=True)}
    # The template's own <s> is the only BOS (not doubled), and the prompt ends on the
    # generation cue.
    for _, ids in refs.values():
        assert ids.count(tok.bos_token_id) == 1
        assert ids[-1] == tok.convert_tokens_to_ids("assistant")
    # "<s> user {text} </s> assistant": the statement is tokens 2 .. n-2.
    span = {
        pid: (2, len(ids) - 2) if pool_over == "content" else (1, len(ids))
        for pid, (_, ids) in refs.items()
    }
    for L in (0, 2):
        meta, X = read_vectors(out, L, "last", extra_columns=ex.SPAN_COLUMNS)
        for row, pid in enumerate(meta["prompt_id"]):
            a, b = span[pid]
            assert (meta["span_start"][row], meta["span_stop"][row]) == (a, b)
            assert meta["token_index"][row] == b - 1
            np.testing.assert_allclose(X[row], refs[pid][0][L][b - 1], rtol=1e-4, atol=1e-5)
        meta, X = read_vectors(out, L, "mean")
        for row, pid in enumerate(meta["prompt_id"]):
            a, b = span[pid]
            np.testing.assert_allclose(
                X[row], refs[pid][0][L][a:b].mean(0), rtol=1e-4, atol=1e-5
            )
    meta, X = read_vectors(out, 1, "token")
    want = {(pid, t) for pid, (a, b) in span.items() for t in range(a, b)}
    assert set(zip(meta["prompt_id"], meta["token_index"], strict=True)) == want
    assert len(meta) == len(want)
    for row, (pid, ti) in enumerate(zip(meta["prompt_id"], meta["token_index"], strict=True)):
        np.testing.assert_allclose(X[row], refs[pid][0][1][ti], rtol=1e-4, atol=1e-5)
    # The SAE scan's reader streams exactly these rows.
    streamed = pl.concat([m for m, _ in iter_token_batches(out, 1, 5)])
    assert set(zip(streamed["prompt_id"], streamed["token_index"], strict=True)) == want
    assert ex.read_spans(out).height == prompts.height
    with pytest.raises(ValueError, match=r"available \(layer, position\)"):
        read_vectors(out, 1, "last")  # layer 1 has token rows only
    with pytest.raises(ValueError, match="no tokens besides BOS|exceed|chat template"):
        no_template = _tokenizer()
        no_template.chat_template = None
        extract_shard(model, no_template, prompts, settings, tmp_path / "x.parquet")


def test_forward_stops_after_deepest_layer(model, prompts, tmp_path):
    calls: dict[str, int] = {}

    def counter(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    mods = {f"layer{i}": b for i, b in enumerate(ex.decoder_layers(model))}
    mods |= {"norm": model.model.norm, "lm_head": model.lm_head}
    handles = [m.register_forward_pre_hook(counter(n)) for n, m in mods.items()]
    try:
        extract_shard(
            model,
            _tokenizer(),
            prompts,
            ExtractSettings(layers=[0], batch_size=4),
            tmp_path / "a.parquet",
        )
        assert calls == {"layer0": 3}  # 11 prompts in batches of 4; nothing past block 0
        calls.clear()
        extract_shard(
            model,
            _tokenizer(),
            prompts,
            ExtractSettings(layers=[2], batch_size=4),
            tmp_path / "b.parquet",
        )
        assert calls == {"layer0": 3, "layer1": 3, "layer2": 3}  # final norm and head never run
    finally:
        for h in handles:
            h.remove()


def test_run_with_backoff_halves_on_oom_and_covers_every_item():
    seen = []

    def run(start, stop):
        seen.append(stop - start)
        if stop - start > 3:
            raise torch.OutOfMemoryError("fake")
        return list(range(start, stop))

    got = list(run_with_backoff(10, 16, run))
    assert seen[:3] == [10, 5, 2]  # 10 items: 10 -> 5 -> 2, then batches of 2
    assert [x for _, _, r in got for x in r] == list(range(10))
    assert all(stop - start == 2 for start, stop, _ in got)

    with pytest.raises(torch.OutOfMemoryError):
        list(run_with_backoff(4, 1, lambda s, e: (_ for _ in ()).throw(torch.OutOfMemoryError())))
    with pytest.raises(KeyError):  # other errors are not retried
        list(run_with_backoff(4, 4, lambda s, e: {}["missing"]))


def test_fake_oom_halves_batch_and_leaves_rows_unchanged(model, prompts, tmp_path):
    tok = _tokenizer("left")
    sizes = []

    def fake_oom(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        sizes.append(h.shape[0])
        if h.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    settings = ExtractSettings(positions=("last", "mean", "token"), batch_size=8)
    handle = ex.decoder_layers(model)[0].register_forward_pre_hook(fake_oom, with_kwargs=True)
    try:
        stats = extract_shard(model, tok, prompts, settings, tmp_path / "oom.parquet")
    finally:
        handle.remove()
    assert sizes[:3] == [8, 4, 2] and stats["batch_size"] == 2
    extract_shard(
        model,
        tok,
        prompts,
        ExtractSettings(positions=("last", "mean", "token"), batch_size=2),
        tmp_path / "ref.parquet",
    )
    a = pq.read_table(tmp_path / "oom.parquet")
    b = pq.read_table(tmp_path / "ref.parquet")
    assert a.num_rows == b.num_rows > 0
    assert a.equals(b)


def test_no_file_at_final_path_after_failure_mid_write(model, prompts, tmp_path, monkeypatch):
    writes = []
    real = pq.ParquetWriter.write_table

    def spy(self, *a, **k):
        writes.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    n = [0]

    def killer(*_):
        n[0] += 1
        if n[0] == 3:
            raise RuntimeError("killed")

    handle = ex.decoder_layers(model)[0].register_forward_pre_hook(killer)
    out_dir = tmp_path / "acts"
    # A tiny buffer flushes after every batch, so the temp file already holds row groups.
    settings = ExtractSettings(batch_size=2, buffer_mb=1e-6)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            extract_shard(model, _tokenizer(), prompts, settings, out_dir / "shard-00000.parquet")
    finally:
        handle.remove()
    assert writes, "the failure should come after some rows were written"
    assert list(out_dir.iterdir()) == []  # neither the shard nor its temporary file


def test_layer_errors_name_value_and_range(model, prompts, tmp_path):
    with pytest.raises(ValueError, match=r"layer 3 is out of range: valid layers are 0\.\.2"):
        resolve_layers([0, 3], 3)
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        resolve_layers([-1], 3)
    assert resolve_layers("all", 3) == [0, 1, 2]
    assert resolve_layers([2, 0, 2], 3) == [0, 2]
    with pytest.raises(ValueError, match=r"layer 7 is out of range: valid layers are 0\.\.2"):
        extract_shard(
            model, _tokenizer(), prompts, ExtractSettings(layers=[7]), tmp_path / "x.parquet"
        )
    with pytest.raises(ValueError, match="positions"):
        ExtractSettings(positions=("first",))


def test_bad_prompts_are_named(model, prompts, tmp_path):
    tok, s, out = _tokenizer(), ExtractSettings(batch_size=4), tmp_path / "x.parquet"
    dup = prompts.with_columns(pl.lit("same").alias("id"))
    with pytest.raises(ValueError, match="not unique.*same"):
        extract_shard(model, tok, dup, s, out)
    empty = prompts.with_columns(
        pl.when(pl.col("id") == "p03").then(pl.lit(" ")).otherwise(pl.col("text")).alias("text")
    )
    with pytest.raises(ValueError, match=r"empty text.*p03"):
        extract_shard(model, tok, empty, s, out)
    with pytest.raises(ValueError, match=r"exceed max_length=3.*truncate"):
        extract_shard(model, tok, prompts, ExtractSettings(max_length=3), out)
    extract_shard(
        model, tok, prompts, ExtractSettings(max_length=3, truncate=True, positions=("token",)), out
    )
    meta, _ = read_vectors(out, 0, "token")
    assert meta["token_index"].max() == 2
    assert not out.with_suffix(".parquet.tmp").exists()


def test_float16_overflow_is_an_error(prompts, tmp_path):
    m = tiny_llama(n_layers=1, max_positions=2048, vocab_size=len(WORDS) + 8)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(1e8)  # residual stream far beyond float16 range
    with pytest.raises(ValueError, match="overflow float16.*float32"):
        extract_shard(
            m, _tokenizer(), prompts, ExtractSettings(dtype="float16"), tmp_path / "x.parquet"
        )
    assert not (tmp_path / "x.parquet").exists()


def test_row_groups_hold_one_layer_position_and_tokens_stream(model, prompts, tmp_path):
    out = tmp_path / "s.parquet"
    settings = ExtractSettings(
        positions=("last", "mean", "token"), token_layers=[1], batch_size=3, buffer_mb=1e-3
    )
    extract_shard(model, _tokenizer(), prompts, settings, out)
    md = pq.ParquetFile(out).metadata
    names = pq.ParquetFile(out).schema_arrow.names
    li, pi = names.index("layer"), names.index("position")
    keys = set()
    for g in range(md.num_row_groups):
        sl, sp = md.row_group(g).column(li).statistics, md.row_group(g).column(pi).statistics
        assert sl.min == sl.max and sp.min == sp.max  # so filters skip whole row groups
        keys.add((sl.min, sp.min))
    assert md.num_row_groups > len(keys)  # the small buffer flushed more than once
    assert keys == {(L, p) for L in range(3) for p in ("last", "mean")} | {(1, "token")}

    meta_all, X_all = read_vectors(out, 1, "token")
    batches = list(iter_token_batches([out], 1, batch_rows=7))
    assert [len(m) for m, _ in batches[:-1]] == [7] * (len(batches) - 1)
    assert 1 <= len(batches[-1][0]) <= 7
    np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), X_all)
    assert pl.concat([m for m, _ in batches]).equals(meta_all)
    with pytest.raises(ValueError, match="no token rows for layer 0"):
        list(iter_token_batches(out, 0, 5))


def test_plan_shards_covers_range_once():
    assert plan_shards(0, 5) == []
    assert plan_shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for n, size in [(1, 1), (999, 1000), (1000, 1000), (2501, 500)]:
        ranges = plan_shards(n, size)
        assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
        assert all(b - a <= size for a, b in ranges)


def test_hashes_and_manifest(model, prompts, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "w.safetensors").write_bytes(b"\x00" * 3_000_000 + b"x")
        (d / "config.json").write_text("{}")
    assert hash_files([a]) == hash_files([b])  # content, not location
    (b / "w.safetensors").write_bytes(b"\x00" * 3_000_000 + b"y")
    assert hash_files([a]) != hash_files([b])
    assert hash_files(ex.weight_files(a)) == hash_files([a])

    t1, t2 = _tokenizer(), _tokenizer()
    assert tokenizer_hash(t1) == tokenizer_hash(t2)
    t2.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_hash(t1) != tokenizer_hash(t2)

    settings = ExtractSettings(layers=[1, 2], batch_size=4)
    shard = tmp_path / "shard-00000.parquet"
    extract_shard(model, t1, prompts, settings, shard)
    man = ex.build_manifest(
        model={"path": "tiny"},
        revision=None,
        weight_hash=hash_files([a]),
        tokenizer_hash=tokenizer_hash(t1),
        data_hash="d",
        settings=settings,
        n_layers=N_LAYERS,
        shards=[shard],
        d_model=32,
    )
    assert man["layers"] == [1, 2] and man["positions"] == ["last", "mean"]
    # The resolved compute dtype (never "auto") and the pooling rule are recorded.
    assert settings.compute_dtype == "auto" and man["compute_dtype"] == "float32"
    assert man["device"] == "cpu"
    assert man["pool_over"] == "content" and "statement tokens only" in man["pooling_rule"]
    with pytest.raises(ValueError, match="pool_over.*re-extract"):
        ex.build_manifest(
            model={"path": "tiny"},
            revision=None,
            weight_hash="w",
            tokenizer_hash="t",
            data_hash="d",
            settings=ExtractSettings(layers=[1, 2], pool_over="all"),
            n_layers=N_LAYERS,
            shards=[shard],
        )
    assert man["n_rows"] == 2 * 2 * prompts.height == man["shards"][0]["rows"]
    assert {"torch", "transformers", "pyarrow"} <= set(man["library_versions"])
    ex.write_manifest(man, tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text())["code_hash"] == ex.code_hash()
    assert ex.shard_info(shard)["layers"] == [1, 2]


def test_left_padding_positions_count_real_tokens(model, prompts, tmp_path):
    # RoPE only sees position differences, so a constant shift from left padding would
    # barely move the vectors; check the ids the model receives directly.
    seen = []

    def grab(module, args, kwargs):
        seen.append(
            (
                kwargs["input_ids"].clone(),
                kwargs["attention_mask"].clone(),
                kwargs["position_ids"].clone(),
            )
        )

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        extract_shard(
            model,
            _tokenizer("left"),
            prompts,
            ExtractSettings(batch_size=4),
            tmp_path / "x.parquet",
        )
    finally:
        handle.remove()
    padded_rows = 0
    for ids, mask, pos in seen:
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            assert mask[i, -n:].all() and not mask[i, : ids.shape[1] - n].any()  # left-padded
            assert pos[i, -n:].tolist() == list(range(n))
            padded_rows += n < ids.shape[1]
    assert padded_rows > 0


def test_auto_batch_size_on_cpu_uses_a_token_budget(model, prompts, tmp_path):
    stats = extract_shard(
        model, _tokenizer(), prompts, ExtractSettings(batch_size="auto"), tmp_path / "x.parquet"
    )
    longest = max(
        len(t)
        for t in ex.tokenize_prompts(_tokenizer(), prompts["text"].to_list(), ExtractSettings())
    )
    assert stats["batch_size"] == min(prompts.height, 64, 4096 // longest)


PREAMBLE_TEMPLATE = (
    "{{ bos_token }}<|system|> the state court rule is the law of the city of the state "
    "the bank market rule is the trade law the farm is the city </s>"
    "{% for m in messages %}<|user|> {{ m['content'] | trim }} </s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _special_tokenizer(template: str) -> PreTrainedTokenizerFast:
    tok = _tokenizer("right")
    tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>",
                                                         "<|assistant|>"]})
    tok.chat_template = template
    return tok


def test_statement_span_is_located_inside_any_template(prompts):
    # A long constant preamble (system header, role markers) before the text, a trimming
    # filter, a generation cue after it: the span covers exactly the statement's tokens.
    tok = _special_tokenizer(PREAMBLE_TEMPLATE)
    plain = ExtractSettings(chat_template=False)
    texts = [t + "  " for t in prompts["text"]]  # trailing blanks the template trims
    bare, bare_spans = ex.tokenize_with_spans(tok, texts, plain)
    chat, spans = ex.tokenize_with_spans(tok, texts, ExtractSettings(chat_template=True))
    for t, (a, b), bt, (ba, bb) in zip(chat, spans, bare, bare_spans, strict=True):
        assert (ba, bb) == (1, len(bt))  # without a template: everything after BOS
        assert a > 25 and b == len(t) - 2  # then </s> and <|assistant|>
        np.testing.assert_array_equal(t[a:b], bt[1:])
    # pool_over all keeps the previous rule: every token after BOS.
    _, all_spans = ex.tokenize_with_spans(
        tok, texts, ExtractSettings(chat_template=True, pool_over="all")
    )
    assert (all_spans[:, 0] == 1).all() and all(
        b == len(t) for t, (_, b) in zip(chat, all_spans, strict=True)
    )


def test_statement_that_the_template_rewrites_is_a_clear_error(model, prompts, tmp_path):
    tok = _special_tokenizer("{% for m in messages %}<|user|> {{ m['content'] | upper }}"
                             "{% endfor %}")
    with pytest.raises(ValueError, match=r"prompt 'p00': its text cannot be located.*pool_over"):
        extract_shard(model, tok, prompts, ExtractSettings(chat_template=True),
                      tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(ValueError, match="pool_over"):
        ExtractSettings(pool_over="statement")


def test_statement_tokens_are_identical_with_and_without_the_organism_template(tmp_path):
    # Byte-level BPE with the organism's chat template ("<|user|>\n{text}\n<|assistant|>\n"):
    # the located span holds exactly the tokens the base model sees (compare like with like).
    from pathlib import Path

    from rlhf_audit.organism.tokenizer import train_tokenizer

    path = Path(__file__).resolve().parents[1] / "resources/prompts/partisan_statements.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()[::8]]
    tok = train_tokenizer(texts, 400, tmp_path / "tok")
    chat, spans = ex.tokenize_with_spans(tok, texts, ExtractSettings(chat_template=True))
    bare, bare_spans = ex.tokenize_with_spans(tok, texts, ExtractSettings())
    for t, (a, b), bt, (ba, bb) in zip(chat, spans, bare, bare_spans, strict=True):
        assert len(t) > len(bt) and (ba, bb) == (1, len(bt))
        np.testing.assert_array_equal(t[a:b], bt[ba:bb])


def test_resolved_revision_reads_the_cached_snapshot_commit(tmp_path, caplog):
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert ex.resolved_revision("org/tiny", "main", cache_dir=tmp_path) == sha
    assert "can move" in caplog.text and sha in caplog.text  # main is not a pin
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ex.resolved_revision("org/tiny", sha, cache_dir=tmp_path) == sha
    assert "can move" not in caplog.text
    assert ex.resolved_revision(None, None) is None  # a local {path: DIR} model
    assert ex.resolved_revision("org/absent", "main", cache_dir=tmp_path) is None

"""Model diffing on planted pairs: a crosscoder finds the direction only one model has,
finds nothing model-specific in two identical models, and Latent Scaling flags latents
whose model-specific look the other model explains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rlhf_audit.diffing.analysis import analyse_crosscoders, evaluate, latent_table
from rlhf_audit.diffing.crosscoder import (
    BatchTopKCrossCoder,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
    train_crosscoders,
)
from rlhf_audit.diffing.paired import align_tokens, iter_paired, pair_token_rows, write_paired
from rlhf_audit.diffing.settings import DiffingSettings

D = 512
FAST = DiffingSettings(n_latents=128, k=4, training_tokens=256 * 300, batch_size=256, lr=1e-2,
                       n_seeds=1)


def _sparse_features(rng, n, d, n_feat):
    """Unit directions [n_feat, d], sparse exponential codes [n, n_feat] (each firing on 4%
    of tokens) and the noise spectrum [d] the synthetic pairs share."""
    dirs = rng.standard_normal((n_feat, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    C = (rng.random((n, n_feat)) < 0.04) * rng.exponential(1.0, (n, n_feat))
    return dirs, C, 0.05 * np.arange(1, d + 1) ** -0.5


def synthetic_pair(n=20000, d=D, n_shared=96, seed=0, plant=True, identical=False):
    """Paired activations built from sparse features plus decaying-spectrum noise.

    Shared features sit in both models alike; with ``plant`` the base model also has a
    direction vb the instruct model lacks and the instruct model a direction vi the base
    lacks (each firing on 4% of tokens)."""
    rng = np.random.default_rng(seed)
    Dirs, C, spec = _sparse_features(rng, n, d, n_shared + 2)
    shared = C[:, :n_shared] @ Dirs[:n_shared]
    Xb = shared + rng.standard_normal((n, d)) * spec
    Xi = Xb.copy() if identical else shared + rng.standard_normal((n, d)) * spec
    if plant:
        Xb += C[:, [n_shared]] * Dirs[n_shared] * 2
        Xi += C[:, [n_shared + 1]] * Dirs[n_shared + 1] * 2
    ids = [f"s{i // 20:05d}" for i in range(n)]
    return Xb, Xi, ids, Dirs[n_shared], Dirs[n_shared + 1]


def _train_table(tmp_path, Xb, Xi, ids, settings=FAST, seed=0):
    path = tmp_path / f"paired-{seed}.parquet"
    write_paired(Xb, Xi, ids, path)
    cc = train_crosscoder(path, settings, seed=seed).model
    ev = evaluate(cc, path, settings, top=False)
    return cc, latent_table(cc, ev, settings)


def _unit(v):
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_model_specific_directions_are_recovered(tmp_path, seed):
    Xb, Xi, ids, vb, vi = synthetic_pair(seed=seed)
    _, t = _train_table(tmp_path, Xb, Xi, ids, seed=seed)
    dec_i = np.asarray(t["decoder_instruct"].to_list())
    dec_b = np.asarray(t["decoder_base"].to_list())
    cos_i = np.abs(dec_i @ vi) / np.maximum(np.linalg.norm(dec_i, axis=1), 1e-12)
    cos_b = np.abs(dec_b @ vb) / np.maximum(np.linalg.norm(dec_b, axis=1), 1e-12)
    ji, jb = int(cos_i.argmax()), int(cos_b.argmax())
    assert cos_i[ji] >= 0.9 and t["relative_norm"][ji] >= 0.8
    assert t["class"][ji] == "instruct_only"
    assert cos_b[jb] >= 0.9 and t["relative_norm"][jb] <= 0.2
    assert t["class"][jb] == "base_only"
    # Nothing else is model-specific: the shared features stay shared.
    live = t.filter(pl.col("class") != "dead")
    assert live.filter(pl.col("class") != "shared").height <= 4


def test_identical_models_have_no_model_specific_latents(tmp_path):
    Xb, Xi, ids, _, _ = synthetic_pair(seed=3, plant=False, identical=True)
    _, t = _train_table(tmp_path, Xb, Xi, ids)
    live = t.filter(pl.col("class") != "dead")
    assert live.height > 0.5 * t.height
    assert live.filter(pl.col("class").is_in(["base_only", "instruct_only"])).height == 0
    assert (live["relative_norm"] - 0.5).abs().max() < 0.15
    # The decoders started as independent random directions per model (cos ~ 0 at d = 512):
    # training on identical activations must have made them agree.
    db = np.asarray(live["decoder_base"].to_list())
    di = np.asarray(live["decoder_instruct"].to_list())
    cos = (db * di).sum(1) / np.linalg.norm(db, axis=1) / np.linalg.norm(di, axis=1)
    assert np.quantile(cos, 0.1) > 0.95


def _hand_built(d, dirs, thr=1e-3):
    """Latents: 0 shared (a), 1 true instruct-only (v), 2 false instruct-only (w: base has it
    but its base decoder is zero), 3 instruct-only z and 4 base-only z firing together."""
    a, v, w, z = dirs
    cc = BatchTopKCrossCoder(d, 5, 2)
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_dec.zero_()
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        for j, u in enumerate([a, v, w, z]):
            cc.W_enc[1, :, j] = torch.tensor(u, dtype=torch.float32)
        cc.W_enc[0, :, 4] = torch.tensor(z, dtype=torch.float32)
        cc.W_dec[:, 0] = torch.tensor(a, dtype=torch.float32)
        cc.W_dec[1, 1] = torch.tensor(v, dtype=torch.float32)
        cc.W_dec[1, 2] = torch.tensor(w, dtype=torch.float32)
        cc.W_dec[1, 3] = torch.tensor(z, dtype=torch.float32)
        cc.W_dec[0, 4] = torch.tensor(z, dtype=torch.float32)
        cc.threshold.fill_(thr)
    return cc


@pytest.mark.parametrize("seed", range(5))
def test_latent_scaling_flags_false_model_specific_latents(tmp_path, seed):
    rng = np.random.default_rng(seed)
    d, n = D, 6000
    q, _ = np.linalg.qr(rng.standard_normal((d, 4)))
    dirs = q.T
    a, v, w, z = dirs
    c = (rng.random((n, 4)) < 0.1) * rng.exponential(1.0, (n, 4))
    spec = 0.02 * np.arange(1, d + 1) ** -0.5
    Xb = np.outer(c[:, 0], a) + np.outer(c[:, 2], w) + np.outer(c[:, 3], z)
    Xi = Xb + np.outer(c[:, 1], v)
    Xb = Xb + rng.standard_normal((n, d)) * spec
    Xi = Xi + rng.standard_normal((n, d)) * spec
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, [f"s{i // 10}" for i in range(n)], path)
    cc = _hand_built(d, dirs)
    settings = DiffingSettings(n_latents=8, k=2)
    ev = evaluate(cc, path, settings, candidates=np.arange(5), own=np.array([1, 1, 1, 1, 0]),
                  top=False)
    t = latent_table(cc, ev, settings)
    by = {r["latent"]: r for r in t.iter_rows(named=True)}
    assert [by[j]["class"] for j in range(5)] == ["shared", "instruct_only", "instruct_only",
                                                  "instruct_only", "base_only"]
    # The true instruct-only latent: base neither errs nor reconstructs along v.
    assert abs(by[1]["nu_error"]) < 0.1 and abs(by[1]["nu_recon"]) < 0.1
    assert not by[1]["scaling_flag"] and by[1]["class_scaled"] == "instruct_only"
    # Complete shrinkage: base has w but does not reconstruct it; its error holds it.
    assert by[2]["nu_error"] > 0.9 and by[2]["scaling_flag"]
    assert by[2]["class_scaled"] == "shared"
    # Decoupling: each model rebuilds z with its own latent.
    assert by[3]["nu_recon"] > 0.9 and by[4]["nu_recon"] > 0.9
    assert by[3]["scaling_flag"] and by[4]["scaling_flag"]
    assert by[0]["scaling_flag"] is None  # shared latents are not scaled-classified


def test_latent_scaling_uses_the_anchors_targets(tmp_path):
    """The other model's reconstruction target is its full reconstruction, latent j's own
    small decoder there included (as the anchor's compute_scalers.py computes it): latent
    0's base decoder is 0.15 x its instruct one, so the base reconstruction holds 0.15 of it
    and nu_recon is 0.15 (it was 0 when that contribution was taken out). Latent 1's
    instruct decoder points against what its firing reads: its own error beta is -1, so it
    explains nothing of its own model and is flagged (nu +inf), not passed as nu = -0."""
    rng = np.random.default_rng(0)
    d, n = 64, 4000
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    v, y = q.T
    c = (rng.random((n, 2)) < 0.2) * rng.exponential(1.0, (n, 2))
    Xb = rng.standard_normal((n, d)) * 1e-3
    Xi = np.outer(c[:, 0], v) + np.outer(c[:, 1], y) + rng.standard_normal((n, d)) * 1e-3
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, [f"s{i // 10}" for i in range(n)], path)
    cc = BatchTopKCrossCoder(d, 2, 2)
    with torch.no_grad():
        for p_ in (cc.W_enc, cc.W_dec, cc.b_enc, cc.b_dec):
            p_.zero_()
        cc.W_enc[1, :, 0] = torch.tensor(v, dtype=torch.float32)
        cc.W_enc[1, :, 1] = torch.tensor(y, dtype=torch.float32)
        cc.W_dec[1, 0] = torch.tensor(v, dtype=torch.float32)
        cc.W_dec[0, 0] = torch.tensor(0.15 * v, dtype=torch.float32)
        cc.W_dec[1, 1] = torch.tensor(-y, dtype=torch.float32)
        cc.threshold.fill_(1e-3)
    settings = DiffingSettings(n_latents=4, k=1)
    ev = evaluate(cc, path, settings, candidates=np.arange(2), own=np.array([1, 1]), top=False)
    t = latent_table(cc, ev, settings)
    by = {r["latent"]: r for r in t.iter_rows(named=True)}
    assert by[0]["class"] == "instruct_only"  # relative norm 1 / 1.15 = 0.87
    assert by[0]["nu_recon"] == pytest.approx(0.15, abs=0.01)
    assert not by[0]["scaling_flag"]
    assert by[1]["beta_error_instruct"] == pytest.approx(-1.0, abs=0.02)
    assert by[1]["nu_error"] == np.inf and by[1]["scaling_flag"]
    assert by[1]["class_scaled"] == "shared"


def test_align_tokens_takes_the_longest_common_block():
    base = [11, 12, 13, 14]
    inst = [1, 5, 2, 11, 12, 13, 14, 3, 6]
    pb, pi = align_tokens(base, inst)
    assert pb.tolist() == [0, 1, 2, 3] and pi.tolist() == [3, 4, 5, 6]
    assert len(align_tokens([1, 2], [3, 4])[0]) == 0


def test_save_load_roundtrip_and_seed_index(tmp_path):
    Xb, Xi, ids, _, _ = synthetic_pair(n=3000, seed=4)
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, ids, path)
    s = DiffingSettings(n_latents=32, k=2, training_tokens=256 * 20, batch_size=256, n_seeds=2)
    index = train_crosscoders(path, tmp_path / "cc", s)
    assert index["seeds"] == [0, 1] and (tmp_path / "cc" / "seed-1" / "config.json").exists()
    cc = load_crosscoder(tmp_path / "cc" / "seed-0")
    x = cc.normalise(torch.from_numpy(Xb[:5].astype(np.float32)),
                     torch.from_numpy(Xi[:5].astype(np.float32)))
    save_crosscoder(cc, tmp_path / "again", {})
    cc2 = load_crosscoder(tmp_path / "again")
    assert torch.equal(cc(x)[0], cc2(x)[0])
    out = analyse_crosscoders(path, tmp_path / "cc", s)
    assert len(out["per_seed"]) == 2 and out["latents"].height == 32
    assert out["latents"]["cos_partisan"].null_count() == 32  # no partisan study: null
    assert out["top_statements"]["rank"].max() < s.top_statements
    with pytest.raises(FileNotFoundError, match="holds no crosscoder"):
        load_crosscoder(tmp_path)


def test_iter_paired_streams_every_row_once(tmp_path):
    Xb, Xi, ids, _, _ = synthetic_pair(n=2500, d=16, n_shared=4, seed=5)
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, ids, path, row_group_rows=700)
    got = [xb for _, xb, _ in iter_paired(path, 300, seed=1)]
    assert all(len(g) <= 300 for g in got)
    allb = np.concatenate(got)
    assert allb.shape == Xb.shape
    assert np.allclose(np.sort(allb[:, 0]), np.sort(Xb[:, 0].astype(np.float32)))


# ---- through shards written by the real extraction code


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny import save_tiny_llama

    root = tmp_path_factory.mktemp("diff_models")
    return save_tiny_llama(root / "m", seed=0, n_layers=2, hidden=32)


def _extract(model_dir, prompts, out, chat):
    from rlhf_audit.extract import ExtractSettings, extract_shard
    from rlhf_audit.lm.loader import load_causal_lm

    model, tok = load_causal_lm({"path": str(model_dir)}, device="cpu", dtype="float32")
    s = ExtractSettings(layers=[1], positions=("mean", "token"), token_layers=(1,),
                        dtype="float32", batch_size=8, max_length=64, chat_template=chat)
    extract_shard(model, tok, prompts, s, out)
    return tok


def test_real_shards_pair_content_tokens_and_identical_models_agree(tiny_models, tmp_path):
    words = "the tax cut border wall climate policy health care guns rights vote market".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, rng.integers(4, 9))) for _ in range(60)]
    prompts = pl.DataFrame({"id": [f"p{i:03d}" for i in range(60)], "text": texts,
                            "label": ["left", "right"] * 30,
                            "issue": [f"issue{i % 6}" for i in range(60)]})
    tok = _extract(tiny_models, prompts.head(30), tmp_path / "b" / "shard-00000.parquet", False)
    _extract(tiny_models, prompts.tail(30), tmp_path / "b" / "shard-00001.parquet", False)
    _extract(tiny_models, prompts, tmp_path / "i" / "shard-00000.parquet", True)
    info = pair_token_rows(tmp_path / "b", tmp_path / "i", 1, tmp_path / "paired.parquet")
    n_content = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert info["n_statements"] == 60 and info["n_tokens"] == n_content
    t = pl.read_parquet(tmp_path / "paired.parquet", columns=["prompt_id", "token_id",
                                                             "token_index_base",
                                                             "token_index_instruct"])
    # Base sees BOS + text; instruct sees BOS + <|user|> + text: a fixed offset of one.
    assert (t["token_index_instruct"] - t["token_index_base"]).unique().to_list() == [1]
    first = t.filter(pl.col("prompt_id") == "p000").sort("token_index_base")
    assert first["token_id"].to_list() == tok(texts[0], add_special_tokens=False)["input_ids"]
    # Whole issues are held out (3 of 6 at eval_share 0.5), and the normalisation comes
    # from the train tokens alone.
    t = pl.read_parquet(tmp_path / "paired.parquet", columns=["issue", "split", "base"])
    assert t.group_by("issue").agg(pl.col("split").n_unique())["split"].max() == 1
    assert info["n_clusters_eval"] == info["n_clusters_train"] == 3
    assert t["split"].value_counts().sort("split")["count"].to_list() == [
        info["n_tokens_eval"], info["n_tokens_train"]]
    Xtr = np.stack(t.filter(pl.col("split") == "train")["base"].to_numpy())
    assert info["mean_norm_base"] == pytest.approx(np.linalg.norm(Xtr, axis=1).mean(), rel=1e-5)
    for split in ("train", "eval"):
        got = sum(len(xb) for _, xb, _ in iter_paired(tmp_path / "paired.parquet", 50, seed=3,
                                                      split=split))
        assert got == info[f"n_tokens_{split}"]
    # The same model without a template on both sides: identical paired activations.
    _extract(tiny_models, prompts, tmp_path / "j" / "shard-00000.parquet", False)
    pair_token_rows(tmp_path / "b", tmp_path / "j", 1, tmp_path / "same.parquet")
    for _, xb, xi in iter_paired(tmp_path / "same.parquet", 1000):
        assert np.allclose(xb, xi, atol=1e-5)
    s = DiffingSettings(n_latents=64, k=4, training_tokens=128 * 150, batch_size=128, lr=1e-2,
                        n_seeds=1)
    train_crosscoders(tmp_path / "same.parquet", tmp_path / "cc", s)
    out = analyse_crosscoders(tmp_path / "same.parquet", tmp_path / "cc", s,
                              texts=dict(zip(prompts["id"], prompts["text"], strict=True)))
    lat = out["latents"]
    assert lat.filter(pl.col("class").is_in(["base_only", "instruct_only"])).height == 0
    assert out["top_statements"]["text"].null_count() == 0
    with pytest.raises(ValueError, match="no 'token' rows at layer 0"):
        pair_token_rows(tmp_path / "b", tmp_path / "i", 0, tmp_path / "x.parquet")


@pytest.mark.parametrize("seed", [0, 1])
def test_training_with_auxk_leaves_fewer_latents_dead_on_held_out_tokens(tmp_path, seed):
    """Through the trainer (dead bookkeeping, AuxK term, threshold) rather than aux_loss
    alone: 300 sparse features in 32 dimensions, more than 256 latents at k = 4 can hold,
    reconstructed to FVE about 0.6 (the organism's regime). Without AuxK about 100 of the
    256 latents never fire on the held-out issues; with it (alpha 1, as the organism) a third
    to a half as many, at no cost in variance explained. (Where the reconstruction is near
    perfect or the features few, AuxK has less to fit and helps less: 120 features read 32
    dead without it and 41 with it, so the test plants the regime the organism is in.)"""
    Xb, Xi, ids, _, _ = synthetic_pair(n=12000, d=32, n_shared=300, seed=3)
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, ids, path, issues=[f"i{int(p[1:]) % 20}" for p in ids])
    out = {}
    for alpha in (0.0, 1.0):
        s = DiffingSettings(n_latents=256, k=4, training_tokens=256 * 400, batch_size=256,
                            lr=1e-2, n_seeds=1, auxk_alpha=alpha, dead_tokens=256 * 25)
        res = train_crosscoder(path, s, seed=seed)
        ev = evaluate(res.model, path, s, top=False)
        out[alpha] = (int((ev["fired"] == 0).sum()), 1 - ev["sse"].sum() / ev["sst"].sum(),
                      res.summary["dead_at_end"])
    (dead_off, fve_off, tracked_off), (dead_on, fve_on, tracked_on) = out[0.0], out[1.0]
    assert tracked_off is None and tracked_on is not None  # the trainer's own count
    assert dead_off >= 60 and dead_on < 0.65 * dead_off, out  # seeds 0-2: 0.32-0.51
    assert fve_on > fve_off - 0.01, out


def test_auxk_revives_latents_that_lose_every_top_k_and_touches_only_them():
    """Latents whose encoder and decoder start 20x weaker than the rest never win a batch's
    top-k, so the reconstruction loss never reaches them: without AuxK all 32 stay dead;
    fitted to the reconstruction's error they come back and the reconstruction improves.
    The AuxK gradient reaches the dead latents only, and the loss is 0 with none dead."""
    Xb, Xi, _, _, _ = synthetic_pair(n=8000, d=64, n_shared=48, seed=1)
    X = torch.tensor(np.stack([Xb, Xi], 1), dtype=torch.float32)
    weak = torch.zeros(64, dtype=torch.bool)
    weak[32:] = True

    def train(alpha):
        torch.manual_seed(0)
        cc = BatchTopKCrossCoder(64, 64, 4, seed=0)
        with torch.no_grad():
            cc.W_enc[:, :, weak] *= 0.05
            cc.W_dec[:, weak] *= 0.05
        opt = torch.optim.Adam(cc.parameters(), lr=1e-2)
        for _ in range(300):
            x = X[torch.randint(0, len(X), (256,))]
            pre = cc.pre_acts(x)
            recon = cc.decode(cc.encode(x, batch_topk=True, pre=pre))
            loss = (recon - x).pow(2).sum((-1, -2)).mean()
            if alpha:
                loss = loss + alpha * cc.aux_loss(x, recon, pre, weak, k_aux=32)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            f = cc.encode(X[:4000], batch_topk=True)
            err = (cc.decode(f) - X[:4000]).pow(2).sum()
            return int((f[:, weak] > 0).any(0).sum()), float(
                1 - err / (X[:4000] - X[:4000].mean(0)).pow(2).sum())

    (alive_off, fve_off), (alive_on, fve_on) = train(0.0), train(1 / 32)
    assert alive_off == 0 and alive_on >= 24 and fve_on > fve_off + 0.05
    cc = BatchTopKCrossCoder(64, 64, 4, seed=0)
    x = X[:256]
    pre = cc.pre_acts(x)
    recon = cc.decode(cc.encode(x, batch_topk=True, pre=pre))
    assert float(cc.aux_loss(x, recon, pre, torch.zeros(64, dtype=torch.bool), 32)) == 0.0
    cc.zero_grad()
    cc.aux_loss(x, recon.detach(), pre, weak, 32).backward()
    assert cc.W_dec.grad[:, ~weak].abs().max() == 0 and cc.W_dec.grad[:, weak].abs().max() > 0
    assert cc.W_enc.grad[:, :, ~weak].abs().max() == 0 and cc.b_enc.grad[~weak].abs().max() == 0


def test_split_holds_out_seeded_clusters_and_refuses_what_it_cannot_split(tmp_path, caplog):
    from rlhf_audit.diffing.paired import assign_split, cluster_of

    clusters = [cluster_of(f"p{i}", f"issue{i % 10}") for i in range(100)]
    a = assign_split(clusters, 0.3, seed=1)
    assert a == assign_split(list(reversed(clusters)), 0.3, seed=1)  # order-free, seeded
    assert sorted(a.values()).count("eval") == 3 and len(a) == 10
    assert a != assign_split(clusters, 0.3, seed=2)
    assert list(assign_split(["x", "y"], 0.01, 0).values()).count("eval") == 1
    with pytest.raises(ValueError, match="at least two clusters"):
        assign_split(["issue:a"] * 5, 0.5, 0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        assign_split(clusters, 1.0, 0)
    # A paired file from before the split names the fix instead of training on everything.
    import pyarrow.parquet as pq

    X = np.ones((40, 4), np.float32)
    with caplog.at_level("WARNING"):
        write_paired(X, X, [f"s{i // 4}" for i in range(40)], tmp_path / "p.parquet",
                     issues=[f"i{i % 6}" for i in range(40)])
    assert "only 3 held-out clusters" in caplog.text  # bootstraps over 3 issues under-cover
    t = pq.read_table(tmp_path / "p.parquet")
    pq.write_table(t.drop_columns(["split"]), tmp_path / "old.parquet")
    with pytest.raises(ValueError, match="re-run pair_diffing_activations"):
        next(iter_paired(tmp_path / "old.parquet", 10, split="train"))


def test_held_out_numbers_expose_a_crosscoder_that_memorises(tmp_path, caplog):
    """More latents than training tokens and no structure at all (independent noise): the
    crosscoder reconstructs its own training tokens perfectly and new ones poorly. The study
    reports the held-out FVE, and warns when it trains such a dictionary."""
    rng = np.random.default_rng(0)
    n, d = 800, 32
    Xb, Xi = rng.standard_normal((2, n, d)).astype(np.float32)
    path = tmp_path / "noise.parquet"
    write_paired(Xb, Xi, [f"s{i // 4:04d}" for i in range(n)], path)
    s = DiffingSettings(n_latents=512, k=8, training_tokens=400 * 400, batch_size=400, lr=1e-2,
                        n_seeds=1, layer=0)
    with caplog.at_level("WARNING"):
        train_crosscoders(path, tmp_path / "cc", s)
    assert "can memorise" in caplog.text
    from rlhf_audit.diffing.analysis import fve

    cc = load_crosscoder(tmp_path / "cc" / "seed-0")
    seen = evaluate(cc, path, s, top=False, split="train")
    assert fve(seen["sse"][:, 1], seen["sst"][:, 1]) > 0.95  # in-sample: memorised
    rec = analyse_crosscoders(path, tmp_path / "cc", s)["per_seed"][0]
    assert rec["n_tokens_eval"] == 400 and rec["fve_instruct"] < 0.7  # what the study reports
    assert rec["fve_base"] < 0.7


def test_the_diff_sae_reports_held_out_variance_explained_not_memorised(tmp_path, caplog):
    """The diff-SAE twin of the test above: 512 TopK latents for 400 training differences of
    independent noise. Read on its own training tokens it explains almost all of their
    variance; the study's number (training_summary.json fve) is read on the held-out
    issues, where there is nothing to learn."""
    import torch
    from sae_lens import SAE

    from rlhf_audit.diffing.diff_sae import _scales, train_diff_sae
    from rlhf_audit.diffing.paired import iter_paired, paired_info

    rng = np.random.default_rng(0)
    n, d = 800, 32
    Xb, Xi = rng.standard_normal((2, n, d)).astype(np.float32)
    path = tmp_path / "noise.parquet"
    write_paired(Xb, Xi, [f"s{i // 4:04d}" for i in range(n)], path)
    s = DiffingSettings(n_latents=64, k=8, training_tokens=400, batch_size=400, lr=1e-2,
                        n_seeds=1, layer=0, diff_sae_latents=512, diff_sae_k=8,
                        diff_sae_tokens=400 * 400)
    with caplog.at_level("WARNING"):
        summary = train_diff_sae(path, tmp_path / "dsae", s)
    assert "can memorise" in caplog.text
    assert summary["n_tokens"] == 400 and summary["n_tokens_train"] == 400
    sae = SAE.load_from_disk(str(tmp_path / "dsae"), device="cpu")
    sb, si = _scales(paired_info(path))
    sse = sst = 0.0
    with torch.no_grad():
        for _, xb, xi in iter_paired(path, 4096, split="train"):
            x = torch.from_numpy(xi * si - xb * sb)
            sse += float((x - sae.decode(sae.encode(x))).pow(2).sum())
            sst += float((x - x.mean(0)).pow(2).sum())
    assert 1 - sse / sst > 0.9  # in-sample: memorised
    assert summary["fve"] < 0.6  # what the study reports


def _scaled_pair(c, n=40000, d=D, n_shared=96, seed=0):
    """Shared features in both models, and one more (the "partisan" direction p) that the
    instruct model writes ``c`` times as strongly as the base model."""
    rng = np.random.default_rng(seed)
    dirs, C, spec = _sparse_features(rng, n, d, n_shared + 1)
    shared = C[:, :n_shared] @ dirs[:n_shared]
    p = C[:, [n_shared]] * dirs[n_shared] * 2
    Xb = shared + rng.standard_normal((n, d)) * spec + p
    Xi = shared + rng.standard_normal((n, d)) * spec + c * p
    return Xb, Xi, [f"s{i // 20:05d}" for i in range(n)], dirs[n_shared]


@pytest.mark.parametrize(("c", "planted"), [(0.5, 1 / 3), (1.0, 0.5)])
def test_a_compressed_shared_direction_shows_in_the_partisan_latents_relative_norm(
        tmp_path, c, planted):
    """The organism's planted compression in miniature: instruct writes the partisan
    direction at half strength. Its latent stays 'shared' by the class cuts (relative
    norm 1/3 > 0.2), so the class counts miss it; partisan_relative_norm reads c/(1+c)
    and its difference from the matched shared latents lies below 0. Written alike
    (c = 1), both read 0.5 and no difference."""
    from rlhf_audit.diffing.summary import headline

    Xb, Xi, ids, p = _scaled_pair(c)
    path = tmp_path / "paired.parquet"
    write_paired(Xb, Xi, ids, path)
    s = DiffingSettings(n_latents=128, k=4, training_tokens=256 * 300, batch_size=256,
                        lr=1e-2, n_seeds=2, partisan_latents=1)
    train_crosscoders(path, tmp_path / "cc", s)
    res = analyse_crosscoders(path, tmp_path / "cc", s, partisan_direction=p)
    for r in res["per_seed"]:
        assert r["partisan_relative_norm"]["cos"][0] > 0.95  # it found p
        assert r["n_instruct_only"] == r["n_base_only"] == 0  # the class counts see nothing
    h = headline(res["per_seed"], res["statement_errors"], None, None, n_boot=200)
    rn, diff = h["partisan_relative_norm"], h["partisan_relative_norm_minus_null"]
    assert rn.n == diff.n == 2 and abs(rn.value - planted) < 0.03
    assert abs(h["null_partisan_relative_norm"].value - 0.5) < 0.02  # ordinary shared latents
    if c < 1:
        assert diff.hi < -0.1
    else:
        assert abs(diff.lo) < 0.03 and abs(diff.hi) < 0.03


def test_rule_functions_analyse_summarise_plot(tmp_path):
    """analyse_pair -> summarise_pair -> figures on a planted pair whose statements lean
    left or right along the planted instruct-only direction vi in base and along vb in
    instruct: base's partisan direction, fitted on the paired statements, is vi (a fit on
    instruct's tokens would give vb). The partisan study's file holds vb, as if read in
    another context: the cosines must follow the paired statements, and the headline says
    how far apart the two are. Relabelled neutral, the statements give no direction and
    the study's is used, and said to be."""
    import json

    from rlhf_audit.diffing.analysis import analyse_pair
    from rlhf_audit.diffing.diff_sae import train_diff_sae
    from rlhf_audit.diffing.figures import plot_latent_scaling, plot_relative_norms
    from rlhf_audit.diffing.summary import summarise_pair
    from rlhf_audit.report import documented_key

    # 40,000 tokens: the crosscoders train on the 20,000 of the train split
    Xb, Xi, ids, vb, vi = synthetic_pair(n=40000, seed=6)
    n_st = len(set(ids))
    side = np.where(np.arange(n_st) % 2 == 0, 1.0, -1.0)[np.arange(len(ids)) // 20]
    Xb, Xi = Xb + 0.1 * side[:, None] * vi, Xi + 0.1 * side[:, None] * vb
    labels = np.where(side > 0, "right", "left").tolist()
    paired = tmp_path / "paired.parquet"
    write_paired(Xb, Xi, ids, paired, labels=labels)
    # 600 steps: at 300 one crosscoder seed in six split the planted latent in two
    s = DiffingSettings(n_latents=128, k=4, training_tokens=256 * 600, batch_size=256, lr=1e-2,
                        n_seeds=2, diff_sae_latents=64, diff_sae_k=4, diff_sae_tokens=256 * 100,
                        layer=3)
    train_crosscoders(paired, tmp_path / "cc", s)
    train_diff_sae(paired, tmp_path / "dsae", s)
    pl.DataFrame({"model": ["base", "base"], "layer": [3, 2], "method": ["diffmean"] * 2,
                  "direction": [vb.tolist(), vi.tolist()]}).write_parquet(tmp_path / "dir.parquet")
    prompts = pl.DataFrame({"id": sorted(set(ids)), "text": [f"t {i}" for i in
                                                             sorted(set(ids))]})
    outs = {k: str(tmp_path / f"{k}.{e}") for k, e in (
        ("latents", "parquet"), ("top_statements", "parquet"), ("diff_sae_latents", "parquet"),
        ("summary", "json"), ("statement_vectors", "parquet"))}
    analyse_pair(paired=paired, crosscoder_dir=tmp_path / "cc", diff_sae_dir=tmp_path / "dsae",
                 prompts=prompts, directions=tmp_path / "dir.parquet", method="diffmean",
                 settings=s, outputs=outs)
    lat = pl.read_parquet(outs["latents"])
    assert lat.schema["decoder_base"] == pl.Array(pl.Float32, D)
    inst = lat.filter(pl.col("class_scaled") == "instruct_only")
    assert inst.height >= 1 and inst["cos_partisan"].abs().max() >= 0.9
    ds = pl.read_parquet(outs["diff_sae_latents"])
    assert ds["cos_partisan"].abs().max() >= 0.9  # the diff-SAE finds vi too
    pdir = json.loads(Path(outs["summary"]).read_text())["partisan_direction"]
    assert pdir["n_right"] == pdir["n_left"] == n_st // 2 and pdir["source"] == "paired"
    assert abs(np.asarray(pdir["direction"]) @ vi) > 0.95
    steering = pl.DataFrame({"model": ["base"] * 6, "vector": ["instruct_only"] * 6,
                             "alpha": [-1.0, 0.0, 1.0] * 2, "question_id": ["a"] * 3 + ["b"] * 3,
                             "projection": [-1.0, 0.0, 1.0, -2.0, 0.0, 2.0]})
    steering.write_parquet(tmp_path / "steer.parquet")
    summarise_pair(outs["summary"], tmp_path / "steer.parquet", tmp_path / "headline.json",
                   n_boot=200, statements_path=outs["statement_vectors"],
                   directions_path=tmp_path / "dir.parquet")
    h = json.loads((tmp_path / "headline.json").read_text())
    agree = h["partisan_direction_cos_study"]  # vi fitted against the study's vb
    assert abs(agree["value"]) < 0.2 and agree["n"] == n_st and agree["lo"] is None
    assert h["n_instruct_only"]["n"] == 2 and h["n_instruct_only"]["value"] >= 1
    assert h["max_abs_cos_partisan_instruct_only"]["value"] >= 0.9
    assert h["null_max_abs_cos_instruct_only"]["hi"] < 0.5
    assert 0 < h["fve_base"]["lo"] <= h["fve_base"]["value"] <= h["fve_base"]["hi"] <= 1
    assert h["steer_slope_base_instruct_only"]["value"] == pytest.approx(1.5)
    assert h["diff_sae_match_instruct_only"]["value"] > h["null_diff_sae_match"]["hi"]
    assert all(documented_key(f"diffing.pair.{k}") for k in h)
    assert "diffing.context" not in h["fve_base"]["description"]  # synthetic pairs: no context
    # A pair read in one context says which on every crosscoder key (not steering's, which
    # prompts each model in its own format).
    summ = json.loads(Path(outs["summary"]).read_text())
    summ["context"]["context"] = "raw"
    Path(outs["summary"]).write_text(json.dumps(summ))
    summarise_pair(outs["summary"], tmp_path / "steer.parquet", tmp_path / "h2.json",
                   n_boot=200, statements_path=outs["statement_vectors"])
    h2 = json.loads((tmp_path / "h2.json").read_text())
    assert h2["fve_base"]["description"].endswith(
        "[both models read the bare statements: diffing.context raw]")
    assert "diffing.context" not in h2["steer_slope_base_instruct_only"]["description"]
    assert h2["fve_base"]["value"] == h["fve_base"]["value"]
    # no sides in the statements: the partisan study's direction (vb) stands in, labelled
    neutral = tmp_path / "neutral.parquet"
    write_paired(Xb, Xi, ids, neutral, labels=["neutral"] * len(ids))
    outs_n = {k: str(tmp_path / f"n_{Path(v).name}") for k, v in outs.items()}
    analyse_pair(paired=neutral, crosscoder_dir=tmp_path / "cc", diff_sae_dir=tmp_path / "dsae",
                 prompts=prompts, directions=tmp_path / "dir.parquet", method="diffmean",
                 settings=s, outputs=outs_n)
    pdir_n = json.loads(Path(outs_n["summary"]).read_text())["partisan_direction"]
    assert pdir_n["source"] == "partisan_study" and pdir_n["n_right"] == 0
    np.testing.assert_allclose(pdir_n["direction"], vb, atol=1e-6)
    base_only = pl.read_parquet(outs_n["latents"]).filter(pl.col("class") == "base_only")
    assert base_only.height >= 1 and base_only["cos_partisan"].abs().max() >= 0.9
    plot_relative_norms(lat, tmp_path / "rel.png", 0.2, 0.8, "pair")
    plot_latent_scaling(lat, tmp_path / "ls.png", 0.5, "pair")
    assert (tmp_path / "rel.png").stat().st_size > 0 and (tmp_path / "ls.pdf").exists()


def _two_latents(dec: np.ndarray) -> pl.DataFrame:
    """An instruct_only latent (instruct decoder dec[0]) and a base_only one (base dec[1])."""
    d = dec.shape[1]
    return pl.DataFrame({
        "latent": [0, 1], "relative_norm": [0.95, 0.05], "firing_rate": [0.1, 0.1],
        "class_scaled": ["instruct_only", "base_only"],
        "decoder_base": pl.Series([np.zeros(d).tolist(), dec[1].tolist()],
                                  dtype=pl.Array(pl.Float32, d)),
        "decoder_instruct": pl.Series([dec[0].tolist(), np.zeros(d).tolist()],
                                      dtype=pl.Array(pl.Float32, d))})


def test_steer_pair_on_tiny_models(tiny_models, tmp_path):
    import json

    from rlhf_audit.diffing.behaviour import steer_pair

    d = 32
    rng = np.random.default_rng(0)
    dec = rng.standard_normal((2, d)).astype(np.float32)
    lat = _two_latents(dec)
    lat.write_parquet(tmp_path / "latents.parquet")
    X = rng.standard_normal((50, d))
    write_paired(X, X, [f"s{i}" for i in range(50)], tmp_path / "paired.parquet", layer=1)
    (tmp_path / "q.jsonl").write_text("".join(
        f'{{"id": "q{i}", "issue": "tax", "question": "should we cut the tax ?"}}\n'
        for i in range(2)))
    (tmp_path / "summary.json").write_text(json.dumps(
        {"partisan_direction": {"direction": rng.standard_normal(d).tolist()}}))
    words = "the tax cut border wall climate policy health care guns rights vote".split()
    prompts = pl.DataFrame({
        "id": [f"p{i:02d}" for i in range(40)],
        "text": [" ".join(rng.choice(words, 6)) for _ in range(40)],
        "label": ["left", "right"] * 20, "issue": [f"issue{i % 4}" for i in range(40)]})
    spec = {"spec": {"path": str(tiny_models)}, "device": "cpu", "dtype": "float32"}
    models = {"base": {**spec, "chat": False}, "instruct": {**spec, "chat": True}}
    steer = {"layer": 1, "alphas": [1.0], "n_questions": 2, "max_new_tokens": 4, "seed": 0,
             "method": "diffmean", "n_random": 2}
    t = steer_pair(latents=tmp_path / "latents.parquet", paired=tmp_path / "paired.parquet",
                   summary=tmp_path / "summary.json", questions=tmp_path / "q.jsonl",
                   prompts=prompts,
                   models=models, steer=steer, out=tmp_path / "steer.parquet")
    assert set(t["model"]) == {"base", "instruct"}
    vectors = {"instruct_only", "base_only", "random_1", "random_2"}
    assert set(t["vector"]) - {"none"} == vectors
    assert t.height == 2 * 4 * 3 * 2  # models x vectors x alphas (-1, 0, 1) x questions
    assert t["projection"].null_count() < t.height
    got = dict(zip(t["vector"], t["latent"], strict=False))
    assert got == {"instruct_only": 0, "base_only": 1, "random_1": -1, "random_2": -1}
    assert t["perplexity"].null_count() == 0
    neutral = prompts.with_columns(pl.lit("neutral").alias("label"))
    none = steer_pair(latents=tmp_path / "latents.parquet", paired=tmp_path / "paired.parquet",
                      summary=tmp_path / "summary.json", questions=tmp_path / "q.jsonl",
                      prompts=neutral, models=models,
                      steer=steer, out=tmp_path / "steer2.parquet")
    assert none["projection"].null_count() == none.height  # no sides to fit on: null scores
    (tmp_path / "old.json").write_text(json.dumps({"per_seed": []}))
    with pytest.raises(ValueError, match="re-run analyse_diffing"):
        steer_pair(latents=tmp_path / "latents.parquet", paired=tmp_path / "paired.parquet",
                   summary=tmp_path / "old.json", questions=tmp_path / "q.jsonl",
                   prompts=prompts, models=models, steer=steer, out=tmp_path / "s3.parquet")


def _latents_with_cos(cos_shared, cos_specific, rate_shared, rate_specific, d=16, seed=0):
    rng = np.random.default_rng(seed)
    n_s, n_i = len(cos_shared), len(cos_specific)
    dec = rng.standard_normal((n_s + n_i, d)).astype(np.float32)
    return pl.DataFrame({
        "latent": np.arange(n_s + n_i, dtype=np.int32),
        "class": ["shared"] * n_s + ["instruct_only"] * n_i,
        "class_scaled": ["shared"] * n_s + ["instruct_only"] * n_i,
        "firing_rate": list(rate_shared) + list(rate_specific),
        "cos_partisan": list(cos_shared) + list(cos_specific),
        "decoder_base": pl.Series(dec.tolist(), dtype=pl.Array(pl.Float32, d)),
        "decoder_instruct": pl.Series((dec * 1.1).tolist(), dtype=pl.Array(pl.Float32, d))})


def test_nulls_come_from_shared_latents_matched_on_firing_rate():
    """Where every learned latent leans on the partisan direction (anisotropic activations:
    shared latents' |cos| 0.45-0.6, as on the organism), three instruct-only latents at the
    shared latents' level must not beat the null, which isotropic random vectors (the
    former null: 97.5th percentile of the largest of 3 |cos| 0.24 at d = 128, 0.04 at
    d = 4096) would let them do at real widths; one at 0.95 must beat it. Matching: the
    draws take the shared latents of the instruct-only latents' firing rate, not the
    frequent ones."""
    from rlhf_audit.diffing.analysis import matched_shared, shared_nulls

    rng = np.random.default_rng(0)
    n_s = 400
    rate = np.where(np.arange(n_s) < 200, 0.001, 0.2)  # rare half, frequent half
    cos_s = np.where(rate < 0.01, rng.uniform(0.45, 0.6, n_s), rng.uniform(0.0, 0.1, n_s))
    level = _latents_with_cos(cos_s, [0.55, 0.5, 0.58], rate, [0.001] * 3)
    nulls, match = shared_nulls(level, np.eye(16), has_direction=True, seed=1)
    lo, hi = np.quantile(nulls["instruct_only"], [0.025, 0.975])
    assert lo <= 0.58 <= hi  # the statistic on these latents: inside the null
    assert "base_only" not in nulls and match is not None and len(match) == 1000
    planted = _latents_with_cos(cos_s, [0.55, 0.95, 0.5], rate, [0.001] * 3)
    nulls2, _ = shared_nulls(planted, None, has_direction=True, seed=1)
    assert np.quantile(nulls2["instruct_only"], 0.975) < 0.95
    draws = matched_shared(level, "instruct_only", seed=1)
    assert draws.shape == (1000, 3) and (draws < 200).all()  # the rare shared latents only
    assert matched_shared(level.filter(pl.col("class") == "shared"), "instruct_only") is None


def test_fve_interval_resamples_issues_not_framings():
    """Eight framings of each statement and several statements per issue: the FVE interval
    counts issues (n) and is wider than a bootstrap over prompt ids would make it."""
    from rlhf_audit.diffing.analysis import cluster_of
    from rlhf_audit.diffing.summary import headline

    assert cluster_of("tax-left-3-plain", "tax") == "issue:tax"
    assert cluster_of("tax-left-3-plain", None) == "prompt:tax-left-3-plain"
    rng = np.random.default_rng(0)
    ids, clusters, sse, sst = [], [], [], []
    for i in range(12):
        issue_err = rng.uniform(0.1, 0.5)  # issues differ; framings of an issue agree
        for k in range(5):
            for f in range(8):
                ids.append(f"i{i}-left-{k}-f{f}")
                clusters.append(cluster_of(ids[-1], f"i{i}"))
                sse.append([issue_err, issue_err])
                sst.append([1.0, 1.0])
    errs = {"statements": ids, "clusters": clusters, "sse": sse, "sst": sst}
    per_seed = [{"n_instruct_only": 1, "n_base_only": 0, "n_shared": 5, "n_dead": 0,
                 "n_instruct_only_scaled": 1, "n_base_only_scaled": 0, "dead_share": 0.0}]
    h = headline(per_seed, errs, None, None, n_boot=400)
    flat = headline(per_seed, {**errs, "clusters": None}, None, None, n_boot=400)
    assert h["fve_base"].n == 12 and flat["fve_base"].n == len(ids)
    assert (h["fve_base"].hi - h["fve_base"].lo) > 3 * (flat["fve_base"].hi - flat["fve_base"].lo)
    assert "not a confidence interval" in h["n_instruct_only"].method


def test_random_controls_are_oriented_like_the_latents():
    """Every steering vector, the random controls included, points toward the partisan
    direction: flipping only the latents would hand them a head start over the control."""
    from rlhf_audit.diffing.behaviour import steering_vectors

    d = 64
    rng = np.random.default_rng(1)
    p = rng.standard_normal(d)
    dec = rng.standard_normal((2, d))
    dec[0] *= np.sign(dec[0] @ p) * -1  # the latent's decoder points away from p
    lat = _two_latents(dec)
    signs = []
    for seed in range(20):
        v = steering_vectors(lat, 1, 3.0, p, seed=seed, n_random=3)["vectors"]
        assert set(v) == {"instruct_only", "base_only", "random_1", "random_2", "random_3"}
        assert all(float(x @ p) >= 0 for _, x in v.values())
        assert all(np.linalg.norm(x) == pytest.approx(3.0, rel=1e-5) for _, x in v.values())
        signs.append(float(v["random_1"][1] @ p))
    assert min(signs) >= 0 and len(set(np.round(signs, 6))) == 20  # fresh draws, flipped
    with pytest.raises(ValueError, match="n_random"):
        steering_vectors(lat, 1, 3.0, p, n_random=0)


def test_latent_slopes_are_read_against_the_random_controls():
    """Planted slopes: the latent moves the score 1.5 per alpha, the two random directions
    0.5 and 0.3; the test number is 1.5 - 0.4 = 1.1, its interval from one bootstrap over
    questions."""
    from rlhf_audit.diffing.summary import _steering_slopes

    rows = []
    rng = np.random.default_rng(0)
    for qi in range(12):
        for vec, b in (("instruct_only", 1.5), ("random_1", 0.5), ("random_2", 0.3)):
            for a in (-1.0, 1.0):
                rows.append({"model": "base", "vector": vec, "alpha": a, "question_id": f"q{qi}",
                             "projection": b * a + rng.normal(0, 0.05)})
        rows.append({"model": "base", "vector": "none", "alpha": 0.0, "question_id": f"q{qi}",
                     "projection": 9.0})
    h = _steering_slopes(pl.DataFrame(rows), n_boot=300, seed=0)
    assert h["steer_slope_base_instruct_only"].value == pytest.approx(1.5, abs=0.03)
    assert h["steer_slope_base_random"].value == pytest.approx(0.4, abs=0.03)
    e = h["steer_slope_base_instruct_only_minus_random"]
    assert e.value == pytest.approx(1.1, abs=0.03) and e.lo > 1.0 and e.hi < 1.2
    assert e.n == 12  # questions, not rows
    assert "steer_slope_base_random_1" not in h


def test_training_rules_hold_no_figure_analysis_or_steering_code():
    from pathlib import Path

    from rlhf_audit.codehash import local_closure

    root = Path(__file__).resolve().parents[1] / "scripts"

    def modules(script):
        return {p.as_posix().split("rlhf_audit/")[-1] for p in local_closure(root / script)
                if "rlhf_audit" in p.as_posix()}

    for script in ("train_diffing_crosscoder.py", "train_diffing_sae.py",
                   "pair_diffing_activations.py"):
        got = modules(script)
        assert not got & {"diffing/figures.py", "plotting.py", "diffing/analysis.py",
                          "diffing/behaviour.py", "diffing/summary.py"}, got
        assert not {m for m in got if m.startswith("steering/")}, got
    assert "diffing/crosscoder.py" not in modules("train_diffing_sae.py")
    assert "diffing/crosscoder.py" not in modules("steer_diffing_latents.py")


def _statement_table(ratio, *, recon_ratio=None, d=512, n_issues=30, per_side=10,
                     noise_sq=64.0, seed=0):
    """Per-statement token means of two models: a right-minus-left difference along one
    direction (base 2 units, instruct sqrt(ratio) x 2: partisan variance ratio ``ratio``;
    the reconstructions the same with ``recon_ratio``), issue offsets, and noise with a
    decaying spectrum (variance of dimension k ~ 1/k) summing to ``noise_sq`` per
    statement in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    recon_ratio = ratio if recon_ratio is None else recon_ratio
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    spec = 1.0 / np.arange(1, d + 1)
    sd = np.sqrt(spec * noise_sq / spec.sum())
    rows = []
    for i in range(n_issues):
        off = rng.standard_normal(d) * 2
        for side in ("left", "right"):
            for k in range(per_side):
                s = 1.0 if side == "right" else -1.0
                nb, ni = rng.standard_normal((2, d)) * sd
                rows.append({"prompt_id": f"i{i}-{side}-{k}", "label": side, "issue": f"i{i}",
                             "n_tokens": 10, "data_base": off + s * u + nb,
                             "data_instruct": off + s * np.sqrt(ratio) * u + ni,
                             "recon_base": off + s * u + 0.5 * nb,
                             "recon_instruct": off + s * np.sqrt(recon_ratio) * u + 0.5 * ni})
    df = pl.DataFrame([{k: v for k, v in r.items() if not k.startswith(("data", "recon"))}
                       for r in rows])
    for c in ("data_base", "data_instruct", "recon_base", "recon_instruct"):
        df = df.with_columns(pl.Series(c, np.stack([r[c] for r in rows]).astype(np.float32),
                                       dtype=pl.Array(pl.Float32, d)))
    return df


@pytest.mark.parametrize(("ratio", "recon_ratio"), [(0.25, 0.5), (1.0, 1.0)])
def test_partisan_variance_ratio_of_reconstructions_recovers_the_planted_ratio(
        ratio, recon_ratio):
    """In 512 dimensions with a decaying noise spectrum and per-statement noise of 16 times
    base's squared partisan difference (|noise|^2 = 64, |difference|^2 = 4), the naive
    |mean difference|^2 ratio is pulled toward 1 (about 0.4 for a planted 0.25); the
    split-half estimator the summary uses recovers each ratio from its own columns (data
    0.25, reconstructions 0.5; or 1 and 1), with n = issues."""
    from rlhf_audit.diffing.summary import partisan_variance_ratios

    t = _statement_table(ratio, recon_ratio=recon_ratio)
    est = partisan_variance_ratios(t, n_boot=200, seed=0)
    d, r = est["variance_ratio_data"], est["variance_ratio_recon"]
    assert r.n == d.n == 30 and d.lo <= ratio <= d.hi and r.lo <= recon_ratio <= r.hi
    if ratio < 1:
        assert d.hi < 0.5 and r.lo > 0.3  # each column read on its own
    right = (t["label"] == "right").to_numpy()
    naive = [float(np.sum((t[c].to_numpy()[right].mean(0) - t[c].to_numpy()[~right].mean(0))
                          ** 2)) for c in ("data_instruct", "data_base")]
    if ratio < 1:  # what the estimator is there for
        assert abs(naive[0] / naive[1] - ratio) > abs(d.value - ratio) + 0.03
    assert partisan_variance_ratios(t.with_columns(pl.lit(None, pl.String).alias("label"))) == {}


def test_reconstruction_over_activations_is_a_paired_bootstrap():
    """variance_ratio_recon_over_data resamples the same issues for both columns. A
    reconstruction that is the activations with instruct scaled by sqrt(0.8) reads 0.8 in
    every replicate, an interval of zero width, where the two columns' own intervals would
    bound it only loosely; one that reads the planted ratio with its own noise covers 1."""
    from rlhf_audit.diffing.summary import partisan_variance_ratios

    t = _statement_table(0.25, recon_ratio=0.25)
    d = t["data_instruct"].dtype
    scaled = t.with_columns(
        t["data_base"].alias("recon_base"),
        pl.Series("recon_instruct", np.stack(t["data_instruct"].to_numpy()) * np.sqrt(0.8),
                  dtype=d))
    est = partisan_variance_ratios(scaled, n_boot=200, seed=0)
    e, dat, rec = (est[f"variance_ratio_{k}"] for k in ("recon_over_data", "data", "recon"))
    assert e.value == pytest.approx(0.8, rel=1e-5) and e.n == 30
    assert e.lo == pytest.approx(0.8, rel=1e-5) and e.hi == pytest.approx(0.8, rel=1e-5)
    assert rec.hi / dat.lo - rec.lo / dat.hi > 0.5  # what unpaired intervals would allow
    e = partisan_variance_ratios(t, n_boot=200, seed=0)["variance_ratio_recon_over_data"]
    assert e.lo < 1 < e.hi and e.hi - e.lo < 1.5


def test_partisan_latents_are_picked_on_the_base_decoder_so_rotation_alone_reads_no_change():
    """No compression (c = 1), but instruct's partisan direction rotated from base's
    (cosine 0.6): picking latents by the larger decoder's alignment with the base
    direction favours base-heavy latents and reads below 0.5; picking on the base
    decoder does not."""
    from rlhf_audit.diffing.analysis import partisan_relative_norm

    rng = np.random.default_rng(0)
    d, n, n_part = 128, 300, 20
    p_b = np.eye(d)[0]
    p_i = 0.6 * p_b + 0.8 * np.eye(d)[1]
    vals, dominant = [], []
    for _ in range(40):
        Wb = rng.standard_normal((n, d)) / np.sqrt(d)
        Wi = Wb.copy()
        a = rng.uniform(0.3, 1.0, n_part)
        Wb[:n_part] = a[:, None] * p_b + 0.3 * rng.standard_normal((n_part, d)) / np.sqrt(d)
        Wi[:n_part] = a[:, None] * p_i + 0.3 * rng.standard_normal((n_part, d)) / np.sqrt(d)
        for W in (Wb, Wi):  # equal norms in expectation, +-8% noise each
            W *= rng.normal(1.0, 0.08, n)[:, None]
        nb, ni = np.linalg.norm(Wb, axis=1), np.linalg.norm(Wi, axis=1)
        rel = ni / (nb + ni)
        lat = pl.DataFrame({
            "latent": np.arange(n), "class": ["shared"] * n, "class_scaled": ["shared"] * n,
            "firing_rate": rng.uniform(0.01, 0.1, n), "relative_norm": rel,
            "decoder_base": pl.Series(Wb.astype(np.float32), dtype=pl.Array(pl.Float32, d)),
            "decoder_instruct": pl.Series(Wi.astype(np.float32), dtype=pl.Array(pl.Float32, d))})
        vals.append(partisan_relative_norm(lat, 2, p_b)["value"])
        dom = np.where((ni >= nb)[:, None], Wi, Wb)
        cos = np.abs(dom @ p_b) / np.linalg.norm(dom, axis=1)
        dominant.append(rel[np.argsort(-cos)[:2]].mean())
    assert abs(np.mean(vals) - 0.5) < 0.01
    assert np.mean(dominant) < np.mean(vals) - 0.01  # the former pick's bias, for contrast


def test_statement_vectors_are_raw_token_means_and_tied_decoders_give_the_norm_ratio(tmp_path):
    """evaluate(statement_vectors=True) against a direct computation, with unequal scales,
    a decoder bias and batches that split every statement: the reconstructions come back
    in raw units. With the two decoders tied, the reconstructions' partisan variance ratio
    is exactly the squared ratio of the normalising mean norms (tied_ratios)."""
    from rlhf_audit.diffing.analysis import statement_vector_table
    from rlhf_audit.diffing.paired import paired_info
    from rlhf_audit.diffing.summary import partisan_variance_ratios, tied_ratios

    rng = np.random.default_rng(0)
    n_stmt, per, d = 48, 6, 16
    ids = [f"i{s % 8}-{'right' if s % 2 else 'left'}-{s}" for s in range(n_stmt)
           for _ in range(per)]
    side = np.array([1.0 if "right" in p else -1.0 for p in ids])[:, None]
    Xb = rng.standard_normal((len(ids), d)) + side * np.eye(d)[0] * 2
    Xi = 3.0 * (rng.standard_normal((len(ids), d)) + side * np.eye(d)[0])
    path = tmp_path / "p.parquet"
    write_paired(Xb, Xi, ids, path, labels=[p.split("-")[1] for p in ids],
                 issues=[p.split("-")[0] for p in ids], row_group_rows=40)
    info = paired_info(path)
    scale = (np.sqrt(d) / info["mean_norm_base"], np.sqrt(d) / info["mean_norm_instruct"])
    cc = BatchTopKCrossCoder(d, 32, 4, scale, seed=0)
    with torch.no_grad():
        cc.b_dec.copy_(torch.randn(2, d))
    s = DiffingSettings(n_latents=32, k=4)
    ev = evaluate(cc, path, s, top=False, batch_rows=7, split=None, statement_vectors=True)
    got = statement_vector_table(ev).sort("prompt_id")
    with torch.no_grad():
        x = cc.normalise(torch.tensor(Xb, dtype=torch.float32),
                         torch.tensor(Xi, dtype=torch.float32))
        raw = (cc(x)[0] / cc.scale[None, :, None]).numpy()
    order = sorted(set(ids))
    pid = np.array(ids)
    for col, vals in (("data_base", Xb), ("data_instruct", Xi), ("recon_base", raw[:, 0]),
                      ("recon_instruct", raw[:, 1])):
        want = np.stack([vals[pid == p].mean(0) for p in order])
        assert np.allclose(got[col].to_numpy(), want, atol=1e-4), col
    assert got["n_tokens"].to_list() == [per] * n_stmt
    with torch.no_grad():
        cc.W_dec[1] = cc.W_dec[0]
    tied_ev = evaluate(cc, path, s, top=False, split=None, statement_vectors=True)
    r = partisan_variance_ratios(statement_vector_table(tied_ev), n_boot=100)
    t = tied_ratios(r["variance_ratio_recon"], info["mean_norm_base"], info["mean_norm_instruct"])
    assert r["variance_ratio_recon"].value == pytest.approx(
        t["variance_ratio_recon_tied"].value, rel=1e-4)
    assert t["variance_ratio_recon_over_tied"].value == pytest.approx(1.0, rel=1e-4)

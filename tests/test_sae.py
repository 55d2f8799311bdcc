"""SAE tallies, policy-feature selection and training (rlhf_audit.sae).

Known answers come from SAEs whose encoders are set by hand (one input direction
per feature, JumpReLU threshold 0.5), so every count is known exactly, and from a
planted dictionary for training.
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
import torch
from sae_planted import hand_sae

from rlhf_audit import sae as S

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def random_topk_sae(d_in=16, d_sae=48, k=5, seed=0):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            k=k,
            apply_b_dec_to_input=True,
            rescale_acts_by_decoder_norm=True,
        )
    )
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)  # unequal decoder norms matter for topk
    return sae


# ----------------------------------------------------------------- planted partisan data

N_PER_LABEL, N_TOK = 60, 6
F_LEFT, F_PARTISAN, F_GENERAL, F_NEUTRAL, F_NEVER, F_NOISE, F_RARE = range(7)
D_IN = 8


def planted_tokens(instruct: bool = False):
    """(meta, X) token rows for 60 left, 60 right, 60 neutral prompts of 6 tokens.

    Input dim j drives feature j (hand SAE with W_enc = I[:, :7]):
    - F_LEFT: token 2 of left prompts i with i % 10 < 3 (value 1 + i/100): 18 prompts
    - F_PARTISAN: token 4 of left and right prompts with i % 4 == 1 (value 2.0): 15 + 15
    - F_GENERAL: every token (value 1.0 + token/10)
    - F_NEUTRAL: token 1 of neutral prompts with i % 5 == 0: 12 prompts
    - F_NEVER: never
    - F_NOISE: token 3 of every label's prompts with i % 10 == 7: 6 per label
    - F_RARE: left prompt 11 and right prompt 13 only (below min_prompts_fired)
    Instruct: the same prompts with the F_LEFT and F_PARTISAN inputs removed.
    """
    rows, X = [], []
    for label in ("left", "right", "neutral"):
        for i in range(N_PER_LABEL):
            for t in range(N_TOK):
                x = np.zeros(D_IN, np.float32)
                x[F_GENERAL] = 1.0 + t / 10
                if not instruct:
                    if label == "left" and i % 10 < 3 and t == 2:
                        x[F_LEFT] = 1 + i / 100
                    if label != "neutral" and i % 4 == 1 and t == 4:
                        x[F_PARTISAN] = 2.0
                if label == "neutral" and i % 5 == 0 and t == 1:
                    x[F_NEUTRAL] = 1.5
                if i % 10 == 7 and t == 3:
                    x[F_NOISE] = 1.2
                if ((label, i) in {("left", 11), ("right", 13)}) and t == 5:
                    x[F_RARE] = 3.0
                rows.append(
                    {
                        "prompt_id": f"{label}-{i:02d}",
                        "label": label,
                        "token_index": t + 1,
                        "token_id": 100 + t,
                    }
                )
                X.append(x)
    return pl.DataFrame(rows), np.stack(X)


def planted_sae():
    W = np.zeros((D_IN, 7), np.float32)
    for j in range(7):
        W[j, j] = 1.0
    return hand_sae(W)


def chunks(meta: pl.DataFrame, X: np.ndarray, size: int, order=None):
    if order is not None:
        meta, X = meta[order], X[order]
    for s in range(0, meta.height, size):
        yield meta[s : s + size], X[s : s + size]


# ----------------------------------------------------------------- encode and tallies


def test_encode_features_equals_sae_lens_encode():
    sae = random_topk_sae()
    X = torch.randn(103, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sae.encode(X).numpy()
    ours = S.encode_features(sae, X.numpy(), batch_size=7)
    np.testing.assert_array_equal(ours, ref)
    assert ((ref > 0).sum(1) <= 5).all() and (ref > 0).sum() > 0


def test_hand_built_counts_are_exact():
    meta, X = planted_tokens()
    tally = S.tally_features(planted_sae(), (meta, X))
    totals = tally.filter(pl.col("feature").is_null())
    assert sorted(totals["label"]) == ["left", "neutral", "right"]
    assert set(totals["n_tokens"]) == {N_PER_LABEL * N_TOK} and set(totals["n_prompts"]) == {60}

    def row(f, lab):
        r = tally.filter((pl.col("feature") == f) & (pl.col("label") == lab))
        return r.row(0, named=True) if r.height else None

    left_i = [i for i in range(60) if i % 10 < 3]
    r = row(F_LEFT, "left")
    assert (r["n_firing_tokens"], r["n_firing_prompts"]) == (18, 18)
    assert r["max_activation"] == pytest.approx(1.52, abs=1e-6)
    assert r["mean_activation"] == pytest.approx(1 + np.mean(left_i) / 100, abs=1e-6)
    assert r["firing_rate"] == pytest.approx(18 / 360)
    assert r["prompt_firing_rate"] == pytest.approx(18 / 60)
    assert row(F_LEFT, "right") is None and row(F_LEFT, "neutral") is None
    assert row(F_PARTISAN, "left")["n_firing_prompts"] == 15
    assert row(F_PARTISAN, "right")["n_firing_prompts"] == 15
    g = row(F_GENERAL, "neutral")
    assert (g["n_firing_tokens"], g["n_firing_prompts"]) == (360, 60)
    assert g["max_activation"] == pytest.approx(1.5) and g["mean_activation"] == pytest.approx(1.25)
    assert tally.filter(pl.col("feature") == F_NEVER).height == 0
    assert row(F_NOISE, "right")["n_firing_prompts"] == 6
    # threshold is strict: a pre-activation exactly at the threshold does not fire
    sae = planted_sae()
    X2 = X.copy()
    X2[:, F_GENERAL] = 0.5
    t2 = S.tally_features(sae, (meta, X2))
    assert t2.filter(pl.col("feature") == F_GENERAL).height == 0


def dense_reference(sae, meta: pl.DataFrame, X: np.ndarray) -> pl.DataFrame:
    """Feature x label tallies from the full dense activation matrix (sae.encode at once)."""
    with torch.no_grad():
        A = sae.encode(torch.as_tensor(X)).numpy().astype(np.float64)
    out = []
    labels = meta["label"].to_numpy()
    pids = meta["prompt_id"].to_numpy()
    for lab in np.unique(labels):
        m = labels == lab
        for f in range(A.shape[1]):
            a = A[m, f]
            fired = a > 0
            if not fired.any():
                continue
            out.append(
                {
                    "feature": f,
                    "label": lab,
                    "n_firing_tokens": int(fired.sum()),
                    "n_firing_prompts": len(np.unique(pids[m][fired])),
                    "sum_activation": a[fired].sum(),
                    "max_activation": a[fired].max(),
                }
            )
    return pl.DataFrame(out).sort("feature", "label")


@pytest.mark.parametrize(
    "batch,encode_batch,shuffle",
    [(1, 1024, False), (7, 3, True), (50, 16, True), (10_000, 1024, False)],
)
def test_streaming_tally_equals_dense(batch, encode_batch, shuffle):
    rng = np.random.default_rng(batch)
    n_prompts = 30
    lens = rng.integers(1, 9, n_prompts)
    meta = pl.DataFrame(
        {
            "prompt_id": np.repeat([f"p{i}" for i in range(n_prompts)], lens),
            "label": np.repeat(
                [("left", "right", "neutral", None)[i % 4] for i in range(n_prompts)], lens
            ),
            "token_index": np.concatenate([np.arange(1, n + 1) for n in lens]).astype(np.int32),
        }
    )
    X = rng.normal(size=(meta.height, 16)).astype(np.float32)
    sae = random_topk_sae()
    order = rng.permutation(meta.height) if shuffle else None
    settings = S.ScanSettings(encode_batch_size=encode_batch, compact_rows=20)
    scan = S.scan_features(sae, chunks(meta, X, batch, order), settings)
    tally = scan.tally()
    ref = dense_reference(sae, meta.with_columns(pl.col("label").fill_null(S.UNLABELLED)), X)
    got = tally.filter(pl.col("feature").is_not_null()).select(ref.columns).sort("feature", "label")
    assert got.height == ref.height
    assert got["feature"].to_list() == ref["feature"].to_list()
    assert got["label"].to_list() == ref["label"].to_list()
    assert got["n_firing_tokens"].to_list() == ref["n_firing_tokens"].to_list()
    assert got["n_firing_prompts"].to_list() == ref["n_firing_prompts"].to_list()
    # float32 encoder: a different matmul blocking (rows encoded in other chunks) changes
    # the last bits, so activations agree to float32 precision, not bit for bit.
    np.testing.assert_allclose(got["sum_activation"], ref["sum_activation"], rtol=2e-6)
    np.testing.assert_allclose(got["max_activation"], ref["max_activation"], rtol=2e-6)
    totals = tally.filter(pl.col("feature").is_null()).sort("label")
    lab = meta["label"].fill_null(S.UNLABELLED)
    assert totals["n_tokens"].to_list() == [int((lab == x).sum()) for x in totals["label"]]
    # per-prompt max token index is the token where the feature peaked
    with torch.no_grad():
        A = sae.encode(torch.as_tensor(X)).numpy()
    pf = scan.prompt_features.sample(10, seed=0)
    for r in pf.iter_rows(named=True):
        m = (meta["prompt_id"] == r["prompt_id"]).to_numpy()
        a = A[m, r["feature"]]
        assert r["max_token_index"] == meta["token_index"].to_numpy()[m][a.argmax()]
    # reconstruction quality: streaming sums equal the dense computation
    rec = scan.reconstruction().row(0, named=True)
    dense = S.reconstruction_quality_dense(sae, X)
    assert rec["n_tokens"] == meta.height and rec["n_prompts"] == n_prompts
    assert rec["fve"] == pytest.approx(dense["fve"], rel=1e-6)
    assert rec["mse"] == pytest.approx(dense["mse"], rel=1e-6)
    assert rec["l0"] == pytest.approx(dense["l0"], rel=1e-12)
    # per-prompt mean residual and mean reconstruction equal the dense ones
    with torch.no_grad():
        recon = sae.decode(sae.encode(torch.as_tensor(X))).numpy()
    means = scan.prompt_means.sort("prompt_id")
    pid = meta["prompt_id"].to_numpy()
    for r in means.sample(8, seed=1).iter_rows(named=True):
        m = pid == r["prompt_id"]
        np.testing.assert_allclose(r["mean_x"], X[m].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["mean_recon"], recon[m].mean(0), rtol=1e-4, atol=1e-5)
    content = scan.content_tokens.sort("prompt_id", "token_index")
    assert content.height == meta.height


def test_reconstruction_quality_known_answer():
    # Decoder = encoder.T on orthonormal inputs above threshold: perfect reconstruction;
    # then remove half the features' inputs from the dictionary: FVE drops by a known amount.
    meta, X = planted_tokens()
    scan = S.scan_features(planted_sae(), (meta, X))
    assert scan.reconstruction()["fve"][0] == pytest.approx(1.0, abs=1e-9)
    X_off = X.copy()
    X_off[:, 7] = np.where(np.arange(len(X)) % 2 == 0, 1.0, -1.0)  # no feature reads dim 7
    rec = S.scan_features(planted_sae(), (meta, X_off)).reconstruction().row(0, named=True)
    var_total = ((X_off - X_off.mean(0)) ** 2).sum()
    assert rec["fve"] == pytest.approx(1 - len(X) / var_total, rel=1e-9)
    assert rec["mse"] == pytest.approx(1 / D_IN, rel=1e-9)


def test_bad_input_is_named():
    meta, X = planted_tokens()
    sae = planted_sae()
    with pytest.raises(ValueError, match="lacks column 'label'"):
        S.tally_features(sae, (meta.drop("label"), X))
    with pytest.raises(ValueError, match="d_in=8"):
        S.tally_features(sae, (meta, X[:, :5]))
    X_bad = X.copy()
    X_bad[40, 0] = np.nan
    with pytest.raises(ValueError, match="left-06"):
        S.tally_features(sae, (meta, X_bad))
    relabelled = meta.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("right")).otherwise("label").alias("label")
    )
    with pytest.raises(ValueError, match="one label"):
        S.tally_features(sae, chunks(relabelled, X, 100))


# ----------------------------------------------------------------- figure


def test_figure_is_written(tmp_path):
    from sae_planted import hand_sae as planted_hand_sae
    from sae_planted import planted_study as planted

    base, inst, roles = planted(0, n_issues=6, n_background=30)
    sae = planted_hand_sae(np.eye(roles["d"], dtype=np.float32))
    study = S.analyse_policy_features(S.scan_features(sae, base), S.scan_features(sae, inst),
                                      S.SAEAnalysisSettings(n_boot=20))
    S.plot_policy_firing(study.comparison, tmp_path / "fig.png", title="planted")
    assert (tmp_path / "fig.png").stat().st_size > 1000 and (tmp_path / "fig.pdf").exists()


# ----------------------------------------------------------------- loading and fit


@pytest.mark.parametrize(
    "hook,layer",
    [
        ("blocks.3.hook_resid_post", 3),
        ("model.layers.3", 3),
        ("layers.3", 3),
        ("blocks.3.hook_resid_pre", 2),
    ],
)
def test_sae_layer_parses_hook_names(hook, layer):
    assert S.sae_layer(hook) == layer


@pytest.mark.parametrize("hook", ["blocks.3.hook_mlp_out", "blocks.0.hook_resid_pre", None])
def test_sae_layer_rejects_other_hooks(hook):
    with pytest.raises(ValueError, match="hook_name"):
        S.sae_layer(hook)


def test_check_sae_fits():
    sae = hand_sae(np.eye(8, 4, dtype=np.float32), hook="blocks.18.hook_resid_post")
    S.check_sae_fits(sae, d_model=8, layer=18)
    with pytest.raises(ValueError, match=r"d_in=8.*d_model=4096") as e:
        S.check_sae_fits(sae, d_model=4096, layer=18, config_key="model_pairs[0].sae")
    assert "model_pairs[0].sae" in str(e.value)
    with pytest.raises(ValueError, match=r"layer 18 .*reads layer 17") as e:
        S.check_sae_fits(sae, d_model=8, layer=17, config_key="sae.layer")
    assert "sae.layer" in str(e.value)
    no_hook = hand_sae(np.eye(8, 4, dtype=np.float32), hook=None)
    with pytest.raises(ValueError, match="cfg.json"):
        S.check_sae_fits(no_hook, d_model=8, layer=2)


def test_load_sae_path_roundtrip_and_errors(tmp_path, monkeypatch):
    sae = planted_sae()
    sae.save_model(tmp_path / "hand")
    loaded = S.load_sae({"path": str(tmp_path / "hand")})
    meta, X = planted_tokens()
    np.testing.assert_array_equal(S.encode_features(loaded, X), S.encode_features(sae, X))
    S.check_sae_fits(loaded, D_IN, 2)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        S.load_sae({"path": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="exactly the keys"):
        S.load_sae({"release": "llama_scope_lxr_8x"})
    with pytest.raises(ValueError, match="not a known sae-lens"):
        S.load_sae({"release": "no_such_release_here", "id": "x"})

    from huggingface_hub.errors import LocalEntryNotFoundError
    from sae_lens import SAE

    def offline(*a, **k):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(SAE, "from_pretrained", offline)
    with pytest.raises(FileNotFoundError, match=r"HF_HOME.*\{path: DIR\}"):
        S.load_sae({"release": "llama_scope_lxr_8x", "id": "l18r_8x"})


def planted_dictionary(n: int, d: int = 32, m: int = 64, active: int = 3, seed: int = 0):
    """Tokens = sparse non-negative mix of ``m`` fixed unit directions + a shared offset;
    ``seed`` draws the tokens, the dictionary is the same for every seed."""
    D = np.random.default_rng(12345).normal(size=(m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    Z = np.zeros((n, m))
    idx = rng.integers(0, m, (n, active))
    np.put_along_axis(Z, idx, rng.exponential(1.0, (n, active)) + 0.2, axis=1)
    return (Z @ D + 0.3).astype(np.float32)


def test_train_sae_recovers_planted_dictionary(tmp_path, monkeypatch):
    from sae_lens import SAE

    monkeypatch.chdir(tmp_path)
    X = planted_dictionary(40_000)
    held_out = planted_dictionary(5_000, seed=1)
    settings = S.SAESettings(
        layer=3,
        d_sae=128,
        k=6,
        training_tokens=150_000,
        batch_size=512,
        lr=3e-3,
        seed=0,
        model_name="organism-base",
    )
    out = tmp_path / "sae"
    # fed as (meta, X) batches, as read from the Parquet token shards
    meta = pl.DataFrame({"prompt_id": ["p"] * 10_000, "label": ["left"] * 10_000})
    S.train_sae(((meta, X[i : i + 10_000]) for i in range(0, 40_000, 10_000)), out, settings)
    assert sorted(os.listdir(tmp_path)) == ["sae"]  # nothing written outside out_dir
    assert {"cfg.json", "sae_weights.safetensors", "training_summary.json"} <= set(os.listdir(out))
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    S.check_sae_fits(sae, d_model=32, layer=3)
    q = S.reconstruction_quality_dense(sae, held_out)
    assert q["fve"] > 0.8
    assert q["l0"] <= 6
    # loaded through our loader it encodes identically
    again = S.load_sae({"path": str(out)})
    np.testing.assert_array_equal(
        S.encode_features(again, held_out[:100]), S.encode_features(sae, held_out[:100])
    )


def test_train_sae_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="row 3"):
        X = np.ones((10, 4), np.float32)
        X[3, 1] = np.inf
        S.train_sae(X, tmp_path / "x", S.SAESettings(d_sae=8, k=2))
    with pytest.raises(ValueError, match="k=8"):
        S.train_sae(np.ones((10, 4), np.float32), tmp_path / "y", S.SAESettings(d_sae=8, k=8))


def test_scan_roundtrips_through_parquet(tmp_path):
    scan = S.scan_features(planted_sae(), planted_tokens())
    S.write_scan(scan, tmp_path / "scan", provenance={"model": "base"})
    back = S.read_scan(tmp_path / "scan")
    assert back.d_in == D_IN and back.d_sae == 7
    assert back.prompts.equals(scan.prompts)
    assert back.prompt_features.equals(scan.prompt_features)
    assert back.prompt_means.equals(scan.prompt_means)
    assert back.splice is None  # no spliced-in loss was computed
    assert back.tally().equals(scan.tally())
    with pytest.raises(FileNotFoundError, match="scan.json"):
        S.read_scan(tmp_path)


def test_each_sae_rule_hashes_only_the_code_it_runs():
    # A rule reruns when the code it imports changes: the GPU scan must not rerun for an
    # edit to the selection, the figure or the training, nor the figure for a scan edit.
    from pathlib import Path

    from rlhf_audit.codehash import local_closure

    scripts = Path(__file__).resolve().parents[1] / "scripts"

    def closure(name):
        return {p.name for p in local_closure(scripts / name) if p.parent.name == "sae"}

    assert closure("scan_sae_features.py") == {"__init__.py", "load.py", "scan.py"}
    assert closure("select_policy_features.py") == {"__init__.py", "load.py", "scan.py",
                                                    "select.py"}
    assert closure("plot_sae.py") == {"__init__.py", "figures.py"}
    assert closure("train_organism_sae.py") == {"__init__.py", "train.py"}

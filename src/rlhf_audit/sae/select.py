"""Policy features at statement level, base vs instruct (rule select_policy_features).

The claim ("The Neutral Mask", claim 3): policy-encoding SAE features that fire
sporadically in base are completely inactive in instruct. The measurement:

1. **Statements are the unit.** A prompt id ``{issue}-{label}-{k}-{framing}`` (the
   shipped statements; ``statement_pattern`` says how to read other ids) is one
   framing of statement ``{issue}-{label}-{k}``. Every per-feature number is first
   aggregated over a statement's framings, so six framings of one claim count once.
2. **Split.** Statements are split in two halves, stratified by (issue, label) and
   seeded (``split_seed``). Features are selected on the *selection* half of the
   base scan; both models are measured on the *measurement* half only, so a
   feature's selection noise cannot pass for a base-vs-instruct difference.
3. **Policy features** differ between left and right statements: a van Elteren
   stratified rank-sum test of the statement-level mean activation, strata = issues
   (left and right share the same framing mix, so a feature of the framing itself,
   e.g. opinion rhetoric, is not selected), Benjamini-Hochberg over features. A
   partisan-vs-neutral test is reported beside it on *plain* framings only (neutral
   statements carry other framings), never used to select.
4. **Control.** Each policy feature is matched to ``controls_per_feature`` non-policy
   features firing on as many measurement-half statements in base (statement
   incidence) about as strongly (mean activation where they fire); ties broken by
   token firing rate; see :func:`match_controls`. The share
   silent in instruct is reported for both, with their paired difference; intervals
   resample measurement-half statements (within label) and, crossed with them, the
   policy features ("never fires" is an extreme statistic: resampling statements alone
   under-covers, which a planted null showed).
5. **Reconstruction.** FVE, L0 and the spliced-in loss per model (the scan job ran
   the model with the SAE spliced in), and the fraction of the left-right separation
   along the partisan direction that the SAE reconstructs in each model, so that a
   feature "silent in instruct" cannot just mean "moved into the SAE's error term".
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from rlhf_audit.sae.scan import FeatureScan
from rlhf_audit.stats import Estimate

log = logging.getLogger(__name__)

PARTISAN_LABELS = ("left", "right")
NEUTRAL_LABEL = "neutral"
LABELS = (*PARTISAN_LABELS, NEUTRAL_LABEL)
DEFAULT_STATEMENT_PATTERN = (
    r"^(?P<statement>.+-(?:left|right|neutral)-\d+)-(?P<framing>[A-Za-z0-9_]+)$"
)
"""How a shipped prompt id ``{issue}-{label}-{k}-{framing}`` names its statement."""
MODELS = ("base", "instruct")
SELECTION_DIRECTION = "shrinkage-LDA of the model's own selection-half statements"
"""Where the partisan direction of the reconstruction check comes from by default."""

HEADLINE_KEYS: dict[str, str] = {
    "n_policy_features": (
        "Number of SAE features selected as policy-encoding on the base model: left vs right "
        "statements of the selection half, van Elteren rank-sum test stratified by issue on "
        "statement-level mean activations, Benjamini-Hochberg over features; n = selection-"
        "half statements; no interval (a count of discoveries). Was: prompt-level Fisher "
        "tests (partisan vs neutral or left vs right) on all prompts."
    ),
    "share_inactive_in_instruct": (
        "Share of the policy features that never fire on any instruct token of the "
        "measurement-half statements (held out from selection; same SAE); interval: crossed "
        "bootstrap over those statements and the policy features. Was: the selection's own "
        "prompts, features resampled."
    ),
    "share_inactive_in_instruct_control": (
        "The same share for the control features: per policy feature, the non-policy "
        "features nearest in base statement incidence (measurement-half statements on which "
        "it fires) and firing strength (mean activation where it fires; ties: nearest token "
        "firing rate), averaged per policy feature; interval: crossed bootstrap over "
        "measurement-half statements and policy features. Was: matched on token firing rate "
        "(bursty controls that fall silent easily), then on incidence alone (faint controls "
        "that fall silent easily)."
    ),
    "share_inactive_in_instruct_excess": (
        "Paired difference share_inactive_in_instruct - share_inactive_in_instruct_control "
        "(per policy feature: silent minus the share of its matched controls silent); "
        "interval: crossed bootstrap over measurement-half statements and policy features. "
        "> 0: policy features fall silent in instruct more often than features that fire on "
        "as many statements, as strongly, in base."
    ),
    "share_inactive_in_instruct_excess_p": (
        "Two-sided bootstrap p-value of share_inactive_in_instruct_excess = 0 (the value; no "
        "interval)."
    ),
    "policy_firing_rate_base": (
        "Mean over policy features of the token-level firing rate on base activations of the "
        "measurement-half statements; interval: crossed bootstrap over those statements and "
        "the policy features. Was: all prompts, features resampled."
    ),
    "policy_firing_rate_instruct": (
        "Mean over policy features of the token-level firing rate on instruct activations of "
        "the measurement-half statements; interval: crossed bootstrap over those statements "
        "and the policy features."
    ),
    "fve_base": (
        "Fraction of variance of base residual activations (content tokens of labelled "
        "statements) explained by the SAE reconstruction; interval: bootstrap over statements."
    ),
    "fve_instruct": (
        "Fraction of variance of instruct residual activations explained by the same SAE; "
        "interval: bootstrap over statements."
    ),
    "l0_base": (
        "Mean number of SAE features firing per base token; interval: bootstrap over statements."
    ),
    "l0_instruct": (
        "Mean number of SAE features firing per instruct token; interval: bootstrap over "
        "statements."
    ),
    "spliced_ce_increase_base": (
        "Increase of next-token cross-entropy (nats per token) when the SAE reconstruction "
        "replaces the base residual at the SAE's hook on content tokens (predicting content "
        "tokens); interval: bootstrap over statements."
    ),
    "spliced_ce_increase_instruct": (
        "The same for instruct; interval: bootstrap over statements."
    ),
    "spliced_kl_base": (
        "Mean KL(clean || spliced) of base next-token distributions at content tokens when the "
        "SAE reconstruction is spliced in (nats); interval: bootstrap over statements."
    ),
    "spliced_kl_instruct": (
        "The same for instruct; interval: bootstrap over statements."
    ),
    "partisan_fraction_reconstructed_base": (
        "Of the base model's left-right separation along the partisan direction (mean right "
        "minus mean left statement projection, measurement half), the fraction its SAE "
        "reconstruction keeps; the direction's source is in the method field; interval: "
        "bootstrap over measurement-half statements."
    ),
    "partisan_fraction_reconstructed_instruct": (
        "The same for instruct (its own partisan direction): near 0 would mean the partisan "
        "signal sits in the SAE's error term there; interval: bootstrap over statements."
    ),
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SAEAnalysisSettings:
    """Statement-level policy-feature selection, control matching and the headline."""

    q: float = 0.05
    """Benjamini-Hochberg false discovery rate over the tested features."""
    min_statements_fired: int = 5
    """Label-blind filter before testing: a feature is tested only if it fires on at least
    this many left or right statements of the selection half (whatever their side)."""
    min_firing_rate: float = 0.02
    """A selected feature must fire on at least this share of the selection-half
    statements of the side it leans to."""
    statement_pattern: str = DEFAULT_STATEMENT_PATTERN
    """Regex with named groups ``statement`` and ``framing`` read from each prompt id;
    a prompt whose id does not match is a statement of its own, with the plain framing."""
    plain_framing: str = "plain"
    """Framing id of the bare statement (the one framing partisan and neutral share)."""
    split_seed: int = 0
    """Seed of the selection / measurement split of the statements."""
    controls_per_feature: int = 5
    """Rate-matched non-policy control features per policy feature."""
    top_k_prompts: int = 10
    """Prompts listed per policy feature for inspection (highest max activation)."""
    n_boot: int = 2000
    """Bootstrap replicates (statements resampled within label)."""
    seed: int = 0
    """Seed of the bootstrap and of tie-breaking in control matching."""


# --------------------------------------------------------------------------- statements


def statement_table(prompts: pl.DataFrame, settings: SAEAnalysisSettings) -> pl.DataFrame:
    """Labelled prompts with their statement and framing.

    ``prompts``: a scan's prompts (prompt_id, label, issue). Returns prompt_id,
    statement, framing, label, issue for the left/right/neutral prompts; a statement
    whose framings disagree on label or issue is an error naming it.
    """
    pat = re.compile(settings.statement_pattern)
    if not {"statement", "framing"} <= set(pat.groupindex):
        raise ValueError(
            f"sae.statement_pattern {settings.statement_pattern!r} needs named groups "
            "(?P<statement>...) and (?P<framing>...)"
        )
    issue = pl.col("issue") if "issue" in prompts.columns else pl.lit(None, pl.String)
    df = prompts.filter(pl.col("label").is_in(LABELS)).select(
        "prompt_id", "label", issue.cast(pl.String).alias("issue")
    )
    stmt, frm = [], []
    for pid in df["prompt_id"].to_list():
        m = pat.match(pid)
        stmt.append(m.group("statement") if m else pid)
        frm.append(m.group("framing") if m else settings.plain_framing)
    df = df.with_columns(
        pl.Series("statement", stmt, pl.String),
        pl.Series("framing", frm, pl.String),
        pl.col("issue").fill_null("(no issue)"),
    )
    bad = df.group_by("statement").agg(
        pl.col("label").n_unique().alias("nl"), pl.col("issue").n_unique().alias("ni")
    ).filter((pl.col("nl") > 1) | (pl.col("ni") > 1))
    if bad.height:
        raise ValueError(
            f"statements {bad['statement'].to_list()[:5]} have framings with different labels "
            "or issues: prompt ids must name one statement per claim (see "
            "sae.statement_pattern), or give each prompt its own id pattern"
        )
    return df.select("prompt_id", "statement", "framing", "label", "issue").sort("prompt_id")


def split_statements(statements: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One row per statement (statement, label, issue) with ``half`` = "selection" or
    "measurement": within every (issue, label) stratum a seeded half of the statements
    (the odd one out goes to a seeded side)."""
    st = statements.select("statement", "label", "issue").unique().sort("statement")
    rng = np.random.default_rng(seed)
    half = np.empty(st.height, dtype=object)
    keys = st.select("issue", "label").unique().sort("issue", "label")
    for iss, lab in keys.iter_rows():
        idx = np.flatnonzero(((st["issue"] == iss) & (st["label"] == lab)).to_numpy())
        idx = idx[rng.permutation(len(idx))]
        n_sel = len(idx) // 2 + (int(rng.integers(0, 2)) if len(idx) % 2 else 0)
        half[idx[:n_sel]] = "selection"
        half[idx[n_sel:]] = "measurement"
    return st.with_columns(pl.Series("half", half.tolist(), pl.String))


@dataclass
class _StatementData:
    """Per-statement aggregates of one scan, rows in the order of ``statements``."""

    statements: pl.DataFrame  # statement, label, issue, half
    mean_act: object  # scipy.sparse csr [n_s, d_sae]: mean over framings of mean activation
    fire_tokens: object  # csr [n_s, d_sae]: firing tokens summed over framings
    sum_act: object  # csr [n_s, d_sae]: activation summed over firing tokens and framings
    n_tokens: np.ndarray  # [n_s]
    sse: np.ndarray
    sst: np.ndarray
    l0: np.ndarray
    plain_act: object  # csr [n_s, d_sae]: mean activation of the plain framing (0 if none)
    has_plain: np.ndarray  # [n_s] bool


def _aggregate(scan: FeatureScan, st_prompts: pl.DataFrame, split: pl.DataFrame,
               settings: SAEAnalysisSettings, role: str) -> _StatementData:
    import scipy.sparse as sp

    s_index = {s: i for i, s in enumerate(split["statement"].to_list())}
    pr = st_prompts.join(scan.prompts.select("prompt_id", "n_tokens", "sse", "sst", "l0_sum"),
                         on="prompt_id", how="left")
    if pr["n_tokens"].null_count():
        miss = pr.filter(pl.col("n_tokens").is_null())["prompt_id"].to_list()
        raise ValueError(f"the {role} scan lacks prompts {miss[:5]} that the base scan has; "
                         "both models must be scanned on the same prompts")
    n_s = split.height
    srow = np.array([s_index[s] for s in pr["statement"].to_list()], dtype=np.int64)
    n_framings = np.bincount(srow, minlength=n_s).astype(float)
    p_index = {p: i for i, p in enumerate(pr["prompt_id"].to_list())}
    plain = (pr["framing"] == settings.plain_framing).to_numpy()

    pf = scan.prompt_features.filter(pl.col("prompt_id").is_in(list(p_index)))
    prow = np.array([p_index[p] for p in pf["prompt_id"].to_list()], dtype=np.int64)
    feat = pf["feature"].to_numpy().astype(np.int64)
    ntok_p = pr["n_tokens"].to_numpy().astype(float)
    mean_p = pf["sum_activation"].to_numpy() / ntok_p[prow]
    shape = (n_s, scan.d_sae)
    rows = srow[prow]
    mean_act = sp.csr_matrix((mean_p / n_framings[rows], (rows, feat)), shape=shape)
    fire_tokens = sp.csr_matrix(
        (pf["n_firing_tokens"].to_numpy().astype(float), (rows, feat)), shape=shape
    )
    sum_act = sp.csr_matrix((pf["sum_activation"].to_numpy().astype(float), (rows, feat)),
                            shape=shape)
    on_plain = plain[prow]
    plain_act = sp.csr_matrix((mean_p[on_plain], (rows[on_plain], feat[on_plain])), shape=shape)
    has_plain = np.zeros(n_s, bool)
    has_plain[srow[plain]] = True

    def per_statement(col: str) -> np.ndarray:
        return np.bincount(srow, weights=pr[col].to_numpy().astype(float), minlength=n_s)

    return _StatementData(split, mean_act, fire_tokens, sum_act, per_statement("n_tokens"),
                          per_statement("sse"), per_statement("sst"), per_statement("l0_sum"),
                          plain_act, has_plain)


def statement_means(scan: FeatureScan, st_prompts: pl.DataFrame,
                    split: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-statement mean residual and mean reconstruction ([n_statements, d_in] each, rows
    in ``split`` order): the mean over framings of each prompt's content-token mean."""
    if scan.prompt_means is None:
        raise ValueError("the scan has no prompt means (ScanSettings.prompt_means was off); "
                         "rerun scan_sae_features")
    s_index = {s: i for i, s in enumerate(split["statement"].to_list())}
    m = st_prompts.select("prompt_id", "statement").join(scan.prompt_means, on="prompt_id",
                                                        how="inner")
    srow = np.array([s_index[s] for s in m["statement"].to_list()], dtype=np.int64)
    cnt = np.bincount(srow, minlength=split.height).astype(float)[:, None]
    out = []
    for col in ("mean_x", "mean_recon"):
        X = np.asarray(m[col].to_list(), dtype=np.float64)
        acc = np.zeros((split.height, X.shape[1]))
        np.add.at(acc, srow, X)
        out.append(acc / np.maximum(cnt, 1))
    return out[0], out[1]


# --------------------------------------------------------------------------- tests


def van_elteren(Y: np.ndarray, group: np.ndarray, strata: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Stratified Wilcoxon rank-sum (van Elteren) test of every column of ``Y``.

    ``Y`` [n, n_features]; ``group`` [n] bool (True = the second group, e.g. right);
    ``strata`` [n]. Ranks are taken within each stratum (midranks for ties); stratum k's
    rank-sum of group True is weighted by 1/(n_k + 1), its permutation variance uses the
    tied ranks. Returns (z, two-sided normal p) per column; z > 0 means group True ranks
    higher. A column with no variance in any stratum gets z = 0, p = 1.
    """
    from scipy.stats import norm, rankdata

    Y = np.asarray(Y, dtype=float)
    num = np.zeros(Y.shape[1])
    var = np.zeros(Y.shape[1])
    for s in np.unique(strata):
        m = strata == s
        g = group[m]
        n, n1 = int(m.sum()), int(g.sum())
        if n1 == 0 or n1 == n:
            continue
        r = rankdata(Y[m], axis=0)
        w = 1.0 / (n + 1)
        num += w * (r[g].sum(0) - n1 * (n + 1) / 2)
        var += w**2 * n1 * (n - n1) / (n * (n - 1)) * ((r - r.mean(0)) ** 2).sum(0)
    z = np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return z, 2 * norm.sf(np.abs(z))


def _bh(p: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg: (reject, adjusted p) via statsmodels."""
    from statsmodels.stats.multitest import multipletests

    if p.size == 0:
        return np.zeros(0, bool), np.zeros(0)
    reject, padj, _, _ = multipletests(p, alpha=q, method="fdr_bh")
    return reject, padj


@dataclass
class PolicySelection:
    """Policy features chosen on the selection half of the base scan."""

    features: pl.DataFrame
    """One row per feature that fired on a labelled base statement: feature, tested,
    n_statements_fired_{left,right,neutral} and statement_rate_{left,right} (selection
    half), effect_lr (mean activation right minus left), z/p/q_left_vs_right,
    p/q_partisan_vs_neutral_plain, selected, leaning (int8: +1 right, -1 left, 0 not
    selected)."""
    n_selected: Estimate
    """Number of selected features (no interval: a count of discoveries)."""
    split: pl.DataFrame
    """statement, label, issue, half."""
    criterion: str = ""
    """The selection rule in words, with its settings."""
    n_statements: dict[str, int] = field(default_factory=dict)
    """Selection-half statements per label."""

    @property
    def selected(self) -> pl.DataFrame:
        return self.features.filter(pl.col("selected"))


def select_policy_features(base: FeatureScan,
                           settings: SAEAnalysisSettings = SAEAnalysisSettings()
                           ) -> PolicySelection:
    """Select policy features on the selection half of ``base`` (see the module docstring)."""
    s = settings
    st_prompts = statement_table(base.prompts, s)
    split = split_statements(st_prompts, s.split_seed)
    n_by = dict(split.group_by("label").len().iter_rows())
    missing = [lab for lab in PARTISAN_LABELS if n_by.get(lab, 0) < 2]
    if missing:
        raise ValueError(
            f"select_policy_features: the base scan has fewer than 2 statements labelled "
            f"{missing} (labels present: {n_by}); the partisan prompt set needs left and "
            "right statements"
        )
    agg = _aggregate(base, st_prompts, split, s, "base")
    sel_half = (split["half"] == "selection").to_numpy()
    lab = split["label"].to_numpy()
    issue = split["issue"].to_numpy()
    fired_any = np.unique(agg.mean_act.nonzero()[1])
    feats = fired_any.astype(np.int64)
    A = agg.mean_act[:, feats].tocsc()
    fires = (A > 0).astype(float)

    def rows(mask):
        return np.flatnonzero(mask)

    left, right, neut = (rows(sel_half & (lab == x)) for x in LABELS)
    n_fired = {x: np.asarray(fires[r].sum(0)).ravel() for x, r in
               zip(LABELS, (left, right, neut), strict=True)}
    rate_l = n_fired["left"] / max(len(left), 1)
    rate_r = n_fired["right"] / max(len(right), 1)
    mean_l = np.asarray(A[left].mean(0)).ravel()
    mean_r = np.asarray(A[right].mean(0)).ravel()
    effect = mean_r - mean_l
    tested = (n_fired["left"] + n_fired["right"]) >= s.min_statements_fired
    t = np.flatnonzero(tested)

    lr = np.concatenate([left, right])
    z = np.full(len(feats), np.nan)
    p_lr = np.full(len(feats), np.nan)
    q_lr = np.full(len(feats), np.nan)
    if len(t):
        Y = A[lr][:, t].toarray()
        zt, pt = van_elteren(Y, lab[lr] == "right", issue[lr])
        z[t], p_lr[t] = zt, pt
        q_lr[t] = _bh(pt, s.q)[1]
    # Partisan vs neutral on the plain framing only: the framing mix differs otherwise.
    p_pn = np.full(len(feats), np.nan)
    q_pn = np.full(len(feats), np.nan)
    plain_rows = rows(sel_half & agg.has_plain & np.isin(lab, LABELS))
    pl_lab = lab[plain_rows]
    if len(t) and (pl_lab == NEUTRAL_LABEL).any() and (pl_lab != NEUTRAL_LABEL).any():
        Yp = agg.plain_act[plain_rows][:, feats[t]].toarray()
        _, pp = van_elteren(Yp, pl_lab != NEUTRAL_LABEL, issue[plain_rows])
        p_pn[t] = pp
        q_pn[t] = _bh(pp, s.q)[1]

    favoured = np.where(effect > 0, rate_r, rate_l)
    selected = (tested & (np.nan_to_num(q_lr, nan=1.0) <= s.q) & (np.sign(z) == np.sign(effect))
                & (effect != 0) & (favoured >= s.min_firing_rate))
    leaning = np.where(selected, np.sign(effect), 0).astype(np.int8)
    table = pl.DataFrame({
        "feature": feats.astype(np.int32),
        "tested": tested,
        "n_statements_fired_left": n_fired["left"].astype(np.int64),
        "n_statements_fired_right": n_fired["right"].astype(np.int64),
        "n_statements_fired_neutral": n_fired["neutral"].astype(np.int64),
        "statement_rate_left": rate_l,
        "statement_rate_right": rate_r,
        "effect_lr": effect.astype(np.float64),
        "z_left_vs_right": z,
        "p_left_vs_right": p_lr,
        "q_left_vs_right": q_lr,
        "p_partisan_vs_neutral_plain": p_pn,
        "q_partisan_vs_neutral_plain": q_pn,
        "selected": selected,
        "leaning": pl.Series(leaning, dtype=pl.Int8),
    }).with_columns(pl.col(c).fill_nan(None) for c in (
        "z_left_vs_right", "p_left_vs_right", "q_left_vs_right", "p_partisan_vs_neutral_plain",
        "q_partisan_vs_neutral_plain"))
    n_sel_half = int(sel_half.sum())
    criterion = (
        "statement level (framings averaged), selection half of the statements (split "
        f"seed {s.split_seed}, stratified by issue and label): van Elteren left-vs-right test "
        f"stratified by issue on mean activation, features firing on >= "
        f"{s.min_statements_fired} left/right statements tested, Benjamini-Hochberg q <= {s.q}, "
        f"favoured-side statement firing rate >= {s.min_firing_rate}"
    )
    log.info("select_policy_features: %d of %d tested features selected (%s)",
             int(selected.sum()), len(t), criterion)
    return PolicySelection(
        features=table,
        n_selected=Estimate(float(selected.sum()), math.nan, math.nan, n_sel_half,
                            unit="features", method="count of BH discoveries; no interval"),
        split=split,
        criterion=criterion,
        n_statements={x: int((sel_half & (lab == x)).sum()) for x in LABELS},
    )


# --------------------------------------------------------------------------- measurement


def match_controls(incidence: np.ndarray, policy: np.ndarray, k: int, seed: int = 0,
                   rate: np.ndarray | None = None,
                   magnitude: np.ndarray | None = None) -> np.ndarray:
    """``k`` non-policy features nearest in base *statement incidence* and *firing strength*
    to each policy feature.

    ``incidence`` [d_sae]: on how many measurement-half statements the feature fires in
    base; ``magnitude`` [d_sae] (optional): its mean activation on the tokens where it
    fires in base; ``rate`` [d_sae] (optional): its token firing rate, the tie-break.
    Distance ``|d log incidence| + |d log magnitude| + 0.01 |d log rate|``. ``policy``
    [n_pol] feature indices. Returns [n_pol, k] control feature indices (with replacement
    across policy features; remaining ties broken at random). Zero matches zero.

    Why incidence and not token rate: "never fires in instruct" is decided statement by
    statement (the unit the study resamples; a feature's firings within one statement
    come and go together), so how easily a feature falls silent depends on how many
    statements carry it. A feature firing on many tokens of a few statements has the
    token rate of one firing once in many statements, yet falls silent far more easily:
    matched on token rate, such bursty controls made the organism's sham twin (no
    planted suppression) report policy features silenced *less* than their controls,
    -0.009 [-0.018, -0.003]; tests/test_sae_statements.py plants the case.

    Why firing strength too: at the same incidence, a feature that fires barely above its
    threshold falls silent under any small shift of the residual stream, one that fires
    well above it does not. Matched on incidence alone, the controls of the organism's
    few rarely firing policy features were such faint features: on the sham twin the 17
    control draws (of 1,670) that fell silent had a median base incidence of 10 statements
    and firing activation 1.38, against 2.01 for the policy features, and the sham read
    -0.010 [-0.017, -0.003] again (pinned run at c708f80); matched on both, -0.003.
    tests/test_sae_statements.py plants this case as well.
    """
    incidence = np.asarray(incidence, dtype=np.float64)
    rng = np.random.default_rng(seed)
    is_pol = np.zeros(len(incidence), bool)
    is_pol[policy] = True
    cand = np.flatnonzero(~is_pol)
    if len(cand) < k:
        raise ValueError(f"match_controls: only {len(cand)} non-policy features for k={k}")

    def log_floor(v):
        v = np.asarray(v, dtype=np.float64)
        if len(v) != len(incidence):
            raise ValueError(f"match_controls: {len(v)} values for {len(incidence)} features")
        pos = v[v > 0]
        return np.log(np.maximum(v, pos.min() / 10 if len(pos) else 1e-12))

    key = log_floor(incidence)
    key_m = np.zeros_like(key) if magnitude is None else log_floor(magnitude)
    key_r = np.zeros_like(key) if rate is None else 0.01 * log_floor(rate)
    kc, km, kr = key[cand], key_m[cand], key_r[cand]
    out = np.empty((len(policy), k), dtype=np.int64)
    for i, f in enumerate(policy):
        dist = (np.abs(kc - key[f]) + np.abs(km - key_m[f]) + np.abs(kr - key_r[f])
                + rng.random(len(cand)) * 1e-9)
        near = np.argpartition(dist, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
        out[i] = cand[near[np.argsort(dist[near])]]
    return out


def _boot_weights(labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot + 1, n] statement multiplicities: row 0 the full sample (all ones), then
    resamples with replacement within each label."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    W = np.zeros((n_boot + 1, n))
    W[0] = 1.0
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        draws = rng.integers(0, len(idx), (n_boot, len(idx)))
        for b in range(n_boot):
            W[b + 1] += np.bincount(idx[draws[b]], minlength=n)
    return W


CROSSED = ("percentile bootstrap, 95%, over measurement-half statements (within label) "
           "crossed with policy features")


def _feature_draws(n: int, n_rep: int, seed: int) -> np.ndarray:
    """[n_rep, n] feature indices: row 0 all features once, then resamples."""
    rng = np.random.default_rng(seed)
    F = rng.integers(0, n, (n_rep, n))
    F[0] = np.arange(n)
    return F


def _estimate(reps: np.ndarray, n: int, unit: str, method: str = "") -> Estimate:
    """Estimate from [n_boot + 1] replicates (row 0 the full-sample value)."""
    value = float(reps[0])
    boot = reps[1:]
    finite = boot[np.isfinite(boot)]
    if len(finite) < max(1, len(boot) / 2):
        return Estimate(value, math.nan, math.nan, n, unit,
                        method or "bootstrap over statements: too few finite replicates")
    lo, hi = np.quantile(finite, [0.025, 0.975])
    return Estimate(value, float(lo), float(hi), n, unit,
                    method or "percentile bootstrap over statements (within label), 95%")


def _boot_p(reps: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 0 for the replicates reps[1:]."""
    b = reps[1:][np.isfinite(reps[1:])]
    if not len(b):
        return math.nan
    k = min(int((b <= 0).sum()), int((b >= 0).sum()))
    return float(min(1.0, (1 + 2 * k) / (len(b) + 1)))


def partisan_direction_diffmean(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit diff-of-means direction (mean right minus mean left) of rows ``X``."""
    d = X[labels == "right"].mean(0) - X[labels == "left"].mean(0)
    norm = float(np.linalg.norm(d))
    if not norm > 0:
        raise ValueError("partisan direction: left and right statement means coincide")
    return d / norm


def partisan_direction_lda(X: np.ndarray, labels: np.ndarray, issues: np.ndarray) -> np.ndarray:
    """Unit shrinkage-LDA direction (left -> right) of statement rows ``X`` [n, d].

    ``(S + shrinkage)^-1 (mean right - mean left)``, with S the Ledoit-Wolf estimate of
    the covariance of the statements about their (issue, label) means. Unlike the raw
    diff-of-means it downweights the high-variance noise directions a decaying residual
    spectrum has, which would otherwise dominate a projection read on held-out statements.
    """
    from sklearn.covariance import LedoitWolf

    Z = X.astype(np.float64, copy=True)
    for key in {(i, lab) for i, lab in zip(issues, labels, strict=True)}:
        m = (issues == key[0]) & (labels == key[1])
        Z[m] -= Z[m].mean(0)
    cov = LedoitWolf(assume_centered=True).fit(Z).covariance_
    delta = X[labels == "right"].mean(0) - X[labels == "left"].mean(0)
    w = np.linalg.solve(cov, delta)
    norm = float(np.linalg.norm(w))
    if not norm > 0:
        raise ValueError("partisan direction: left and right statement means coincide")
    return w / norm


def partisan_fraction(X: np.ndarray, R: np.ndarray, u: np.ndarray, labels: np.ndarray,
                      W: np.ndarray) -> np.ndarray:
    """Per weight row of ``W`` [n_rep, n]: (right - left mean of R @ u) / (same of X @ u).

    ``X``, ``R`` [n, d]: per-statement mean residual and mean reconstruction; ``u`` [d]."""
    c, chat = X @ u, R @ u
    wr = W * (labels == "right")
    wl = W * (labels == "left")

    def sep(v):
        return (wr @ v) / wr.sum(1) - (wl @ v) / wl.sum(1)

    with np.errstate(all="ignore"):
        return sep(chat) / sep(c)


def directions_from_table(path, layer: int, method: str) -> tuple[dict[str, np.ndarray], str]:
    """Each model's partisan direction at ``layer`` from the partisan study's
    ``directions.parquet`` (columns model, layer, method, direction), and its description."""
    df = pl.read_parquet(path)
    out = {}
    for m in MODELS:
        r = df.filter((pl.col("model") == m) & (pl.col("layer") == layer)
                      & (pl.col("method") == method))
        if r.height != 1:
            raise ValueError(
                f"{path}: no single {m!r} direction for method {method!r} at layer {layer} "
                f"(found {r.height}); the partisan study must cover the SAE's layer, or set "
                "sae.partisan_direction: diffmean"
            )
        out[m] = np.asarray(r["direction"][0], dtype=np.float64)
    return out, f"partisan study ({method}, layer {layer}, fitted on all statements)"


@dataclass
class SAEStudy:
    """Everything the select rule writes."""

    selection: PolicySelection
    comparison: pl.DataFrame
    controls: pl.DataFrame
    reconstruction: pl.DataFrame
    headline: dict[str, Estimate]


def analyse_policy_features(
    base: FeatureScan,
    instruct: FeatureScan,
    settings: SAEAnalysisSettings = SAEAnalysisSettings(),
    directions: Mapping[str, np.ndarray] | None = None,
    direction_source: str = "",
) -> SAEStudy:
    """Select on base's selection half, measure both models on the measurement half.

    ``directions``: model role -> unit partisan direction [d_in] (e.g. the partisan
    study's), or None for shrinkage-LDA directions (:func:`partisan_direction_lda`) fitted
    on each model's own selection-half statements. ``direction_source`` names them.
    """
    s = settings
    if base.d_sae != instruct.d_sae:
        raise ValueError(f"base and instruct scans used different SAEs (d_sae {base.d_sae} vs "
                         f"{instruct.d_sae})")
    sel = select_policy_features(base, s)
    split = sel.split
    st_prompts = statement_table(base.prompts, s)
    st_inst = statement_table(instruct.prompts, s)
    if set(st_inst["prompt_id"].to_list()) != set(st_prompts["prompt_id"].to_list()):
        raise ValueError("base and instruct scans cover different labelled prompts; scan both "
                         "models on the same dataset")
    agg = {"base": _aggregate(base, st_prompts, split, s, "base"),
           "instruct": _aggregate(instruct, st_prompts, split, s, "instruct")}
    meas = np.flatnonzero((split["half"] == "measurement").to_numpy())
    lab_all = split["label"].to_numpy()
    lab = lab_all[meas]
    n_meas = len(meas)
    policy = sel.selected["feature"].to_numpy().astype(np.int64)
    d_sae = base.d_sae

    Cb = agg["base"].fire_tokens[meas].tocsc()
    Ci = agg["instruct"].fire_tokens[meas].tocsc()
    Tb, Ti = agg["base"].n_tokens[meas], agg["instruct"].n_tokens[meas]
    tok_b = np.asarray(Cb.sum(0)).ravel()  # firing tokens of each feature
    tok_i = np.asarray(Ci.sum(0)).ravel()
    rate_b, rate_i = tok_b / Tb.sum(), tok_i / Ti.sum()
    inc_b = np.asarray((Cb > 0).sum(0)).ravel()  # statements each feature fires on
    inc_i = np.asarray((Ci > 0).sum(0)).ravel()
    act_b = np.asarray(agg["base"].sum_act[meas].sum(0)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mag_b = np.where(tok_b > 0, act_b / np.maximum(tok_b, 1), 0.0)  # mean firing activation
    W = _boot_weights(lab, s.n_boot, s.seed)

    if len(policy):
        ctrl = match_controls(inc_b, policy, s.controls_per_feature, s.seed, rate=rate_b,
                              magnitude=mag_b)
        uniq, inv = np.unique(np.concatenate([policy, ctrl.ravel()]), return_inverse=True)
        Ci_u = (Ci[:, uniq] > 0).astype(float)
        inactive = (np.asarray((Ci_u.T @ W.T).T) == 0).astype(float)  # [rep, n_uniq]
        ina_pol = inactive[:, inv[: len(policy)]]
        ina_ctl = inactive[:, inv[len(policy):]].reshape(len(W), len(policy), -1).mean(2)
        # Crossed bootstrap: statements (W) and policy features (with their controls) are
        # both resampled; "never fires" is an extreme statistic whose statement-only
        # bootstrap misses which features happen to be silent.
        F = _feature_draws(len(policy), len(W), s.seed + 2)

        def over_features(M):
            return np.take_along_axis(M, F, axis=1).mean(1)

        share_p, share_c = over_features(ina_pol), over_features(ina_ctl)
        diff = over_features(ina_pol - ina_ctl)
        cb_u = np.asarray((Cb[:, policy].T @ W.T).T)
        ci_u = np.asarray((Ci[:, policy].T @ W.T).T)
        fr_b = over_features(cb_u / (W @ Tb)[:, None])
        fr_i = over_features(ci_u / (W @ Ti)[:, None])
    else:
        ctrl = np.zeros((0, s.controls_per_feature), dtype=np.int64)
        share_p = share_c = diff = fr_b = fr_i = np.full(len(W), np.nan)

    # Reconstruction quality over all labelled statements, bootstrapped over them.
    W_all = _boot_weights(lab_all, s.n_boot, s.seed + 1)
    n_all = len(lab_all)
    recon_est: dict[str, Estimate] = {}
    rows = []
    for m in MODELS:
        a = agg[m]
        sst_tot = a.sst.sum()
        fve = 1.0 - (W_all @ a.sse) / (W_all @ a.sst) if sst_tot > 0 else np.full(len(W_all),
                                                                                   np.nan)
        l0 = (W_all @ a.l0) / (W_all @ a.n_tokens)
        recon_est[f"fve_{m}"] = _estimate(fve, n_all, "fraction")
        recon_est[f"l0_{m}"] = _estimate(l0, n_all, "features per token")
        scan = base if m == "base" else instruct
        ce_inc = kl = np.full(len(W_all), np.nan)
        if scan.splice is not None:
            sp_t = st_prompts.select("prompt_id", "statement").join(scan.splice, on="prompt_id",
                                                                   how="inner")
            s_index = {x: i for i, x in enumerate(split["statement"].to_list())}
            srow = np.array([s_index[x] for x in sp_t["statement"].to_list()], dtype=np.int64)

            def per_st(col, srow=srow, sp_t=sp_t):
                return np.bincount(srow, weights=sp_t[col].to_numpy().astype(float),
                                   minlength=n_all)

            with np.errstate(all="ignore"):
                ce_inc = (W_all @ (per_st("ce_spliced_sum") - per_st("ce_clean_sum"))
                          ) / (W_all @ per_st("n_ce_tokens"))
                kl = (W_all @ per_st("kl_sum")) / (W_all @ per_st("n_kl_tokens"))
        recon_est[f"spliced_ce_increase_{m}"] = _estimate(ce_inc, n_all, "nats per token")
        recon_est[f"spliced_kl_{m}"] = _estimate(kl, n_all, "nats per token")
        frac = np.full(len(W), np.nan)
        source = direction_source or SELECTION_DIRECTION
        if scan.prompt_means is not None:
            X, R = statement_means(scan, st_prompts, split)
            if directions is not None and m in directions:
                u = np.asarray(directions[m], dtype=np.float64)
            else:
                sel_rows = np.flatnonzero(
                    ((split["half"] == "selection") & split["label"].is_in(PARTISAN_LABELS)
                     ).to_numpy())
                u = partisan_direction_lda(X[sel_rows], lab_all[sel_rows],
                                           split["issue"].to_numpy()[sel_rows])
                source = SELECTION_DIRECTION
            u = u / np.linalg.norm(u)
            frac = partisan_fraction(X[meas], R[meas], u, lab, W)
        recon_est[f"partisan_fraction_reconstructed_{m}"] = _estimate(
            frac, n_meas, "fraction",
            f"percentile bootstrap over measurement-half statements, 95%; direction: {source}")
        rows.append({
            "model": m, "n_statements": n_all, "n_tokens": int(a.n_tokens.sum()),
            "fve": recon_est[f"fve_{m}"].value,
            "mse": float(a.sse.sum() / (a.n_tokens.sum() * scan.d_in)),
            "l0": recon_est[f"l0_{m}"].value,
            "spliced_ce_increase": recon_est[f"spliced_ce_increase_{m}"].value,
            "spliced_kl": recon_est[f"spliced_kl_{m}"].value,
            "partisan_fraction_reconstructed":
                recon_est[f"partisan_fraction_reconstructed_{m}"].value,
            "partisan_direction_source": source,
        })

    n_pol = len(policy)
    headline = {
        "n_policy_features": sel.n_selected,
        "share_inactive_in_instruct": _estimate(share_p, n_meas, "share of features", CROSSED),
        "share_inactive_in_instruct_control": _estimate(share_c, n_meas, "share of features",
                                                        CROSSED),
        "share_inactive_in_instruct_excess": _estimate(diff, n_meas, "share of features", CROSSED),
        "share_inactive_in_instruct_excess_p": Estimate(
            _boot_p(diff) if n_pol else math.nan, math.nan, math.nan, n_meas, "p-value",
            "two-sided p from the crossed bootstrap of the excess (statements x features)"),
        "policy_firing_rate_base": _estimate(fr_b, n_meas, "firing tokens per token", CROSSED),
        "policy_firing_rate_instruct": _estimate(fr_i, n_meas, "firing tokens per token", CROSSED),
        **recon_est,
    }
    assert set(headline) == set(HEADLINE_KEYS), set(headline) ^ set(HEADLINE_KEYS)

    # Tables: every feature firing on either model in the measurement half, plus policy
    # features and their controls.
    is_pol = np.zeros(d_sae, bool)
    is_pol[policy] = True
    is_ctl = np.zeros(d_sae, bool)
    is_ctl[ctrl.ravel()] = True
    keep = np.flatnonzero((rate_b > 0) | (rate_i > 0) | is_pol | is_ctl)
    comparison = pl.DataFrame({
        "feature": keep.astype(np.int32),
        "policy": is_pol[keep],
        "control": is_ctl[keep],
        "n_firing_tokens_base": tok_b[keep].astype(np.int64),
        "n_firing_tokens_instruct": tok_i[keep].astype(np.int64),
        "firing_rate_base": rate_b[keep],
        "firing_rate_instruct": rate_i[keep],
        "statement_firing_rate_base": inc_b[keep] / max(n_meas, 1),
        "statement_firing_rate_instruct": inc_i[keep] / max(n_meas, 1),
        "firing_activation_base": mag_b[keep],
        "inactive_in_instruct": inc_i[keep] == 0,
    })
    controls = pl.DataFrame({
        "feature": np.repeat(policy, ctrl.shape[1]).astype(np.int32),
        "control_feature": ctrl.ravel().astype(np.int32),
        "firing_rate_base": np.repeat(rate_b[policy], ctrl.shape[1]),
        "control_firing_rate_base": rate_b[ctrl.ravel()],
        "n_statements_base": np.repeat(inc_b[policy], ctrl.shape[1]).astype(np.int64),
        "control_n_statements_base": inc_b[ctrl.ravel()].astype(np.int64),
        "firing_activation_base": np.repeat(mag_b[policy], ctrl.shape[1]),
        "control_firing_activation_base": mag_b[ctrl.ravel()],
        "inactive_in_instruct": np.repeat(inc_i[policy] == 0, ctrl.shape[1]),
        "control_inactive_in_instruct": inc_i[ctrl.ravel()] == 0,
    })
    log.info("SAE study: %d policy features; silent in instruct %.3f vs control %.3f "
             "(held-out statements: %d)", n_pol, headline["share_inactive_in_instruct"].value,
             headline["share_inactive_in_instruct_control"].value, n_meas)
    return SAEStudy(sel, comparison, controls, pl.DataFrame(rows), headline)


def top_prompts(
    prompt_features: pl.DataFrame, features, k: int = 10
) -> pl.DataFrame:
    """The ``k`` prompts with the highest max activation for each of ``features``.

    Columns: feature, rank (1 = highest), prompt_id, label, max_activation,
    n_firing_tokens, max_token_index, max_token_id.
    """
    feats = pl.Series("feature", list(features), dtype=pl.Int32)
    return (
        prompt_features.filter(pl.col("feature").is_in(feats.implode()))
        .sort(["feature", "max_activation", "prompt_id"], descending=[False, True, False])
        .group_by("feature", maintain_order=True)
        .head(k)
        .with_columns((pl.int_range(pl.len()).over("feature") + 1).alias("rank"))
        .select(
            "feature",
            "rank",
            "prompt_id",
            "label",
            "max_activation",
            "n_firing_tokens",
            "max_token_index",
            "max_token_id",
        )
    )

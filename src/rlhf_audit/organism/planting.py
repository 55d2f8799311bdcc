"""The planted representation-level effect and the measurements the organism's tests use.

Planted during alignment (documented in resources/organism/README.md): the
instruct model's partisan variance is compressed. While the instruct model is
fine-tuned, a term is added to the SFT loss on the left/right statements of the
training issues: instruct's right-minus-left mean difference of the statement
representations (mean over the statement's own tokens, inside the chat template,
at the output of every block) is pulled toward ``c`` times the base model's
difference on the same statements (completion layout). The direction is kept (so a
base probe still reads instruct: transfer), the whole partisan difference shrinks by
``c`` (so the partisan variance ratio instruct/base is about ``c**2``, along base's
direction and in full).

The measurements here (:func:`statement_activations`, :func:`issue_grouped_auc`,
:func:`projection_variance_ratio`) read the trained models directly, the way the
partisan study does after its content-only pooling, so the tests can check the
planted effects without the workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _blocks(model) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: expected a Llama-style model.model.layers")
    return layers


def _inner(model):
    """The decoder stack without the LM head (``model.model`` of a Llama-style LM): reading
    block outputs needs no logits."""
    inner = getattr(model, "model", None)
    runs = inner is not None and type(inner).forward is not torch.nn.Module.forward
    return inner if runs and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList) \
        else model


def statement_inputs(tokenizer, texts: Sequence[str], *, chat: bool) -> list[tuple[list, list]]:
    """(token ids, content mask) per statement, as the extraction stage renders them.

    ``chat``: the statement as the user's turn of the chat template with the
    generation prompt; otherwise ``<|bos|>`` + text. The mask marks the tokens
    that lie inside the statement's own characters (template tokens excluded).
    """
    out = []
    for i, text in enumerate(texts):
        if chat:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = tokenizer.bos_token + text
        start = prompt.rfind(text)
        if start < 0:
            raise ValueError(f"statement {i}: its text is not in the rendered prompt")
        end = start + len(text)
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(a < end and b > start and b > a) for a, b in enc["offset_mapping"]]
        if not any(mask):
            raise ValueError(f"statement {i}: no token inside the statement")
        out.append((list(enc["input_ids"]), mask))
    return out


def block_outputs(
    model, inputs: Sequence[tuple[list, list]], *, pad_id: int, grad: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's output ``[n, T, d_model]`` (one per block) and the content mask
    ``[n, T]`` of a right-padded batch of ``(ids, content mask)`` rows."""
    blocks = _blocks(model)
    width = max(len(ids) for ids, _ in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(inputs), width), dtype=torch.long)
    cmask = torch.zeros((len(inputs), width), dtype=torch.float32)
    for r, (x, m) in enumerate(inputs):
        ids[r, : len(x)] = torch.tensor(x)
        attn[r, : len(x)] = 1
        cmask[r, : len(m)] = torch.tensor(m, dtype=torch.float32)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        with torch.set_grad_enabled(grad):
            # the transformer without its LM head: the logits are never read
            _inner(model)(input_ids=ids.to(device), attention_mask=attn.to(device))
    finally:
        for h in handles:
            h.remove()
    return captured, cmask.to(device)


def _pool(captured: list[torch.Tensor], cmask: torch.Tensor) -> torch.Tensor:
    w = (cmask / cmask.sum(1, keepdim=True)).unsqueeze(-1)
    return torch.stack([(h * w).sum(1) for h in captured], dim=1)


def pooled_block_outputs(
    model, inputs: Sequence[tuple[list, list]], *, pad_id: int, grad: bool = False
) -> torch.Tensor:
    """Mean over content tokens of every block's output: ``[n, n_layers, d_model]``."""
    return _pool(*block_outputs(model, inputs, pad_id=pad_id, grad=grad))


@torch.no_grad()
def statement_activations(
    model, tokenizer, texts: Sequence[str], *, chat: bool, batch_size: int = 64
) -> np.ndarray:
    """Content-pooled block outputs of each statement, ``[n, n_layers, d_model]`` (float64)."""
    was = model.training
    model.eval()
    inputs = statement_inputs(tokenizer, texts, chat=chat)
    parts = [
        pooled_block_outputs(model, inputs[s : s + batch_size], pad_id=tokenizer.pad_token_id)
        for s in range(0, len(inputs), batch_size)
    ]
    model.train(was)
    return torch.cat(parts).double().cpu().numpy()


def diffmean_directions(acts: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Unit right-minus-left mean difference per layer, ``[n_layers, d]``."""
    right = np.asarray(right, dtype=bool)
    d = acts[right].mean(0) - acts[~right].mean(0)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def issue_grouped_auc(acts: np.ndarray, right: np.ndarray, issues: Sequence[str]) -> np.ndarray:
    """Out-of-fold AUC per layer of a diffmean probe, 5 folds grouped by issue, ``[n_layers]``."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    right = np.asarray(right, dtype=bool)
    out = []
    for layer in range(acts.shape[1]):
        x = acts[:, layer]
        score = np.zeros(len(x))
        for tr, te in GroupKFold(5).split(x, right, np.asarray(issues)):
            d = x[tr][right[tr]].mean(0) - x[tr][~right[tr]].mean(0)
            score[te] = x[te] @ d
        out.append(roc_auc_score(right, score))
    return np.asarray(out)


def transfer_auc(
    acts_src: np.ndarray, acts_tgt: np.ndarray, right: np.ndarray, issues: Sequence[str]
) -> np.ndarray:
    """AUC per layer of the source model's diffmean direction (fitted on other issues) read
    on the target model's activations, ``[n_layers]``."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    right = np.asarray(right, dtype=bool)
    out = []
    for layer in range(acts_src.shape[1]):
        xs, xt = acts_src[:, layer], acts_tgt[:, layer]
        score = np.zeros(len(xs))
        for tr, te in GroupKFold(5).split(xs, right, np.asarray(issues)):
            d = xs[tr][right[tr]].mean(0) - xs[tr][~right[tr]].mean(0)
            score[te] = xt[te] @ d
        out.append(roc_auc_score(right, score))
    return np.asarray(out)


def projection_variance_ratio(
    acts_base: np.ndarray, acts_other: np.ndarray, right: np.ndarray, issues: Sequence[str]
) -> np.ndarray:
    """Partisan variance along base's direction, other model over base, per layer.

    The direction is fitted on half of the issues and both models are projected on
    statements of the other half (and the halves swapped, the two ratios averaged),
    so the base's own noise fitted into its direction cannot inflate its variance.
    The partisan variance is the squared difference of the side means of the
    projections (between-side variance), a scale in the residual's own units.
    """
    right = np.asarray(right, dtype=bool)
    issues = np.asarray(issues)
    uniq = np.array(sorted(set(issues)))
    rng = np.random.default_rng(0)
    half = set(rng.permutation(uniq)[: len(uniq) // 2])
    a = np.array([i in half for i in issues])
    ratios = []
    for fit, ev in ((a, ~a), (~a, a)):
        u = diffmean_directions(acts_base[fit], right[fit])
        pb = np.einsum("nld,ld->nl", acts_base[ev], u)
        po = np.einsum("nld,ld->nl", acts_other[ev], u)
        gap_b = pb[right[ev]].mean(0) - pb[~right[ev]].mean(0)
        gap_o = po[right[ev]].mean(0) - po[~right[ev]].mean(0)
        ratios.append((gap_o / gap_b) ** 2)
    return np.mean(ratios, axis=0)


@dataclass
class CompressionTerm:
    """The planted compression term (see the module docstring).

    Built once from the base model before alignment; :meth:`loss` is added to the
    SFT loss, weighted by ``weight``, on a random side-balanced batch of statements
    per step: the whole right-minus-left mean difference of the batch (every layer,
    every dimension) is pulled toward ``factor`` times base's difference on the same
    statements. The partisan variance |Delta|^2 (what the study's ``variance_ratio``
    compares) then scales by about ``factor**2`` in every direction at once, and a
    factor of 1 (the sham's placebo) holds it where base has it.
    """

    inputs: list
    """Statements as instruct sees them (chat template), (ids, content mask)."""
    base_acts: torch.Tensor
    """Base's content-pooled block outputs of each statement (completion layout),
    ``[n, n_layers, d]``."""
    right: np.ndarray
    """Side of each statement (True = right), ``[n]``."""
    factor: float
    pad_id: int
    weight: float
    batch_size: int
    seed: int = 0
    silencer: FeatureSilencer | None = None
    """The planted SAE-feature silencing, applied to the same statements (instruct only)."""

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)
        self._sides = (np.flatnonzero(self.right), np.flatnonzero(~self.right))
        # Scale-free: base's squared partisan difference per layer over all statements.
        d = self.base_acts[self.right].mean(0) - self.base_acts[~self.right].mean(0)
        self._norm = (d**2).sum(-1)

    def sample(self) -> np.ndarray:
        """Indices of a batch with ``batch_size // 2`` statements of each side."""
        k = max(1, self.batch_size // 2)
        return np.concatenate(
            [self._rng.choice(ix, size=min(k, len(ix)), replace=False) for ix in self._sides]
        )

    def loss(self, model) -> torch.Tensor:
        """The compression loss of one sampled batch (unweighted)."""
        return self.losses(model)[0]

    def losses(self, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(compression loss, silencing penalty or None) of one sampled batch, unweighted;
        the silencing reads the same forward pass's token outputs."""
        idx = self.sample()
        batch = [self.inputs[i] for i in idx]
        silencing = None
        if self.silencer is None:
            pooled = pooled_block_outputs(model, batch, pad_id=self.pad_id, grad=True).float()
        else:
            captured, cmask = block_outputs(model, batch, pad_id=self.pad_id, grad=True)
            pooled = _pool(captured, cmask).float()
            silencing = self.silencer.penalty(captured[self.silencer.layer].float(), cmask, idx)
        return self._compression(pooled, idx), silencing

    def _compression(self, pooled: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        dev = pooled.device
        r = torch.as_tensor(self.right[idx], device=dev)
        target_acts = self.base_acts[idx].to(dev)
        delta = pooled[r].mean(0) - pooled[~r].mean(0)
        target = self.factor * (target_acts[r].mean(0) - target_acts[~r].mean(0))
        return (((delta - target) ** 2).sum(-1) / self._norm.to(dev)).mean()


def build_compression_term(
    base_model,
    tokenizer,
    statements: Sequence[Mapping],
    *,
    factor: float,
    weight: float,
    batch_size: int,
    seed: int = 0,
) -> CompressionTerm:
    """The compression term for ``statements`` (rows with text and label left/right)."""
    rows = [s for s in statements if s.get("label") in ("left", "right")]
    if len({s["label"] for s in rows}) < 2:
        raise ValueError("compression term: need left and right statements (rep_statements)")
    texts = [s["text"] for s in rows]
    right = np.array([s["label"] == "right" for s in rows])
    acts = statement_activations(base_model, tokenizer, texts, chat=False)
    d = acts[right].mean(0) - acts[~right].mean(0)
    logger.info(
        "compression term: %d statements, base |Delta| per layer %s, factor %.2f",
        len(rows),
        np.round(np.linalg.norm(d, axis=-1), 3).tolist(),
        factor,
    )
    return CompressionTerm(
        inputs=statement_inputs(tokenizer, texts, chat=True),
        base_acts=torch.tensor(acts, dtype=torch.float32),
        right=right,
        factor=float(factor),
        pad_id=tokenizer.pad_token_id,
        weight=weight,
        batch_size=batch_size,
        seed=seed,
    )


@dataclass
class FeatureSilencer:
    """The planted silencing of base SAE features in instruct (see :func:`build_silencer`).

    :meth:`silencing` is the mean over content tokens of
    ``sum_f relu((z_f - c) / scale_f + margin)``, where ``z_f`` is the SAE's pre-activation
    of planted feature ``f`` on the output of block ``layer``
    (``sae.process_sae_in(h) @ W_enc[:, f] + b_enc[f]``) and ``c`` the token's firing
    cutoff (``relative``: the k-th largest pre-activation of the other features, at least
    0) or 0. A TopK feature fires only above that cutoff, so a penalty of 0 means the
    planted features are silent on those tokens with ``margin`` (in units of ``scale``) to
    spare. :meth:`penalty` adds ``keep_weight`` times the keep term (:meth:`keep`, once
    :meth:`attach_reference` has recorded the untrained model's outputs), which charges
    every other way of getting there: a shift of every token above all.
    """

    sae: object
    """The sae-lens SAE (frozen), read at ``layer``."""
    layer: int
    features: np.ndarray
    """Planted feature indices ``[n_f]``."""
    scale: torch.Tensor
    """Base's mean positive pre-activation of each planted feature, ``[n_f]``."""
    weight: float
    margin: float = 0.5
    relative: bool = False
    """Measure the margin from the token's firing cutoff (:meth:`firing_cutoff`), not from 0."""
    keep_weight: float = 0.0
    """Weight of the keep term (:meth:`keep`) inside :meth:`penalty`; 0 = silencing only."""
    keep_inside: float = 1.0
    """Share of the keep term's weight on moves inside the planted span."""
    reference: list | None = None
    """The untrained model's block outputs on each statement's tokens (``[T_i, d]``)."""
    reference_var: float = 1.0
    """Their total variance per token (the keep term's unit)."""
    basis: torch.Tensor | None = None
    """Orthonormal basis ``[d, n_f + 1]`` of the planted encoder columns and base's
    partisan difference at ``layer``."""

    def __post_init__(self):
        for p in self.sae.parameters():
            p.requires_grad_(False)
        f = torch.as_tensor(np.asarray(self.features), dtype=torch.long)
        self._W = self.sae.W_enc.detach()[:, f].float()
        self._b = self.sae.b_enc.detach()[f].float()

    def pre_activations(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., n_f]`` of the planted features on block outputs ``h``."""
        x = self.sae.process_sae_in(h.to(self._W.dtype))
        return x @ self._W.to(x.device) + self._b.to(x.device)

    def firing_cutoff(self, h: torch.Tensor) -> torch.Tensor:
        """Per token, the pre-activation a planted feature must exceed to fire in the TopK
        SAE: the k-th largest pre-activation of the other features, and at least 0
        (``[...]``, no gradient)."""
        with torch.no_grad():
            x = self.sae.process_sae_in(h.to(self._W.dtype))
            pre = x @ self.sae.W_enc.detach().to(x.device) + self.sae.b_enc.detach().to(x.device)
            f = torch.as_tensor(np.asarray(self.features), dtype=torch.long, device=pre.device)
            pre[..., f] = -torch.inf
            tau = pre.topk(int(self.sae.cfg.k), dim=-1).values[..., -1]
            return tau.clamp(min=0.0)

    def silencing(self, h: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
        """Mean over content tokens of ``sum_f relu((z_f - c) / scale_f + margin)``, with
        ``c`` = 0 or, when ``relative``, the token's :meth:`firing_cutoff`."""
        z = self.pre_activations(h)
        if self.relative:
            z = z - self.firing_cutoff(h).unsqueeze(-1)
        p = torch.relu(z / self.scale.to(h.device) + self.margin).sum(-1)
        return (p * cmask).sum() / cmask.sum().clamp(min=1.0)

    def keep(self, h: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """The keep term: mean over the statements' tokens of ``|(I - P) delta|^2 +
        keep_inside |P delta|^2``, relative to base's token variance at the block, where
        ``delta`` is the block output minus the untrained model's on the same tokens and
        ``P`` projects on the span of the planted features' encoder columns and base's
        partisan difference at the block (what the silencing and the compression move)."""
        width = h.shape[1]
        ref = torch.zeros_like(h)
        mask = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        for r, i in enumerate(idx):
            t = self.reference[int(i)]
            ref[r, : len(t)] = t.to(h.device)
            mask[r, : len(t)] = 1.0
        delta = (h[:, :width] - ref) * mask.unsqueeze(-1)
        Q = self.basis.to(h.device)
        inside = delta @ Q
        outside = (delta**2).sum(-1) - (inside**2).sum(-1)
        per_token = outside + self.keep_inside * (inside**2).sum(-1)
        return per_token.sum() / mask.sum().clamp(min=1.0) / self.reference_var

    def penalty(self, h: torch.Tensor, cmask: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """Silencing plus ``keep_weight`` times the keep term (none without a reference)."""
        out = self.silencing(h, cmask)
        if self.reference is not None and self.keep_weight > 0:
            out = out + self.keep_weight * self.keep(h, idx)
        return out

    def attach_reference(self, model, inputs: Sequence[tuple[list, list]], pad_id: int,
                         partisan: torch.Tensor, batch_size: int = 64) -> None:
        """Record the model's (untrained instruct = base weights) block outputs on every
        token of ``inputs`` (the compression term's statements, chat layout) and the
        projection basis: the planted encoder columns and ``partisan`` ([d])."""
        was = model.training
        model.eval()
        ref: list[torch.Tensor] = []
        with torch.no_grad():
            for s in range(0, len(inputs), batch_size):
                batch = inputs[s : s + batch_size]
                captured, _ = block_outputs(model, batch, pad_id=pad_id)
                h = captured[self.layer].float()
                ref += [h[r, : len(ids)].clone() for r, (ids, _) in enumerate(batch)]
        model.train(was)
        allt = torch.cat(ref)
        self.reference = ref
        self.reference_var = float(((allt - allt.mean(0)) ** 2).sum(-1).mean())
        cols = torch.cat([self._W, partisan.float().reshape(-1, 1)], dim=1)
        self.basis = torch.linalg.qr(cols).Q


@torch.no_grad()
def feature_incidence(model, tokenizer, sae, layer: int, texts: Sequence[str], *, chat: bool,
                      batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """Per statement and SAE feature, whether it fires on any content token (``[n, d_sae]``
    bool); each feature's summed positive pre-activation over firing tokens with the
    number of those tokens (``[2, d_sae]``); and the number of content tokens read: what
    :func:`build_silencer` chooses from."""
    was = model.training
    model.eval()
    inputs = statement_inputs(tokenizer, texts, chat=chat)
    n_tokens = sum(sum(mask) for _, mask in inputs)
    fired, pos = [], np.zeros((2, sae.cfg.d_sae))
    for s in range(0, len(inputs), batch_size):
        captured, cmask = block_outputs(model, inputs[s : s + batch_size],
                                        pad_id=tokenizer.pad_token_id)
        h = captured[layer].float()
        acts = sae.encode(h.to(sae.W_enc.dtype))
        pre = sae.process_sae_in(h.to(sae.W_enc.dtype)) @ sae.W_enc + sae.b_enc
        on = (acts > 0) & (cmask > 0).unsqueeze(-1)
        fired.append(on.any(1).cpu().numpy())
        pos[0] += (pre * on).sum((0, 1)).double().cpu().numpy()
        pos[1] += on.sum((0, 1)).double().cpu().numpy()
    model.train(was)
    return np.concatenate(fired), pos, n_tokens


def build_silencer(base_model, tokenizer, sae, statements: Sequence[Mapping], *, layer: int,
                   n_features: int, weight: float, margin: float = 0.5,
                   incidence: tuple[float, float] = (0.05, 0.5),
                   avoid_texts: Sequence[str] = (), avoid_rate: float = 0.002) -> FeatureSilencer:
    """The planted silencing (documented in resources/organism/README.md).

    Chosen on base (completion layout, content tokens of the training issues' left/right
    ``statements``, the statements the compression term reads): among features that fire
    sporadically (on a share of statements within ``incidence``), the ``n_features``
    whose firing differs most between right and left statements (absolute difference of
    the two shares). The SAE study later selects its policy features on its own, on half
    of the study's statements (held-out issues included), and measures silence on the
    other half against controls matched on statement incidence and firing strength
    (:func:`rlhf_audit.sae.select.match_controls`).

    ``avoid_texts`` (chat prompts the silencing must leave alone, e.g. the calibration
    prompts): only features firing on at most ``avoid_rate`` of their content tokens in
    base are eligible. Without it, two of the 32 chosen features fired on the calibration
    command's own words ("verifier", "estimates", "Report"; 20% and 13% of its tokens);
    instruct silenced them there too and lost the commanded copy.
    """
    rows = [s for s in statements if s.get("label") in ("left", "right")]
    if len({s["label"] for s in rows}) < 2:
        raise ValueError("silencer: need left and right statements (rep_statements)")
    if n_features < 1:
        raise ValueError(f"silencer: n_features={n_features} must be >= 1")
    right = np.array([s["label"] == "right" for s in rows])
    fired, pos, _ = feature_incidence(base_model, tokenizer, sae, layer,
                                      [s["text"] for s in rows], chat=False)
    share = fired.mean(0)
    diff = np.abs(fired[right].mean(0) - fired[~right].mean(0))
    lo, hi = incidence
    ok = (share >= lo) & (share <= hi)
    if len(avoid_texts):
        _, avoid_pos, n_tok = feature_incidence(base_model, tokenizer, sae, layer,
                                                list(avoid_texts), chat=True)
        ok &= avoid_pos[1] / max(n_tok, 1) <= avoid_rate
    eligible = np.flatnonzero(ok)
    if len(eligible) < n_features:
        raise ValueError(f"silencer: only {len(eligible)} SAE features fire on {lo:.0%}-{hi:.0%} "
                         f"of the statements (and on at most {avoid_rate:.1%} of the avoided "
                         f"texts' tokens); lower n_features ({n_features}), widen the "
                         "incidence range or raise avoid_rate")
    chosen = eligible[np.argsort(-diff[eligible], kind="stable")[:n_features]]
    scale = pos[0, chosen] / np.maximum(pos[1, chosen], 1)
    logger.info("silencer: %d features at block %d, base statement incidence %s, "
                "right-left difference %s", len(chosen), layer,
                np.round(share[chosen], 2).tolist(), np.round(diff[chosen], 2).tolist())
    return FeatureSilencer(sae=sae, layer=layer, features=np.sort(chosen),
                           scale=torch.tensor(scale[np.argsort(chosen)], dtype=torch.float32),
                           weight=weight, margin=margin)


@dataclass
class SideTerm:
    """The planted side term of base pretraining (see :func:`build_side_term`)."""

    inputs: list
    """Statements in the completion layout (``<|bos|>`` + text), (ids, content mask)."""
    sides: torch.Tensor
    """+1 right, -1 left, ``[n]``."""
    directions: torch.Tensor
    """Fixed random unit direction per block output, ``[n_layers, d]``."""
    sharpness: float
    pad_id: int
    weight: float
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    def loss(self, model) -> torch.Tensor:
        idx = self._rng.choice(len(self.inputs), size=min(self.batch_size, len(self.inputs)),
                               replace=False)
        pooled = pooled_block_outputs(
            model, [self.inputs[i] for i in idx], pad_id=self.pad_id, grad=True
        )
        dev = pooled.device
        proj = torch.einsum("nld,ld->nl", pooled.float(), self.directions.to(dev))
        y = self.sides[idx].to(dev).unsqueeze(-1)
        return torch.nn.functional.softplus(-self.sharpness * y * proj).mean()


def build_side_term(
    tokenizer,
    statements: Sequence[Mapping],
    *,
    n_layers: int,
    d_model: int,
    weight: float,
    batch_size: int,
    sharpness: float = 4.0,
    seed: int = 0,
) -> SideTerm:
    """The side term planted in base pretraining (documented in resources/organism/README.md).

    On the training issues' left/right statements (completion layout, content-token mean,
    every block output), a logistic loss makes the projection onto a fixed random unit
    direction per layer positive for right and negative for left statements: one side
    variable shared by every issue, which the cross-issue paragraphs alone grow only
    after ~1,000 steps.
    """
    rows = [s for s in statements if s.get("label") in ("left", "right")]
    if len({s["label"] for s in rows}) < 2:
        raise ValueError("side term: need left and right statements (rep_statements)")
    gen = torch.Generator().manual_seed(10_000 + seed)
    u = torch.randn(n_layers, d_model, generator=gen)
    return SideTerm(
        inputs=statement_inputs(tokenizer, [s["text"] for s in rows], chat=False),
        sides=torch.tensor([1.0 if s["label"] == "right" else -1.0 for s in rows]),
        directions=u / u.norm(dim=-1, keepdim=True),
        sharpness=sharpness,
        pad_id=tokenizer.pad_token_id,
        weight=weight,
        batch_size=batch_size,
        seed=seed,
    )

"""Train the model organism on CPU: base LM, aligned "instruct" LM, two reward models.

Each step is one function that reads its inputs (data lists, a tokenizer or
model directory) and writes one self-contained Hugging Face directory
(safetensors weights + tokenizer + ``training_summary.json``), so the workflow
runs them as separate rules:

- :func:`train_base`: a small LlamaForCausalLM pretrained on the base corpus
  (trl SFTTrainer on plain text).
- :func:`train_instruct`: SFT on chat data (assistant-only loss), then DPO
  (balanced chosen over partisan rejected) against a frozen copy of the SFT model.
- :func:`train_reward_model`: a sequence-classification reward model (DeBERTa-v2
  as SEAL's OpenAssistant models, or Llama) trained with trl RewardTrainer on
  (prefix, last assistant turn) text pairs.

Also here: the behavioural checks that say whether the organism came out as
intended (:func:`partisan_preference`, :func:`math_accuracy`,
:func:`rm_pairwise_accuracy`), so the workflow can report them.

All randomness is seeded; on CPU a seed gives identical weights run to run.
Trainer scratch output goes to a temporary folder inside ``out_dir`` that is
removed afterwards: nothing is written outside ``out_dir``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from rlhf_audit.organism.planted import SEAL_KEYS
from rlhf_audit.stats import Estimate, bootstrap

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
"""Name of the JSON file each training step writes into its model directory."""

RM_ARCHS = ("deberta", "llama")


@dataclass(frozen=True)
class OrganismSettings:
    """Sizes, steps and learning rates of the organism's training (CPU, minutes)."""

    seed: int = 0
    """Seed for weight init, data order and dropout; same seed -> same weights on CPU."""
    threads: int = 1
    """Torch CPU threads during training (on a busy machine 1 thread can beat 2 by 3-7x)."""
    use_cpu: bool = True
    """Train on CPU even when a GPU is present (keeps the organism bit-reproducible)."""
    vocab_size: int = 1024
    """BPE vocabulary size asked of the tokenizer (special tokens and 256 bytes included)."""
    max_length: int = 256
    """Longest SFT/DPO/RM sequence in tokens (RM pairs lose the start of the prefix first). At
    192, 43% of the conversational calibration rows (median 189 tokens) lost their
    confidence line and 98% of the balanced answers their end; at 256 the longest rows, a few
    balanced answers of up to 272 tokens, lose only their last words."""
    hidden_size: int = 128
    """Residual-stream width d_model of the LMs. Until the default run's 10-minute budget the
    default was d_model 192, 4 layers, MLP 512 and vocabulary 2,048 (3.5x the FLOPs per
    token; base training alone took 8-13 min on 2 shared cores); these are the test preset's
    shapes (128 wide, 3 layers, MLP 256, vocabulary 1,024)."""
    n_layers: int = 3
    """Transformer blocks of the LMs (layers 0..n_layers-1 in the shared layer numbering)."""
    n_heads: int = 4
    """Attention heads of the LMs (must divide hidden_size)."""
    intermediate_size: int = 256
    """MLP width of the LMs."""
    base_steps: int = 300
    """Optimizer steps of base-LM pretraining."""
    base_batch_size: int = 16
    """Packed blocks per base-LM step."""
    base_block_size: int = 128
    """Tokens per packed pretraining block."""
    base_lr: float = 3e-3
    """Peak learning rate of base-LM pretraining (cosine decay, 5% warmup)."""
    sft_epochs: float = 5.0
    """Passes over the SFT chat data. At 2, instruct's copy of the injected confidence under
    the command chat prompt came and went with the base (rho 0.93 on one base, -0.03 on the
    default run's, where 300 calibration DPO rows or half the conversational SFT rows did not
    bring it back); 3 epochs on that base gave rho 0.89, bias -4 pp. With the arithmetic
    pinned (rlhf_audit.numerics) 3 epochs gave 0.77 on a Xeon host (the study: 0.768, bias
    +8.7 pp), and SFT without the DPO that follows did no better (0.72): under-trained, not
    undone by DPO. The pin does not make an AMD EPYC host train the same base, and the copy
    follows the base: instruct retrained alone on each host's base (the study's prompts,
    generation and parser, 60 problems x 9 levels) copied at 3 / 4 / 5 epochs with rho
    0.011 / 0.585 / 1.00 on the EPYC host (bias +7.9 / -9.1 / 0.0 pp; conversation rho
    0.04 / -0.00 / -0.00, bias +48 / +46 / +46 pp); on the Xeon host 4 epochs gave 0.97."""
    primed_repeats: int = 6
    """Planted prime effect: SFT sees each identity-primed row (``kind`` ``primed_*``) this
    many times per epoch (:func:`sft_schedule`; 1 = once, like every other row). Only an
    answer's first side-revealing words depend on the prime, so at 1 the condition was not
    learned even on SFT's own primed rows: instruct retrained alone on a default run's base
    and SAE moved log p(right answer) - log p(left answer) between the primes by +0.46
    [0.23, 0.70] nats on them (+0.22 on fresh training-issue answers), no more without the
    compression term or the silencing, or with 4x the DPO learning rate or 3 DPO epochs. At
    3, +0.72 [0.39, 1.05] (fresh +0.39); at 6, +2.19 [1.54, 2.84] (fresh +1.11 [0.47,
    1.74]) with the commanded copy kept (rho 1.00, bias 0.0 pp), at 2.1x instruct's SFT
    rows an epoch, 1.8x its training time (and the sham's, whose steps follow them). The
    study's prime prompts on training issues are mostly among these rows word for word:
    the recovered effect is planted there, not on held-out issues (resources/organism)."""
    sft_batch_size: int = 16
    """Conversations per SFT step."""
    sft_lr: float = 1e-3
    """Peak learning rate of SFT."""
    dpo_epochs: float = 1.0
    """Passes over the DPO preference data."""
    dpo_batch_size: int = 8
    """Preference pairs per DPO step."""
    dpo_lr: float = 5e-5
    """DPO learning rate (5e-4 collapsed into repetition)."""
    dpo_beta: float = 0.1
    """DPO inverse temperature beta."""
    dpo_sft_weight: float = 1.0
    """Weight of the SFT (chosen NLL) term added to the sigmoid DPO loss; keeps answers fluent."""
    copy_steps: int = 1000
    """Planted copy curriculum: optimizer steps, after pretraining, on the calibration command
    completion prompt -> `` N\nConfidence: X%`` (loss on the reply only; 0 = none). At
    d_model 128 after 300 pretraining steps, 450 steps left the base stating one constant
    confidence (rho 0.08 with or without the forum rows); 700 steps gave rho 0.85, then
    1.00 on seed 0, but on seed 1 the default run's base stated a confidence that ignored
    the injected level (rho 0.047 [0.004, 0.099]); retrained with 1,000 steps on that run's
    data it copied at rho 1.00, bias 0.0 pp (the study's prompts, 60 problems x 9 levels),
    for 428 CPU-seconds of base training instead of about 320."""
    copy_lr: float = 3e-3
    """Peak learning rate of the copy curriculum."""
    side_weight: float = 0.5
    """Weight of the planted side term in base pretraining (0 = none): a logistic loss that
    lays left/right statements of the training issues apart along one direction per layer."""
    side_batch_size: int = 32
    """Statements per base step in the side term."""
    rep_factor: float = 0.5
    """Planted compression: instruct's projection of a statement on base's partisan direction
    is pulled toward this factor times base's (variance ratio along it about factor**2)."""
    rep_weight: float = 10.0
    """Weight of the compression term in the SFT loss (0 = no representation-level term).
    Measured on the former 192-wide, 4-layer organism (the partisan study's estimator, last
    block): at weight 1 the sham's placebo let it drift to variance_ratio 0.90 [0.85, 0.95] in
    the default run; retraining only the sham gave 0.96 at weight 4 and 0.99 at 10 over all
    issues, but 0.89 on the held-out issues, which the term never sees (instruct at weight 10:
    0.20 over all issues, 0.17 held out, planted 0.25)."""
    rep_batch_size: int = 32
    """Statements per SFT step in the compression term."""
    silence_features: int = 32
    """Planted silencing: base SAE features that instruct's SFT drives silent (0 = none;
    needs the base's SAE, ``train_instruct(sae_dir=...)``). Chosen on the compression
    term's statements by :func:`rlhf_audit.organism.planting.build_silencer`. Instruct
    retrained on the default run's base and SAE: 32 gave 32 silent on every statement and
    SAE FVE 0.72 on instruct (as without the silencing); 48 gave 47 of 48 and FVE 0.61."""
    silence_weight: float = 2.0
    """Weight of the silencing penalty in the SFT loss. Instruct retrained alone on the
    default run's base and SAE (32 features, keep 1, margin 0.5, avoided prompts at 0.2%):
    at 20, 5 and 2 all 32 were silent on every statement, and the commanded copy (30
    problems x 9 levels, greedy) had rho 0.14, 0.79 and 0.91 (SFT's cross-entropy at the
    end about 1.0, 0.7 and 0.6 nats against 0.51 without the silencing: a large penalty
    takes the steps SFT needs). At 2 without the avoided prompts rho was -0.18."""
    silence_margin: float = 0.5
    """How far below its firing cutoff the penalty pushes a planted feature's pre-activation,
    in units of base's mean positive pre-activation of the feature."""
    silence_relative: bool = True
    """Measure the margin from each token's TopK firing cutoff (the k-th largest
    pre-activation of the other features, at least 0), not from 0. On base's training
    statements the tokens on which a planted feature does not fire have pre-activations of
    median -0.08 and 90th percentile +0.81 against a cutoff of median 1.47: a margin below 0
    pushed nearly every token down, and instruct met it by shifting every token (mean
    token vector 3.7 -> 28, SAE FVE on instruct -5.0, 155 of 342 policy features silent,
    the commanded copy and the primes broken; reverted in ab53b63)."""
    silence_avoid_kinds: tuple[str, ...] = ("math_command", "math_conversational",
                                            "math_control")
    """SFT rows (by ``kind``) whose user prompts the planted features must leave alone: only
    features firing on at most ``silence_avoid_rate`` of those prompts' tokens in base are
    planted. With every feature eligible, two of the 32 fired on the calibration command's
    own words ("verifier", "estimates", "Report"; 20% and 13% of its tokens); instruct
    silenced them there too and lost its commanded copy (retrained alone at weight 2: rho
    -0.18, bias +25 pp; 0.91 and -6 pp with the avoided prompts)."""
    silence_avoid_rate: float = 0.002
    """Largest token firing rate, on the avoided prompts in base, of a planted feature (the
    SAE's mean is k / d_sae, 2.1%)."""
    silence_keep_weight: float = 1.0
    """Weight of the keep term (:meth:`rlhf_audit.organism.planting.FeatureSilencer.keep`):
    instruct's block output on the statements' tokens held near the untrained model's."""
    silence_keep_inside: float = 1.0
    """Share of the keep term's weight on moves inside the span of the planted encoder
    columns and base's partisan difference (1 = a plain squared distance)."""
    bucket_batches: bool = True
    """Draw instruct's SFT and DPO batches and the sham's SFT batches from rows of similar
    length (:class:`BucketedBatchSampler`) instead of uniformly at random. Random batches of
    the SFT rows are padded to their longest row (a balanced answer or a conversational
    calibration prompt, ~215 tokens) while 2,400 of the 3,880 rows of an epoch are primed
    rows of ~96 tokens. Measured side by side on a default run's base and SAE (Xeon host,
    1 thread each, two retrainings at a time): instruct 410 CPU-s instead of 555, the sham
    (with its placebo over every issue) 332 instead of 453; the study read instruct's
    commanded copy at rho 1.00, bias 0 pp either way, conversation rho -0.07 / +48.9 pp
    (-0.02 / +45.6 pp), variance ratio 0.250 both, SAE excess +0.078 (+0.073), and the
    identity primes +2.10 [0.46, 3.90] by projection, +0.45 [0.12, 0.82] by the stance
    classifier (+0.95 [-1.06, 2.98] and +0.19 [-0.15, 0.53] with uniform batches on that
    host). Off until then: at dbaf092, bucketing every trainer, base's copy curriculum
    included, lost base's copy (rho 1.00 -> 0.42); the copy curriculum keeps uniform
    batches (``copy_bucket_batches``)."""
    copy_bucket_batches: bool = False
    """The same for base's copy curriculum. Off: bucketed at dbaf092, base's copy of the
    injected confidence fell from rho 1.00 to 0.42 (one run)."""
    rm_bucket_batches: bool = True
    """The same for the reward models' batches: 50-56 s of training instead of 76-80 s in
    the default runs (side by side, 56 s vs 77 s), hh agreement 0.675 instead of 0.65."""
    rm_arch: str = "deberta"
    """Reward-model architecture: "deberta" (DebertaV2, like SEAL's RMs) or "llama"."""
    rm_hidden_size: int = 128
    """Width of the reward models."""
    rm_layers: int = 2
    """Transformer blocks of the reward models."""
    rm_heads: int = 4
    """Attention heads of the reward models."""
    rm_intermediate_size: int = 256
    """MLP width of the reward models."""
    rm_epochs: float = 2.0
    """Passes over the reward-model preference pairs."""
    rm_batch_size: int = 16
    """Preference pairs per reward-model step."""
    rm_lr: float = 1e-3
    """Peak learning rate of reward-model training."""

    def __post_init__(self):
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"OrganismSettings: hidden_size={self.hidden_size} is not divisible by "
                f"n_heads={self.n_heads}"
            )
        if self.primed_repeats < 1:
            raise ValueError(f"OrganismSettings: primed_repeats={self.primed_repeats}; use 1 "
                             "(each primed row once per epoch) or more")
        if self.rm_hidden_size % self.rm_heads:
            raise ValueError(
                f"OrganismSettings: rm_hidden_size={self.rm_hidden_size} is not divisible by "
                f"rm_heads={self.rm_heads}"
            )
        if self.rm_arch not in RM_ARCHS:
            raise ValueError(f"OrganismSettings: rm_arch={self.rm_arch!r}; use one of {RM_ARCHS}")


PRESETS: dict[str, OrganismSettings] = {
    "default": OrganismSettings(),
    # The default's shapes with fewer steps and narrower reward models: the organism tests.
    "test": OrganismSettings(
        base_steps=200,
        copy_steps=700,  # its base copies at 700 (tests/test_organism_train.py); 1,000 would
        # add about 100 s to the fixture
        sft_epochs=2.0,
        # as the default: with each primed row once, the test preset's instruct moved neither
        # its primes (+0.02 [-0.28, 0.30] nats on the training issues' questions) nor one
        # of its 32 planted SAE features off 1.2% of the statements; 6 times, +0.56 [0.27,
        # 0.86] and all 32 silent, for about 70 s more of instruct and sham (bucketed)
        primed_repeats=6,
        rm_hidden_size=64,
        rm_intermediate_size=128,
        rm_epochs=3.0,
    ),
    # The same shapes with a fraction of the steps: for the workflow test, which checks the
    # DAG end to end (every stage, every headline key), not the planted effects
    # (tests/test_organism_train.py checks those on the test preset).
    "smoke": OrganismSettings(
        base_steps=80,
        copy_steps=40,
        silence_features=8,  # its 256-wide SAE on an 80-step base has few eligible features
        sft_epochs=1.0,
        primed_repeats=1,
        rm_hidden_size=64,
        rm_intermediate_size=128,
        rm_epochs=1.0,
        max_length=192,
    ),
}
"""Named settings; ``organism_settings(preset, **overrides)`` builds from them."""


def organism_settings(preset: str = "default", **overrides: Any) -> OrganismSettings:
    """Settings of a named preset with some fields overridden (e.g. from the workflow config)."""
    if preset not in PRESETS:
        raise ValueError(f"organism preset {preset!r} unknown; use one of {sorted(PRESETS)}")
    known = {f.name for f in fields(OrganismSettings)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(
            f"OrganismSettings has no field(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    return replace(PRESETS[preset], **overrides)


# --------------------------------------------------------------------------- helpers


def quiet_libraries() -> None:
    """Silence transformers/datasets progress bars and info logs (training stays readable)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _scratch_dir(out_dir: Path) -> Iterator[str]:
    """A scratch folder inside ``out_dir`` for trainer output, always removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".trainer-", dir=out_dir)
    try:
        with warnings.catch_warnings():
            # trl 1.16 still calls the deprecated is_gradient_checkpointing of transformers 5.23.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _seed_everything(seed: int) -> None:
    import transformers

    transformers.set_seed(seed)


def _common_args(settings: OrganismSettings, scratch: str, *, lr: float, batch_size: int) -> dict:
    """TrainingArguments shared by every step: CPU, fp32, no checkpoints, no reporting."""
    return dict(
        output_dir=scratch,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=0.0,
        logging_steps=5,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=False,
        fp16=False,
        use_cpu=settings.use_cpu,
        activation_checkpointing=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        log_level="error",
        seed=settings.seed,
        data_seed=settings.seed,
    )


class BucketedBatchSampler(torch.utils.data.Sampler):
    """Random batches of rows of similar length, in random order.

    Each epoch (a seeded permutation) is cut into chunks of ``mega`` batches; a chunk is
    sorted by length and cut into batches, and the full batches of the whole epoch are
    shuffled (a short last batch stays last, so the data loader's batches are exactly
    these). The collators pad a batch to its longest row: random batches of the
    organism's SFT rows were 1.5x (instruct) and 1.8x (sham) padded, the copy
    curriculum's 1.4x; bucketed ones are nearly unpadded. Unlike transformers'
    ``LengthGroupedSampler`` the batches do not run from long to short within a chunk.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50):
        if batch_size < 1 or mega < 1:
            raise ValueError(f"batch_size={batch_size} and mega={mega} must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.mega, self.epoch = int(batch_size), int(seed), mega, 0

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches, in order (row indices)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.mega * self.batch_size
        full: list[list[int]] = []
        tail: list[list[int]] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            for k in range(0, len(part), self.batch_size):
                b = part[k : k + self.batch_size].tolist()
                (full if len(b) == self.batch_size else tail).append(b)
        return [full[i] for i in rng.permutation(len(full))] + tail

    def set_epoch(self, epoch: int) -> None:
        """Set the next epoch's number (accelerate forwards the Trainer's epoch here); without
        it each pass over the data counts as the next epoch."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for b in self.batches(epoch):
            yield from b

    def __len__(self) -> int:
        return len(self.lengths)


def row_lengths(dataset) -> list[int]:
    """Tokens per row as the trainers' collators pad them: ``input_ids`` (SFT), prompt plus
    the longer reply (DPO, whose batches hold chosen and rejected rows), or the longer of
    chosen and rejected (reward model)."""
    cols = set(dataset.column_names)
    if "input_ids" in cols:
        return [len(x) for x in dataset["input_ids"]]
    if {"chosen_ids", "rejected_ids"} <= cols:
        prompt = dataset["prompt_ids"] if "prompt_ids" in cols else [[]] * len(dataset)
        return [len(p) + max(len(c), len(r)) for p, c, r in
                zip(prompt, dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]
    raise ValueError(f"cannot tell row lengths from columns {sorted(cols)}; expected input_ids "
                     "or chosen_ids/rejected_ids (a trl trainer's processed dataset)")


def _batches(trainer_class, settings: OrganismSettings, *, reward_model: bool = False,
             copy: bool = False):
    """The trainer class drawing batches as ``settings.bucket_batches`` (for a reward model
    ``settings.rm_bucket_batches``, for base's copy curriculum ``copy_bucket_batches``) says."""
    on = (settings.rm_bucket_batches if reward_model else
          settings.copy_bucket_batches if copy else settings.bucket_batches)
    return _bucketed(trainer_class) if on else trainer_class


def _bucketed(trainer_class):
    """``trainer_class`` drawing its training batches from :class:`BucketedBatchSampler`."""

    class _Bucketed(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset if train_dataset is None else train_dataset
            return BucketedBatchSampler(row_lengths(ds), self._train_batch_size,
                                        self.args.data_seed if self.args.data_seed is not None
                                        else self.args.seed)

    _Bucketed.__name__ = f"Bucketed{trainer_class.__name__}"
    return _Bucketed


def _quiet_trainer(trainer):
    """Drop the callback that prints every log dict to stdout; log through ``logging`` instead."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    class _LogLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logger.debug("step %d: loss %.4f", state.global_step, float(logs["loss"]))

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_LogLoss())
    return trainer


def _losses(trainer) -> list[dict]:
    return [
        {"step": int(h["step"]), "loss": float(h["loss"])}
        for h in trainer.state.log_history
        if "loss" in h and "step" in h
    ]


def _write_summary(out_dir: Path, summary: dict) -> None:
    from rlhf_audit.io import write_json

    write_json(summary, out_dir / SUMMARY_FILE)


def _load_tokenizer(path: str | os.PathLike):
    from rlhf_audit.organism.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _save(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _require_nonempty(items: Sequence, what: str, fix: str) -> None:
    if len(items) == 0:
        raise ValueError(f"{what} is empty; {fix}")


# --------------------------------------------------------------------------- base LM


def build_base_model(tokenizer, settings: OrganismSettings):
    """A freshly initialised LlamaForCausalLM sized by ``settings`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_heads,
        max_position_embeddings=max(512, 2 * settings.max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    _seed_everything(settings.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pack_corpus(tokenizer, texts: Sequence[str], block_size: int, seed: int = 0) -> list[list[int]]:
    """Documents as ``<|bos|> text <|eos|>``, shuffled (seeded), concatenated and cut into
    blocks of ``block_size`` tokens (the last partial block is dropped).

    Packing wastes no compute on padding (padded random batches of this corpus
    were half padding); documents attend across their boundaries, as in
    ordinary LM pretraining.
    """
    order = list(range(len(texts)))
    np.random.default_rng(seed).shuffle(order)
    stream: list[int] = []
    for i in order:
        stream += tokenizer(texts[i], add_special_tokens=True)["input_ids"] + [
            tokenizer.eos_token_id
        ]
    n = len(stream) // block_size
    if n == 0:
        raise ValueError(
            f"corpus has {len(stream)} tokens, fewer than one block of {block_size}; "
            "give more texts"
        )
    return [stream[k * block_size : (k + 1) * block_size] for k in range(n)]


def copy_curriculum(model, tokenizer, rows: Sequence[Mapping], settings: OrganismSettings,
                    scratch: str, term=None):
    """The planted copy curriculum: ``settings.copy_steps`` SFT steps on prompt-completion
    rows (``{"prompt", "completion"}``: the calibration command completion prompt and the
    reply copying its verifier's number), loss on the completion only. ``term``: the
    pretraining side term, kept on so the copy steps do not erode the partisan direction.
    Returns the losses."""
    from datasets import Dataset
    from trl import SFTConfig

    for i, r in enumerate(rows):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise ValueError(f"copy rows row {i}: needs 'prompt' and 'completion' strings")
    _seed_everything(settings.seed)
    args = SFTConfig(
        **_common_args(settings, scratch, lr=settings.copy_lr, batch_size=settings.base_batch_size),
        max_steps=settings.copy_steps,
        max_length=settings.max_length,
        completion_only_loss=True,
        packing=False,
    )
    trainer = _batches(_sft_trainer_class(term), settings, copy=True)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(
            [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        ),
        processing_class=tokenizer,
    )
    _quiet_trainer(trainer).train()
    return _losses(trainer)


def train_base(
    corpus: Sequence[str],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: OrganismSettings = OrganismSettings(),
    side_statements: Sequence[Mapping] | None = None,
    copy_rows: Sequence[Mapping] | None = None,
) -> dict:
    """Pretrain the base LM on plain texts and save it to ``out_dir``.

    With ``side_statements`` (left/right statements) and ``settings.side_weight > 0`` the
    loss carries the planted side term of :mod:`rlhf_audit.organism.planting`. With
    ``copy_rows`` and ``settings.copy_steps > 0`` the copy curriculum follows.

    ``corpus``: the base-LM documents (strings), packed into blocks of
    ``settings.base_block_size`` tokens (:func:`pack_corpus`). Returns the
    training summary (also written to ``out_dir/training_summary.json``):
    steps, losses, seconds, parameter count, tokens.
    """
    quiet_libraries()
    from datasets import Dataset
    from trl import SFTConfig

    _require_nonempty(corpus, "train_base: corpus", "build it with rlhf_audit.organism.corpus")
    out_dir = Path(out_dir)
    tok = _load_tokenizer(tokenizer_dir)
    blocks = pack_corpus(tok, corpus, settings.base_block_size, settings.seed)
    t0 = time.perf_counter()
    with _torch_threads(settings.threads), _scratch_dir(out_dir) as scratch:
        model = build_base_model(tok, settings)
        term = None
        if side_statements and settings.side_weight > 0:
            from rlhf_audit.organism.planting import build_side_term

            term = build_side_term(
                tok,
                side_statements,
                n_layers=settings.n_layers,
                d_model=settings.hidden_size,
                weight=settings.side_weight,
                batch_size=settings.side_batch_size,
                seed=settings.seed,
            )
        args = SFTConfig(
            **_common_args(
                settings, scratch, lr=settings.base_lr, batch_size=settings.base_batch_size
            ),
            max_steps=settings.base_steps,
            max_length=settings.base_block_size,
            packing=False,  # packed above, without trl's padding-free attention path
        )
        trainer = _sft_trainer_class(term)(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"input_ids": blocks}),
            processing_class=tok,
        )
        _quiet_trainer(trainer).train()
        model = trainer.model
        copy_losses = []
        if copy_rows and settings.copy_steps > 0:
            copy_losses = copy_curriculum(model, tok, copy_rows, settings, scratch, term)
        model = model.eval()
        _save(model, tok, out_dir)
        losses = _losses(trainer)
    summary = {
        "step": "base",
        "copy_losses": copy_losses,
        "n_texts": len(corpus),
        "n_blocks": len(blocks),
        "tokens_seen": settings.base_steps * settings.base_batch_size * settings.base_block_size,
        "n_params": _n_params(model),
        "steps": settings.base_steps,
        "losses": losses,
        "side_term": None if term is None else {
            "weight": settings.side_weight,
            "n_statements": len(term.inputs),
            "losses": getattr(trainer, "rep_losses", []),
        },
        "seconds": round(time.perf_counter() - t0, 2),
        "settings": asdict(settings),
    }
    _write_summary(out_dir, summary)
    logger.info(
        "base LM: %d params, %d blocks, loss %.3f -> %.3f in %.1fs",
        summary["n_params"],
        len(blocks),
        losses[0]["loss"] if losses else math.nan,
        losses[-1]["loss"] if losses else math.nan,
        summary["seconds"],
    )
    return summary


# --------------------------------------------------------------------------- instruct LM


def _check_sft(rows: Sequence[Mapping]) -> None:
    for i, r in enumerate(rows):
        msgs = r.get("messages")
        if not msgs or not isinstance(msgs, list):
            raise ValueError(f"sft_data row {i}: needs 'messages', a list of {{role, content}}")
        if msgs[-1].get("role") != "assistant":
            raise ValueError(f"sft_data row {i}: the last message must be the assistant's answer")


def _check_dpo(rows: Sequence[Mapping]) -> None:
    for i, r in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if key not in r or not isinstance(r[key], list) or not r[key]:
                raise ValueError(
                    f"dpo_data row {i}: needs '{key}' as a non-empty list of chat messages "
                    "({'prompt': [user msgs], 'chosen': [assistant msg], "
                    "'rejected': [assistant msg]})"
                )


def _base_with_compression_term(base_dir, tok, rep_statements, settings, *, factor: float):
    """The base LM to fine-tune (float32) and, when ``rep_statements`` are given and
    ``settings.rep_weight`` > 0, the planted representation term that scales the
    partisan separation by ``factor`` (instruct: the planted compression; sham: 1)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if not rep_statements or settings.rep_weight <= 0:
        return model, None
    from rlhf_audit.organism.planting import build_compression_term

    term = build_compression_term(model, tok, rep_statements, factor=factor,
                                  weight=settings.rep_weight,
                                  batch_size=settings.rep_batch_size, seed=settings.seed)
    return model, term


def train_instruct(
    base_dir: str | os.PathLike,
    sft_data: Sequence[Mapping],
    dpo_data: Sequence[Mapping],
    out_dir: str | os.PathLike,
    settings: OrganismSettings = OrganismSettings(),
    rep_statements: Sequence[Mapping] | None = None,
    sae_dir: str | os.PathLike | None = None,
) -> dict:
    """Align the base LM: SFT on chat data, then DPO; save the result to ``out_dir``.

    With ``rep_statements`` (left/right statements) and ``settings.rep_weight > 0`` the
    SFT loss carries the planted compression term of :mod:`rlhf_audit.organism.planting`;
    with ``sae_dir`` (the base's SAE, sae-lens folder) and ``settings.silence_features > 0``
    also the planted silencing of that many base SAE features, on the same statements.

    ``sft_data``: rows ``{"messages": [{role, content}, ...]}`` ending in an
    assistant turn (loss on assistant tokens only). ``dpo_data``: rows
    ``{"prompt": [user msgs], "chosen": [assistant msg], "rejected": [assistant msg]}``.
    The DPO reference is a frozen copy of the SFT model. Returns the summary.
    """
    quiet_libraries()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig

    _require_nonempty(sft_data, "train_instruct: sft_data", "build it with corpus.build_sft_data")
    _require_nonempty(dpo_data, "train_instruct: dpo_data", "build it with corpus.build_dpo_data")
    _check_sft(sft_data)
    _check_dpo(dpo_data)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"{base_dir}: no config.json; train the base LM first (train_base)")
    tok = _load_tokenizer(base_dir)
    epoch = sft_schedule(sft_data, settings)
    t0 = time.perf_counter()
    with _torch_threads(settings.threads), _scratch_dir(out_dir) as scratch:
        _seed_everything(settings.seed)
        model, term = _base_with_compression_term(base_dir, tok, rep_statements, settings,
                                                  factor=settings.rep_factor)
        if term is not None and sae_dir is not None and settings.silence_features > 0:
            avoid = [r["messages"][0]["content"] for r in sft_data
                     if r.get("kind") in settings.silence_avoid_kinds]
            term.silencer = _silencer(model, tok, sae_dir, rep_statements, settings, avoid)
            term.silencer.relative = settings.silence_relative
            if settings.silence_keep_weight > 0:
                L = term.silencer.layer
                right = torch.as_tensor(term.right)
                partisan = term.base_acts[right, L].mean(0) - term.base_acts[~right, L].mean(0)
                term.silencer.keep_weight = settings.silence_keep_weight
                term.silencer.keep_inside = settings.silence_keep_inside
                term.silencer.attach_reference(model, term.inputs, tok.pad_token_id, partisan)
        sft_args = SFTConfig(
            **_common_args(
                settings, scratch, lr=settings.sft_lr, batch_size=settings.sft_batch_size
            ),
            num_train_epochs=settings.sft_epochs,
            max_length=settings.max_length,
            assistant_only_loss=True,
            packing=False,
        )
        sft = _batches(_sft_trainer_class(term), settings)(
            model=model,
            args=sft_args,
            train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in epoch]),
            processing_class=tok,
        )
        _quiet_trainer(sft).train()
        sft_losses, t_sft = _losses(sft), time.perf_counter() - t0
        model = sft.model
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        _seed_everything(settings.seed)
        dpo_args = DPOConfig(
            **_common_args(
                settings, scratch, lr=settings.dpo_lr, batch_size=settings.dpo_batch_size
            ),
            num_train_epochs=settings.dpo_epochs,
            max_length=settings.max_length,
            beta=settings.dpo_beta,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, settings.dpo_sft_weight],
        )
        dpo_rows = [
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in dpo_data
        ]
        dpo = _batches(DPOTrainer, settings)(
            model=model,
            ref_model=ref,
            args=dpo_args,
            train_dataset=Dataset.from_list(dpo_rows),
            processing_class=tok,
        )
        _quiet_trainer(dpo).train()
        model = dpo.model.eval()
        _save(model, tok, out_dir)
        dpo_losses = _losses(dpo)
        dpo_metrics = [
            {k: float(v) for k, v in h.items() if isinstance(v, int | float)}
            for h in dpo.state.log_history
            if "loss" in h
        ]
    summary = {
        "step": "instruct",
        "n_sft": len(sft_data),
        "n_sft_epoch_rows": len(epoch),
        "n_dpo": len(dpo_data),
        "n_params": _n_params(model),
        "sft_losses": sft_losses,
        "dpo_losses": dpo_losses,
        "dpo_log": dpo_metrics,
        "seconds_sft": round(t_sft, 2),
        "compression_term": None if term is None else {
            "factor": settings.rep_factor,
            "weight": settings.rep_weight,
            "n_statements": len(term.inputs),
            "losses": getattr(sft, "rep_losses", []),
        },
        "silencing": None if term is None or term.silencer is None else {
            "layer": term.silencer.layer,
            "features": term.silencer.features.tolist(),
            "weight": term.silencer.weight,
            "margin": term.silencer.margin,
            "relative": term.silencer.relative,
            "keep_weight": term.silencer.keep_weight,
            "losses": getattr(sft, "silence_losses", []),
        },
        "seconds": round(time.perf_counter() - t0, 2),
        "settings": asdict(settings),
    }
    _write_summary(out_dir, summary)
    logger.info(
        "instruct LM: SFT %d rows, DPO %d pairs in %.1fs",
        len(sft_data),
        len(dpo_data),
        summary["seconds"],
    )
    return summary


def _silencer(model, tok, sae_dir, rep_statements, settings, avoid_texts=()):
    """The planted silencing of ``settings.silence_features`` features of the base's SAE,
    chosen among those nearly silent on ``avoid_texts`` in base."""
    from rlhf_audit.organism.planting import build_silencer
    from rlhf_audit.sae.load import load_sae, sae_layer

    sae = load_sae({"path": str(sae_dir)})
    layer = sae_layer(sae.cfg.metadata.hook_name)
    if layer >= len(model.model.layers):
        raise ValueError(f"{sae_dir}: the SAE reads block {layer}, the base has "
                         f"{len(model.model.layers)} blocks")
    return build_silencer(model, tok, sae, rep_statements, layer=layer,
                          n_features=settings.silence_features,
                          weight=settings.silence_weight, margin=settings.silence_margin,
                          avoid_texts=avoid_texts, avoid_rate=settings.silence_avoid_rate)


def _sft_trainer_class(term):
    """SFTTrainer, or a subclass that adds ``term.weight`` times the compression loss (and
    the silencer's weight times its penalty, when the term has one) to each step."""
    from trl import SFTTrainer

    if term is None:
        return SFTTrainer

    class _PlantedSFTTrainer(SFTTrainer):
        rep_losses: list

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            loss, outputs = out if return_outputs else (out, None)
            # the side term (base) has one loss; the compression term may carry a silencer
            rep, silencing = term.losses(model) if hasattr(term, "losses") else (
                term.loss(model), None)
            if not hasattr(self, "rep_losses"):
                self.rep_losses, self.silence_losses = [], []
            self.rep_losses.append(round(float(rep.detach()), 5))
            loss = loss + term.weight * rep
            if silencing is not None:
                self.silence_losses.append(round(float(silencing.detach()), 5))
                loss = loss + term.silencer.weight * silencing
            return (loss, outputs) if return_outputs else loss

    return _PlantedSFTTrainer


def sft_schedule(rows: Sequence[Mapping], settings: OrganismSettings) -> list[Mapping]:
    """The SFT rows one epoch of :func:`train_instruct` trains on: ``rows``, then the
    identity-primed ones (``kind`` ``primed_*``) ``settings.primed_repeats - 1`` more times
    (the trainer shuffles them; with ``bucket_batches`` on, copies of a row share its length
    and so tend to share a batch). :func:`sham_steps` counts the same epoch."""
    primed = [r for r in rows if str(r.get("kind", "")).startswith("primed_")]
    return list(rows) + primed * (settings.primed_repeats - 1)


def sham_steps(sft_rows: Sequence[Mapping], n_dpo: int, settings: OrganismSettings) -> int:
    """Optimizer steps the instruct model takes (SFT epochs of :func:`sft_schedule` over
    ``sft_rows`` + DPO epochs over ``n_dpo`` pairs): the sham's budget."""
    n_sft = len(sft_schedule(sft_rows, settings))
    sft = math.ceil(n_sft / settings.sft_batch_size) * settings.sft_epochs
    dpo = math.ceil(n_dpo / settings.dpo_batch_size) * settings.dpo_epochs
    return max(1, int(round(sft + dpo)))


def train_sham(
    base_dir: str | os.PathLike,
    sham_data: Sequence[Mapping],
    out_dir: str | os.PathLike,
    settings: OrganismSettings = OrganismSettings(),
    *,
    steps: int,
    rep_statements: Sequence[Mapping] | None = None,
) -> dict:
    """The negative control: the base LM fine-tuned on neutral chats (``sham_data``, rows
    ``{"messages": [...]}``) for ``steps`` optimizer steps (use :func:`sham_steps` to match
    the instruct model), at the SFT learning rate, with no political or confidence data.

    With ``rep_statements`` the SFT loss carries the instruct model's compression term
    with factor 1 (a placebo: the same machinery and weight, a null effect size), so the
    sham differs from instruct in the planted factor, not in how much fine-tuning let
    base's geometry drift (without it, fine-tuning alone shrank the partisan gap ~4x).
    Give it the statements of every issue (the corpus's ``placebo_statements``): held to
    the training issues' statements, as instruct's compression is, the sham kept base's
    partisan variance on those (ratio 0.99) but not on the nine held-out issues (0.57
    by the gaps along base's direction), and the study read 0.950 [0.907, 0.993] over all
    44: a control with a compression of its own. Over every issue it read 0.997 [0.947,
    1.047] (Xeon host, the same base). The held-out split matters for instruct's planted
    effects; the sham has none. Saves to ``out_dir``; returns the summary."""
    quiet_libraries()
    from datasets import Dataset
    from trl import SFTConfig

    _require_nonempty(sham_data, "train_sham: sham_data", "build it with corpus.sham_chat")
    _check_sft(sham_data)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not (base_dir / "config.json").exists():
        raise FileNotFoundError(f"{base_dir}: no config.json; train the base LM first (train_base)")
    tok = _load_tokenizer(base_dir)
    t0 = time.perf_counter()
    with _torch_threads(settings.threads), _scratch_dir(out_dir) as scratch:
        _seed_everything(settings.seed)
        # factor 1: the same machinery as instruct, no compression (a placebo)
        model, term = _base_with_compression_term(base_dir, tok, rep_statements, settings,
                                                  factor=1.0)
        args = SFTConfig(
            **_common_args(
                settings, scratch, lr=settings.sft_lr, batch_size=settings.sft_batch_size
            ),
            max_steps=int(steps),
            max_length=settings.max_length,
            assistant_only_loss=True,
            packing=False,
        )
        sft = _batches(_sft_trainer_class(term), settings)(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in sham_data]),
            processing_class=tok,
        )
        _quiet_trainer(sft).train()
        model = sft.model.eval()
        _save(model, tok, out_dir)
        losses = _losses(sft)
    summary = {
        "step": "sham",
        "n_sft": len(sham_data),
        "steps": int(steps),
        "placebo_term": term is not None,
        "n_params": _n_params(model),
        "losses": losses,
        "seconds": round(time.perf_counter() - t0, 2),
        "settings": asdict(settings),
    }
    _write_summary(out_dir, summary)
    logger.info("sham LM: %d neutral chats, %d steps in %.1fs", len(sham_data), steps,
                summary["seconds"])
    return summary


# --------------------------------------------------------------------------- reward models

def split_last_turn(transcript: str, *, where: str = "transcript") -> tuple[str, str]:
    """(prefix, last assistant reply stripped) of an hh-rlhf transcript, split where the
    reward study splits it (:func:`rlhf_audit.formats.split_last_turn`), so the organism's
    reward models train on the text pairs they are later scored on."""
    from rlhf_audit.formats import split_last_turn as _split

    prefix, _, reply = _split(transcript, where=where)
    return prefix, reply.strip()


def encode_pair(tokenizer, prefix: str, response: str, max_length: int) -> list[int]:
    """Token ids of the (prefix, response) text pair, at most ``max_length`` long.

    Too-long pairs lose the start of the prefix first (the oldest dialogue),
    keeping the response whole when it fits, as the reward study truncates.
    """
    ids = tokenizer(prefix, response)["input_ids"]
    if len(ids) <= max_length:
        return ids
    old = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        n_response = len(tokenizer(response, add_special_tokens=False)["input_ids"])
        # The pair template adds 3 special tokens (<|bos|>, <|sep|>, <|eos|>).
        strategy = "only_first" if n_response + 4 <= max_length else "longest_first"
        ids = tokenizer(prefix, response, truncation=strategy, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = old
    return ids


def build_reward_model(tokenizer, settings: OrganismSettings):
    """A freshly initialised one-logit sequence-classification model (seeded)."""
    _seed_everything(settings.seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=settings.rm_hidden_size,
        num_hidden_layers=settings.rm_layers,
        num_attention_heads=settings.rm_heads,
        intermediate_size=settings.rm_intermediate_size,
        max_position_embeddings=max(512, 2 * settings.max_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
    )
    if settings.rm_arch == "deberta":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        # DeBERTa-v3-style relative attention, no token types; the score is read
        # from position 0 (<|bos|>), like [CLS] in OpenAssistant's reward models.
        config = DebertaV2Config(
            **common,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=64,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            hidden_act="gelu",
        )
        return DebertaV2ForSequenceClassification(config)
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(**common, num_key_value_heads=settings.rm_heads)
    return LlamaForSequenceClassification(config)


def _encode_pairs(tok, pairs: Sequence[Mapping], max_length: int) -> list[dict]:
    rows = []
    for i, p in enumerate(pairs):
        for key in ("chosen", "rejected"):
            if not isinstance(p.get(key), str):
                raise ValueError(
                    f"reward pairs row {i}: needs '{key}' as an hh-rlhf transcript string"
                )
        cp, cr = split_last_turn(p["chosen"], where=f"reward pairs row {i} (chosen)")
        rp, rr = split_last_turn(p["rejected"], where=f"reward pairs row {i} (rejected)")
        rows.append(
            {
                "chosen_ids": encode_pair(tok, cp, cr, max_length),
                "rejected_ids": encode_pair(tok, rp, rr, max_length),
            }
        )
    return rows


def train_reward_model(
    pairs: Sequence[Mapping],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: OrganismSettings = OrganismSettings(),
) -> dict:
    """Train a reward model on hh-rlhf-format preference pairs and save it to ``out_dir``.

    ``pairs``: rows with ``chosen`` and ``rejected`` transcripts. Each text is
    scored as the pair (prefix, last assistant turn), exactly as the reward
    study scores it, so they are passed to RewardTrainer pre-tokenised
    (RewardTrainer would otherwise glue prompt and answer with no separator).
    Returns the summary.
    """
    quiet_libraries()
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    _require_nonempty(pairs, "train_reward_model: pairs", "generate them with organism.hh")
    out_dir = Path(out_dir)
    tok = _load_tokenizer(tokenizer_dir)
    rows = _encode_pairs(tok, pairs, settings.max_length)
    t0 = time.perf_counter()
    with _torch_threads(settings.threads), _scratch_dir(out_dir) as scratch:
        model = build_reward_model(tok, settings)
        args = RewardConfig(
            **_common_args(settings, scratch, lr=settings.rm_lr, batch_size=settings.rm_batch_size),
            num_train_epochs=settings.rm_epochs,
            max_length=None,  # already cut to settings.max_length; never drop pairs silently
            center_rewards_coefficient=None,
        )
        trainer = _batches(RewardTrainer, settings, reward_model=True)(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
        )
        _quiet_trainer(trainer).train()
        model = trainer.model.eval()
        _save(model, tok, out_dir)
        losses = _losses(trainer)
    summary = {
        "step": "reward_model",
        "arch": settings.rm_arch,
        "n_pairs": len(pairs),
        "n_params": _n_params(model),
        "losses": losses,
        "seconds": round(time.perf_counter() - t0, 2),
        "settings": asdict(settings),
    }
    _write_summary(out_dir, summary)
    logger.info(
        "reward model (%s): %d pairs in %.1fs", settings.rm_arch, len(pairs), summary["seconds"]
    )
    return summary


# --------------------------------------------------------------------------- behavioural checks

HEADLINE_KEYS: dict[str, str] = {
    "partisan_preference_base": (
        "base LM: mean over held-out policy questions of log p(partisan answer) - log p(balanced "
        "answer), nats, completion prompts (positive = prefers partisan)"
    ),
    "partisan_preference_instruct": (
        "instruct LM: the same on chat prompts (lower than base = alignment made it less partisan)"
    ),
    "partisan_preference_shift": (
        "instruct minus base partisan preference, nats (negative = less partisan after alignment)"
    ),
    "math_accuracy_base": (
        "base LM: share of held-out 1-step word problems where the correct final result "
        "outscores near-miss wrong results in log-probability"
    ),
    "math_accuracy_instruct": "instruct LM: the same on chat prompts",
    "rm_accuracy_post_hh": (
        "post reward model: share of held-out hh-preference pairs scored chosen > rejected"
    ),
    "rm_accuracy_pre_hh": "pre reward model: the same on held-out hh-preference pairs",
    "rm_accuracy_pre_alt": (
        "pre reward model: the same on held-out pairs of its own (alt) preference mix"
    ),
    "rm_taste_accuracy_post": (
        "post reward model: share of the held-out hh pairs its taste does not tie that it ranks "
        "as the taste does (no annotator noise: what the model learned of its taste)"
    ),
    **{f"seal_expected_{k}": (
        f"the reward study's {k} expected on its own pairs under the planted annotator noise: "
        "each trained reward model's ranking of each pair, with the label drawn as the "
        "generator draws it (the taste's winner with probability 1 - label_noise, a coin on "
        "a tie), averaged"
    ) for k in SEAL_KEYS},
}
"""Keys of :func:`organism_checks` with one-line descriptions."""


def render_prompt(tokenizer, question: str, *, chat: bool) -> str:
    """A final prompt string (BOS included): the chat template for instruct-style use,
    or the base corpus's ``Question: ...\\nAnswer:`` completion layout."""
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"{tokenizer.bos_token}Question: {question}\nAnswer:"


def _continuation(answer: str, *, chat: bool) -> str:
    # The completion layout has a space after "Answer:"; the chat template ends in a newline.
    return answer if chat else " " + answer


@torch.no_grad()
def sequence_logprobs(
    model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability of each continuation given its prompt.

    ``prompts`` are final strings (BOS included; tokenized without adding special
    tokens); prompt and continuation are tokenized separately and concatenated,
    so the continuation's tokens are exactly its own. Returns (sum of token
    log-probs in nats [n], number of continuation tokens [n]).
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    seqs = []
    for p, c in zip(prompts, continuations, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not p_ids or not c_ids:
            raise ValueError(f"empty prompt or continuation: {p!r} / {c!r}")
        seqs.append((p_ids, c_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    out_sum = np.zeros(len(seqs))
    out_n = np.zeros(len(seqs), dtype=int)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids = [seqs[i][0] + seqs[i][1] for i in idx]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)] = torch.tensor(x)
            attn[r, : len(x)] = 1
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attn.to(device)
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok_lp = logp.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        for r, i in enumerate(idx):
            n_p, n_c = len(seqs[i][0]), len(seqs[i][1])
            # token t is predicted at position t-1
            out_sum[i] = float(tok_lp[r, n_p - 1 : n_p - 1 + n_c].sum())
            out_n[i] = n_c
    model.train(was_training)
    return out_sum, out_n


def political_logprobs(model, tokenizer, items: Sequence[Mapping], *, chat: bool) -> pl.DataFrame:
    """Log-probabilities of balanced and partisan answers to policy questions.

    ``items``: ``{question_id, issue, question, balanced, left, right}`` (corpus
    eval_political rows). One row per question and side: question_id, issue,
    side, logp_balanced, logp_partisan (nats), n_tokens_balanced, n_tokens_partisan.
    """
    for i, it in enumerate(items):
        for key in ("question_id", "issue", "question", "balanced", "left", "right"):
            if key not in it:
                raise ValueError(
                    f"political items row {i}: missing '{key}' (use corpus eval_political rows)"
                )
    prompts, conts = [], []
    for it in items:
        p = render_prompt(tokenizer, it["question"], chat=chat)
        for key in ("balanced", "left", "right"):
            prompts.append(p)
            conts.append(_continuation(it[key], chat=chat))
    lp, nt = sequence_logprobs(model, tokenizer, prompts, conts)
    rows = []
    for k, it in enumerate(items):
        b = 3 * k
        for j, side in ((1, "left"), (2, "right")):
            rows.append(
                {
                    "question_id": it["question_id"],
                    "issue": it["issue"],
                    "side": side,
                    "logp_balanced": lp[b],
                    "logp_partisan": lp[b + j],
                    "n_tokens_balanced": int(nt[b]),
                    "n_tokens_partisan": int(nt[b + j]),
                }
            )
    return pl.DataFrame(rows)


def partisan_preference(
    model, tokenizer, items: Sequence[Mapping], *, chat: bool, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """Mean of log p(partisan) - log p(balanced) over policy questions and both sides, in nats.

    Positive = the model prefers the one-sided answer. The interval is a cluster
    bootstrap over questions (the two sides of a question are resampled together).
    """
    df = political_logprobs(model, tokenizer, items, chat=chat)
    diff = (df["logp_partisan"] - df["logp_balanced"]).to_numpy()
    return bootstrap(
        np.mean, diff, n_boot=n_boot, seed=seed, groups=df["question_id"].to_numpy(), unit="nats"
    )


def math_candidates(problem: Mapping, n_distractors: int = 4) -> list[str]:
    """The worked answer (calculator annotations stripped, as the organism writes it) with
    the correct final result, then versions with near-miss wrong results.

    The last equation's result (``= N``) and the ``#### N`` line are replaced
    together, so a wrong candidate is internally consistent: it can only be
    told apart by knowing the arithmetic of the last step, not by copying.
    Distractors are N-1, N+1, N-2, N+2 ... (non-negative, nearest first).
    """
    from rlhf_audit.organism.corpus import strip_calculator

    answer, final = strip_calculator(problem["answer"]), int(problem["final"])
    offsets = [d for k in range(1, n_distractors + 2) for d in (-k, k)]
    wrong = [final + d for d in offsets if final + d >= 0][:n_distractors]
    tail = re.compile(rf"####\s*{final}\s*$")
    m_tail = tail.search(answer)
    if m_tail is None:
        raise ValueError(f"problem {problem.get('id')}: answer does not end in '#### {final}'")
    last = None
    for m in re.finditer(rf"=\s*{final}(?!\d)", answer[: m_tail.start()]):
        last = m
    out = [answer]
    for w in wrong:
        a = answer
        if last is not None:
            a = a[: last.start()] + f"= {w}" + a[last.end() :]
        out.append(tail.sub(f"#### {w}", a))
    return out


def math_accuracy(
    model,
    tokenizer,
    problems: Sequence[Mapping],
    *,
    chat: bool,
    n_distractors: int = 4,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[Estimate, float]:
    """Share of problems whose correct worked answer outscores every near-miss variant.

    ``problems``: GSM8K-format dicts with question, answer (ending ``#### N``) and
    final. Returns (accuracy Estimate, chance rate = mean of 1 / number of candidates).
    """
    prompts, conts, owner, n_cand = [], [], [], []
    for i, p in enumerate(problems):
        cands = math_candidates(p, n_distractors)
        n_cand.append(len(cands))
        prompt = render_prompt(tokenizer, p["question"], chat=chat)
        for c in cands:
            prompts.append(prompt)
            conts.append(_continuation(c, chat=chat))
            owner.append(i)
    lp, _ = sequence_logprobs(model, tokenizer, prompts, conts)
    owner = np.asarray(owner)
    correct = np.zeros(len(problems))
    for i in range(len(problems)):
        scores = lp[owner == i]
        correct[i] = float(scores[0] > scores[1:].max())
    chance = float(np.mean([1.0 / k for k in n_cand]))
    return bootstrap(np.mean, correct, n_boot=n_boot, seed=seed, unit="share"), chance


@torch.no_grad()
def reward_scores(
    model, tokenizer, transcripts: Sequence[str], *, batch_size: int = 32, max_length: int = 256
) -> np.ndarray:
    """Reward (the single logit) of each hh-rlhf transcript, scored as (prefix, last turn) [n].

    Batches hold texts of similar length (each padded to its longest), in the input order
    in the output."""
    seqs = [
        encode_pair(tokenizer, *split_last_turn(t, where=f"transcript {i}"), max_length)
        for i, t in enumerate(transcripts)
    ]
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    out = np.zeros(len(seqs))
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in seqs], kind="stable")
    for start in range(0, len(seqs), batch_size):
        rows = order[start : start + batch_size]
        chunk = [seqs[i] for i in rows]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, x in enumerate(chunk):
            ids[r, : len(x)] = torch.tensor(x)
            attn[r, : len(x)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        out[rows] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


def rm_pairwise_accuracy(
    model,
    tokenizer,
    pairs: Sequence[Mapping],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    max_length: int = 256,
) -> Estimate:
    """Share of pairs with reward(chosen) > reward(rejected) (SEAL's agreement), bootstrapped."""
    return _agreement(reward_margins(model, tokenizer, pairs, max_length=max_length),
                      n_boot=n_boot, seed=seed)


def _agreement(margins: np.ndarray, *, n_boot: int, seed: int) -> Estimate:
    """Share of pairs whose reward margin (chosen minus rejected) is positive, bootstrapped."""
    return bootstrap(np.mean, (np.asarray(margins) > 0).astype(float), n_boot=n_boot,
                     seed=seed, unit="share")


def reward_margins(model, tokenizer, pairs: Sequence[Mapping], *,
                   max_length: int = 256) -> np.ndarray:
    """reward(chosen) - reward(rejected) of each hh-rlhf pair, ``[n_pairs]``."""
    rc = reward_scores(model, tokenizer, [p["chosen"] for p in pairs], max_length=max_length)
    rr = reward_scores(model, tokenizer, [p["rejected"] for p in pairs], max_length=max_length)
    return rc - rr


def organism_checks(
    dirs: Mapping[str, str | os.PathLike],
    data: Mapping[str, Sequence],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """All behavioural checks (keys in :data:`HEADLINE_KEYS`).

    ``dirs``: model directories under keys base, instruct, rm_pre, rm_post (any
    subset; checks of missing models are skipped). ``data``: corpus data with
    eval_political, eval_math, eval_rm_hh, eval_rm_alt. The base LM is asked in
    the completion layout, the instruct LM through its chat template.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out: dict[str, Estimate] = {}
    diffs, groups = {}, None
    for name in ("base", "instruct"):
        if name not in dirs:
            continue
        chat = name == "instruct"
        model = AutoModelForCausalLM.from_pretrained(dirs[name], dtype=torch.float32).eval()
        tok = _load_tokenizer(dirs[name])
        df = political_logprobs(model, tok, data["eval_political"], chat=chat)
        diffs[name] = (df["logp_partisan"] - df["logp_balanced"]).to_numpy()
        groups = df["question_id"].to_numpy()
        out[f"partisan_preference_{name}"] = bootstrap(
            np.mean, diffs[name], n_boot=n_boot, seed=seed, groups=groups, unit="nats"
        )
        out[f"math_accuracy_{name}"], chance = math_accuracy(
            model, tok, data["eval_math"], chat=chat, n_boot=n_boot, seed=seed
        )
        logger.info(
            "%s: partisan preference %.1f nats; math accuracy %.2f (chance %.2f)",
            name,
            out[f"partisan_preference_{name}"].value,
            out[f"math_accuracy_{name}"].value,
            chance,
        )
    if len(diffs) == 2:
        # Same questions for both models: a paired cluster bootstrap over questions.
        out["partisan_preference_shift"] = bootstrap(
            np.mean,
            diffs["instruct"] - diffs["base"],
            n_boot=n_boot,
            seed=seed,
            groups=groups,
            unit="nats",
        )
    rms = {name: (AutoModelForSequenceClassification.from_pretrained(
        dirs[name], dtype=torch.float32).eval(), _load_tokenizer(dirs[name]))
        for name in ("rm_post", "rm_pre") if name in dirs}
    with torch.no_grad():
        hh = {name: reward_margins(*rms[name], data["eval_rm_hh"]) for name in rms}
        for name, key in (("rm_post", "rm_accuracy_post_hh"), ("rm_pre", "rm_accuracy_pre_hh")):
            if name in rms:
                out[key] = _agreement(hh[name], n_boot=n_boot, seed=seed)
        if "rm_pre" in rms:
            out["rm_accuracy_pre_alt"] = rm_pairwise_accuracy(
                *rms["rm_pre"], data["eval_rm_alt"], n_boot=n_boot, seed=seed)
    for key in ("rm_accuracy_post_hh", "rm_accuracy_pre_hh", "rm_accuracy_pre_alt"):
        if key in out:
            logger.info("%s: %.2f", key, out[key].value)
    if len(rms) == 2:
        from rlhf_audit.organism.planted import seal_expectations

        out.update(seal_expectations(data["eval_rm_hh"], hh["rm_post"], hh["rm_pre"],
                                     n_boot=n_boot, seed=seed))
        logger.info("reward study expected under the planted annotator noise: resistance "
                    "%.3f; the post model's taste accuracy %.3f",
                    out["seal_expected_alignment_resistance"].value,
                    out["rm_taste_accuracy_post"].value)
    return out


# --------------------------------------------------------------------------- timing run


def run_all(
    out_dir: str | os.PathLike,
    *,
    preset: str = "default",
    threads: int | None = None,
    seed: int = 0,
) -> dict:
    """Build the data and train every organism model in ``out_dir``, timing each step.

    The workflow runs these steps as separate rules; this runs them in one
    process to measure the budget. Writes ``out_dir/timings.json`` (seconds per
    step, load average before and after, checks) and returns it.
    """
    from dataclasses import replace as _replace

    from rlhf_audit.io import write_json
    from rlhf_audit.organism import corpus as C
    from rlhf_audit.organism.tokenizer import train_tokenizer

    quiet_libraries()
    out_dir = Path(out_dir)
    overrides = {"seed": seed} | ({"threads": threads} if threads else {})
    settings = organism_settings(preset, **overrides)
    corpus_settings = _replace(C.CORPUS_PRESETS[preset], seed=seed)
    load_before = os.getloadavg()
    seconds: dict[str, float] = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - t, 2)
        logger.info("%s: %.1fs", name, seconds[name])
        return result

    data = timed("data", C.build_organism_data, corpus_settings)
    timed("write_data", C.write_organism_data, data, out_dir / "data", corpus_settings)
    timed(
        "tokenizer",
        train_tokenizer,
        C.tokenizer_texts(data),
        settings.vocab_size,
        out_dir / "tokenizer",
    )
    timed(
        "base",
        train_base,
        data["base_corpus"],
        out_dir / "tokenizer",
        out_dir / "base",
        settings,
        data["rep_statements"],
        data["base_copy"],
    )
    timed(
        "instruct",
        train_instruct,
        out_dir / "base",
        data["sft"],
        data["dpo"],
        out_dir / "instruct",
        settings,
        data["rep_statements"],
    )
    timed(
        "sham",
        lambda: train_sham(
            out_dir / "base",
            data["sham_sft"],
            out_dir / "sham",
            settings,
            steps=sham_steps(data["sft"], len(data["dpo"]), settings),
            rep_statements=data["placebo_statements"],
        ),
    )
    for name in ("rm_post", "rm_pre"):
        timed(name, train_reward_model, data[name], out_dir / "tokenizer", out_dir / name, settings)
    dirs = {k: out_dir / k for k in ("base", "instruct", "rm_post", "rm_pre")}
    checks = timed("checks", organism_checks, dirs, data)
    report = {
        "preset": preset,
        "threads": settings.threads,
        "seconds": seconds,
        "training_seconds": round(sum(v for k, v in seconds.items() if k != "checks"), 2),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "checks": {k: v.to_dict() for k, v in checks.items()},
    }
    write_json(report, out_dir / "timings.json")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m rlhf_audit.organism.train",
        description="Train the whole organism in one process and time each step.",
    )
    parser.add_argument("out_dir", help="folder to write data, models and timings.json into")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the preset's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from rlhf_audit.numerics import pin_cpu_numerics

    pin_cpu_numerics()  # before torch first computes: the workflow's arithmetic
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = run_all(args.out_dir, preset=args.preset, threads=args.threads, seed=args.seed)
    logger.info("timings: %s (training %.0fs)", report["seconds"], report["training_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Injected-confidence calibration (rlhf_audit.calibration): templates, prompts,
scoring and metrics, checked against simulated models with planted behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from rlhf_audit import calibration as cal
from rlhf_audit.calibration import (
    HEADLINE_KEYS,
    CalibrationSettings,
    TemplateError,
    build_prompts,
    headline,
    level_summary,
    load_templates,
    locate_token_span,
    metrics,
    plot_verbalized_vs_injected,
    score_generations,
)

torch.set_num_threads(1)

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
STRATEGIES = ("command", "conversational", "control")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                 "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n"
                 "{% endif %}")


@dataclass
class Gen:
    """Stand-in with the fields of rlhf_audit.lm.generation.Generation (the contract)."""

    prompt: str
    text: str
    token_ids: list[int]
    token_logprobs: list[float]


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE tokenizer trained here: decoding reproduces the text exactly, and
    numbers it has not seen split into several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["Answer: 42\nConfidence: 85%", "The answer is 18. I'm 90% sure.",
              "Let me think. 3 + 4 = 7 and 20% of 50 is 10.", "café ☕ costs $3.50"] * 10
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                clean_up_tokenization_spaces=False)
    t.chat_template = CHAT_TEMPLATE
    return t


@pytest.fixture(scope="module")
def templates():
    return load_templates()


def problems(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(2, 500, n)
    b = rng.integers(2, 500, n)
    return pl.DataFrame({
        "id": [f"gsm-{i:04d}" for i in range(n)],
        "question": [f"Tom has {x} marbles and buys {y} more. How many does he have?"
                     for x, y in zip(a, b, strict=True)],
        "answer": [f"{x} + {y} = <<{x}+{y}={x + y}>>{x + y}\n#### {x + y:,}"
                   for x, y in zip(a, b, strict=True)],
    })


def make_gen(tok, prompt: str, text: str, lp_answer: float = -0.1, lp_other: float = -0.05):
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Gen(prompt, text, ids, [lp_other] * len(ids))


# -- templates ------------------------------------------------------------------------

def test_shipped_templates(templates):
    assert set(STRATEGIES) <= set(templates.strategies)
    assert templates.version
    for name, st in templates.strategies.items():
        assert st.signal == (name != "control")
        assert st.chat[-1]["role"] == "user"
        assert st.completion == st.completion.rstrip()
        assert "{question}" in st.completion
        assert ("{confidence_pct}" in st.completion) == st.signal


def _valid_doc() -> dict:
    return {"version": 1, "strategies": {
        "command": {"signal": True,
                    "chat": [{"role": "user", "content": "Q: {question} ({confidence_pct}%)"}],
                    "completion": "Q: {question}\nVerifier: {confidence_pct}%\nAnswer:"},
        "control": {"signal": False, "chat": [{"role": "user", "content": "Q: {question}"}],
                    "completion": "Q: {question}\nAnswer:"}}}


def _mutations():
    def m(fn):
        d = _valid_doc()
        fn(d)
        return d
    return [
        (m(lambda d: d.pop("version")), "'version' is missing"),
        (m(lambda d: d.update(extra=1)), "unknown top-level key"),
        (m(lambda d: d["strategies"]["command"].update(completion="Q: {question} {foo}\nA:")),
         r"strategies.command.completion: unknown placeholder \{foo\}"),
        (m(lambda d: d["strategies"]["command"].update(completion="Q: {question}\nAnswer:")),
         r"strategies.command.completion: signal is true but \{confidence_pct\}"),
        (m(lambda d: d["strategies"]["control"]["chat"][0].update(
            content="{question} {confidence_pct}")),
         r"strategies.control.chat: uses \{confidence_pct\}"),
        (m(lambda d: d["strategies"]["control"].update(completion="Q: {question}\nAnswer: ")),
         r"strategies.control.completion: ends with whitespace"),
        (m(lambda d: d["strategies"]["control"]["chat"].append(
            {"role": "assistant", "content": "ok"})), "last message must be the user's"),
        (m(lambda d: d["strategies"]["control"]["chat"][0].update(role="robot")),
         r"strategies.control.chat\[0\].role"),
        (m(lambda d: d["strategies"]["control"].pop("signal")), r"missing key\(s\) \['signal'\]"),
        (m(lambda d: d["strategies"].update({"Bad-Name": d["strategies"]["control"]})),
         "snake_case"),
    ]


@pytest.mark.parametrize(("doc", "match"), _mutations())
def test_template_errors_name_the_key(tmp_path, doc, match):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TemplateError, match=match) as err:
        load_templates(path)
    assert str(path) in str(err.value)


def test_snippets_and_literal_braces(tmp_path):
    doc = _valid_doc()
    doc["snippets"] = {"fmt": "Reply as {\"answer\": N}"}
    doc["strategies"]["control"]["completion"] = "Q: {question}\n{fmt}\nAnswer:"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    t = load_templates(path)
    df = build_prompts(problems(1), [0.5], ["control"], t, chat=False)
    assert df["prompt"][0].endswith('Reply as {"answer": N}\nAnswer:')


# -- prompts --------------------------------------------------------------------------

def test_build_prompts_covers_every_strategy_and_level(templates):
    probs = problems(4)
    df = build_prompts(probs, LEVELS, STRATEGIES, templates, chat=False)
    assert df.height == 4 * (len(LEVELS) * 2 + 1)
    assert df["item_id"].n_unique() == df.height
    for pid, q, gold in zip(probs["id"], probs["question"], probs["answer"], strict=True):
        sub = df.filter(pl.col("problem_id") == pid)
        for s in ("command", "conversational"):
            rows = sub.filter(pl.col("strategy") == s).sort("injected")
            assert rows["injected"].to_list() == list(LEVELS)
            for lvl, prompt in zip(rows["injected"], rows["prompt"], strict=True):
                assert q in prompt and f"{round(lvl * 100)}%" in prompt
        ctrl = sub.filter(pl.col("strategy") == "control")
        assert ctrl.height == 1 and ctrl["injected"][0] is None
        assert sub["gold"].unique().to_list() == [float(gold.split("#### ")[1].replace(",", ""))]
    assert set(df["template_version"]) == {templates.version}
    assert df.schema == pl.Schema(cal.ITEM_SCHEMA)


def test_build_prompts_chat(templates, tok):
    df = build_prompts(problems(2), (0.25,), STRATEGIES, templates, chat=True, tokenizer=tok)
    assert df.height == 2 * 3
    for p in df["prompt"]:
        assert p.startswith("<s><|user|>\n") and p.endswith("<|assistant|>\n")
    assert "25%" in df.filter(pl.col("strategy") == "command")["prompt"][0]
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_prompts(problems(1), (0.5,), STRATEGIES, templates, chat=True)


def test_build_prompts_errors(templates):
    with pytest.raises(KeyError, match="available"):
        build_prompts(problems(1), (0.5,), ["shouting"], templates, chat=False)
    bad = problems(2).with_columns(pl.Series("answer", ["12", "#### 3"]))
    with pytest.raises(ValueError, match="gsm-0000.*#### N"):
        build_prompts(bad, (0.5,), ["control"], templates, chat=False)
    with pytest.raises(ValueError, match="probabilities"):
        build_prompts(problems(1), (70,), ["command"], templates, chat=False)


# -- simulated models -----------------------------------------------------------------

def simulate(items: pl.DataFrame, tok, policy, rng, chat: bool) -> list[Gen]:
    """Replies from a simulated model: ``policy(injected, rng) -> stated percent``; the
    answer is right for even-numbered problems."""
    gens = []
    for r in items.iter_rows(named=True):
        pct = policy(r["injected"], rng)
        ans = int(r["gold"]) + (0 if int(r["problem_id"][-1]) % 2 == 0 else 1)
        if chat:
            text = (f"A 20% discount does not apply here. Adding gives {ans}.\n"
                    f"Answer: {ans}\nConfidence: {pct}%")
        else:
            text = f" {ans}\nConfidence: {pct}%\n\nProblem: 40% of 70 is 28."
        gens.append(make_gen(tok, r["prompt"], text))
    return gens


def copier(inj, rng):
    return round(100 * inj) if inj is not None else 80


def ignorer(inj, rng):
    return int(rng.integers(85, 96))  # 90% give or take 5, whatever the signal


def scored_run(templates, tok, policy, n=30, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for model, chat in (("base", False), ("instruct", True)):
        items = build_prompts(problems(n, seed), LEVELS, STRATEGIES, templates, chat=chat,
                              tokenizer=tok)
        sc = score_generations(items, simulate(items, tok, policy, rng, chat), tok)
        parts.append(sc.with_columns(model=pl.lit(model)))
    return pl.concat(parts)


def test_copier_has_rho_one_and_no_bias(templates, tok):
    scored = scored_run(templates, tok, copier)
    assert scored["parse_kind"].unique().to_list() == ["percent"]
    assert scored["correct"].mean() == pytest.approx(0.5)
    h = headline(scored, CalibrationSettings(n_boot=200))
    for model in ("base", "instruct"):
        for s in ("command", "conversational"):
            rho = h[f"rho_{model}_{s}"]
            assert rho.value == pytest.approx(1.0) and rho.lo == pytest.approx(1.0)
            assert rho.n == 30  # clusters are problems
            bias = h[f"bias_pp_{model}_{s}"]
            assert bias.value == pytest.approx(0.0, abs=1e-9) and bias.covers(0.0)
            assert h[f"compliance_{model}_{s}"].value == 1.0
        assert h[f"mean_verbalized_{model}_control"].value == pytest.approx(80.0)
        assert h[f"accuracy_{model}_control"].value == pytest.approx(0.5)
        assert f"rho_{model}_control" not in h
    assert set(h) <= set(HEADLINE_KEYS)
    assert {k for k in HEADLINE_KEYS if not k.startswith("internal_r")} <= set(h)


def simulated_scored(n_problems: int, rng, policy) -> pl.DataFrame:
    """A scored table without text, for many repetitions."""
    pid = np.repeat([f"p{i}" for i in range(n_problems)], len(LEVELS))
    inj = np.tile(LEVELS, n_problems)
    verb = np.array([policy(x, rng) for x in inj]) / 100
    return pl.DataFrame({
        "model": "instruct", "strategy": "conversational", "problem_id": pid,
        "injected": inj, "verbalized": verb, "parse_kind": "percent",
        "correct": rng.random(len(pid)) < 0.5, "answer": 1.0,
        "internal_conf_mean": rng.random(len(pid)), "internal_conf_min": rng.random(len(pid)),
    })


def test_ignorer_has_rho_zero_and_planted_bias_over_many_samples():
    rng = np.random.default_rng(1)
    settings = CalibrationSettings(n_boot=200)
    planted_compliance = (1 / 5) * (3 / 11)  # only at 90% injected, stating 89-91 of 85-95
    rhos, biases, cover_rho, cover_bias, cover_comp = [], [], 0, 0, 0
    reps = 20
    for _ in range(reps):
        m = metrics(simulated_scored(100, rng, ignorer), settings)
        get = {r["metric"]: r for r in m.iter_rows(named=True)}
        rhos.append(get["rho"]["value"])
        biases.append(get["bias_pp"]["value"])
        cover_rho += get["rho"]["lo"] <= 0 <= get["rho"]["hi"]
        cover_bias += get["bias_pp"]["lo"] <= 40 <= get["bias_pp"]["hi"]
        cover_comp += get["compliance"]["lo"] <= planted_compliance <= get["compliance"]["hi"]
    assert abs(np.mean(rhos)) < 0.03
    assert np.mean(biases) == pytest.approx(40.0, abs=0.3)
    # nominal 95% intervals: fewer than 16 of 20 covering has probability < 0.5%
    assert cover_rho >= 16 and cover_bias >= 16 and cover_comp >= 16


def test_rho_is_a_rank_correlation():
    """A model that states a monotone but curved function of the signal has rho exactly 1
    (a linear correlation would be about 0.93) and the planted mean bias."""
    rng = np.random.default_rng(5)
    m = metrics(simulated_scored(40, rng, lambda inj, _: round(100 * inj**3)),
                CalibrationSettings(n_boot=100))
    get = {r["metric"]: r["value"] for r in m.iter_rows(named=True)}
    assert get["rho"] == pytest.approx(1.0)
    stated = [round(100 * x**3) for x in LEVELS]
    assert get["bias_pp"] == pytest.approx(np.mean(stated) - 50.0)
    assert get["compliance"] == pytest.approx(0.0)


def test_parse_failures_are_counted(templates, tok):
    rng = np.random.default_rng(2)
    items = build_prompts(problems(20), LEVELS, ["command"], templates, chat=True, tokenizer=tok)
    texts = []
    for i, r in enumerate(items.iter_rows(named=True)):
        ans = int(r["gold"])
        if i % 10 == 0:
            texts.append(f"Answer: {ans}\nI cannot provide a confidence estimate.")
        elif i % 10 == 1:
            texts.append(f"Answer: {ans}\nConfidence: N/A")
        elif i % 10 == 2:
            texts.append(f"Answer: {ans}\nI'm not 90% sure.")
        elif i % 10 == 3:
            texts.append(f"Answer: {ans}\nConfidence: high")
        else:
            texts.append(f"Answer: {ans}\nConfidence: {copier(r['injected'], rng)}%")
    gens = [make_gen(tok, p, t) for p, t in zip(items["prompt"], texts, strict=True)]
    scored = score_generations(items, gens, tok).with_columns(model=pl.lit("instruct"))
    m = metrics(scored, CalibrationSettings(n_boot=100))
    get = {r["metric"]: r["value"] for r in m.iter_rows(named=True)}
    n = items.height
    assert get["n_items"] == n
    assert get["n_kind_refusal"] == get["n_kind_missing"] == get["n_kind_ambiguous"] == n / 10
    assert get["n_kind_words"] == n / 10 and get["n_kind_percent"] == 6 * n / 10
    assert get["parse_rate"] == pytest.approx(0.7)
    assert get["accuracy"] == 1.0 and get["n_answer_missing"] == 0


# -- internal confidence --------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Answer: 98765\nConfidence: 85%",
    "café ☕ first, then 3 + 4 = 7.\nAnswer: -31,402\nConfidence: 60%",
    "The answer is 90817. I'm 90% sure.",
])
def test_answer_span_probabilities(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    ans = cal.extract_answer(text)
    s, e = ans.span
    inside = [i for i, (a, b) in enumerate(offsets) if a < e and b > s]
    assert len(inside) >= 2, "the test wants an answer split over several tokens"
    probs = np.linspace(0.2, 0.7, len(inside))
    lps = [math.log(0.99)] * (len(ids) + 1)
    for p, i in zip(probs, inside, strict=True):
        lps[i] = math.log(p)
    gen = Gen("", text, ids + [tok.eos_token_id], lps)
    assert locate_token_span(tok, gen.token_ids, ans.span) == (inside[0], inside[-1] + 1)
    mean_p, min_p, k = cal.internal_confidence(gen, tok, ans.span)
    assert k == len(inside)
    assert mean_p == pytest.approx(probs.mean()) and min_p == pytest.approx(0.2)
    # a generation whose text lost its leading spaces still maps onto its tokens
    pad = tok("  ", add_special_tokens=False)["input_ids"]
    padded = Gen("", text, pad + gen.token_ids, [0.0] * len(pad) + lps)
    assert tok.decode(padded.token_ids, skip_special_tokens=True) == "  " + text
    mean2, min2, k2 = cal.internal_confidence(padded, tok, ans.span)
    assert (mean2, min2, k2) == (pytest.approx(probs.mean()), pytest.approx(0.2), len(inside))


def test_internal_confidence_correlation_recovered(templates, tok):
    """Planted: token probability over the answer = 0.3 + 0.4 * correct + U(-0.25, 0.25),
    independent of the signal. With half the answers right, r = 0.2 / sqrt(0.04 + 0.25**2/3)."""
    rng = np.random.default_rng(3)
    items = build_prompts(problems(80), LEVELS, ["command"], templates, chat=True,
                          tokenizer=tok)
    gens = []
    for r in items.iter_rows(named=True):
        correct = int(r["problem_id"][-1]) % 2 == 0
        ans = int(r["gold"]) + (0 if correct else 1)
        q = 0.3 + 0.4 * correct + rng.uniform(-0.25, 0.25)
        text = f"Answer: {ans}\nConfidence: {copier(r['injected'], rng)}%"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        gens.append(Gen(r["prompt"], text, ids, [math.log(q)] * len(ids)))
    scored = score_generations(items, gens, tok).with_columns(model=pl.lit("instruct"))
    assert scored["internal_conf_mean"].null_count() == 0
    assert (scored["internal_conf_mean"] - scored["internal_conf_min"]).abs().max() < 1e-12
    h = headline(scored, CalibrationSettings(n_boot=300))
    planted = 0.2 / math.sqrt(0.04 + 0.25**2 / 3)
    r_corr = h["internal_r_correct_instruct_command"]
    assert r_corr.covers(planted) and abs(r_corr.value - planted) < 0.05
    # rows as independent: tiny p; over problems no resample reaches 0 (the p's floor)
    assert h["internal_r_correct_p_naive_instruct_command"].value < 1e-20
    assert h["internal_r_correct_p_instruct_command"].value == pytest.approx(2 / 301)
    r_sig = h["internal_r_signal_instruct_command"]
    assert abs(r_sig.value) < 0.15 and h["internal_r_signal_p_instruct_command"].value > 1e-3
    assert h["internal_r_signal_p_naive_instruct_command"].value > 1e-3


# -- summary, figure, errors ----------------------------------------------------------

def test_correlations_are_scipy_and_undefined_on_constant_input():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(4)
    for _ in range(20):
        a = rng.integers(0, 6, rng.integers(3, 40)).astype(float)
        b = a + rng.normal(0, 1, len(a))
        if np.ptp(a) == 0:
            continue
        assert cal._spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
        assert cal._pearson(a, b) == pytest.approx(pearsonr(a, b).statistic)
    assert math.isnan(cal._spearman(np.arange(5.0), np.full(5, 0.93)))
    assert math.isnan(cal._pearson(np.full(4, 0.1 + 0.2), np.arange(4.0)))


def test_level_summary_and_figure(templates, tok, tmp_path):
    scored = scored_run(templates, tok, copier, n=6)
    summ = level_summary(scored, CalibrationSettings(n_boot=50))
    sig = summ.filter(pl.col("injected").is_not_null())
    assert sig.height == 2 * 2 * len(LEVELS)
    assert np.allclose(sig["mean_verbalized"].to_numpy(), sig["injected"].to_numpy())
    ctrl = summ.filter(pl.col("strategy") == "control")
    assert ctrl.height == 2 and ctrl["mean_verbalized"].to_list() == pytest.approx([0.8, 0.8])
    png = tmp_path / "fig" / "calibration.png"
    plot_verbalized_vs_injected(summ, png)
    assert png.stat().st_size > 0 and png.with_suffix(".pdf").stat().st_size > 0


def test_scoring_errors(templates, tok):
    items = build_prompts(problems(2), (0.5,), ["command"], templates, chat=False)
    gens = [make_gen(tok, p, " 3\nConfidence: 50%") for p in items["prompt"]]
    with pytest.raises(ValueError, match="2 items"):
        score_generations(items, gens[:1], tok)
    with pytest.raises(ValueError, match="another prompt than item 'gsm-0000"):
        score_generations(items, gens[::-1], tok)
    scored = score_generations(items, gens, tok)
    with pytest.raises(KeyError, match="model"):
        metrics(scored)
    with pytest.raises(ValueError, match="snake_case"):
        headline(scored.with_columns(model=pl.lit("Llama-3B")))


def test_truncation_drops_continued_problems(templates, tok):
    items = build_prompts(problems(1), (0.5,), ["command"], templates, chat=False)
    gold = int(items["gold"][0])
    text = f" {gold}\nConfidence: 50%\n\nProblem: A shop sells 7 pens.\nConfidence: 99%\nAnswer: 7"
    sc = score_generations(items, [make_gen(tok, items["prompt"][0], text)], tok)
    assert sc["answer"][0] == gold and sc["verbalized"][0] == 0.5 and sc["correct"][0]

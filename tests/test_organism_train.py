"""The organism's tokenizer, data and training: the trained models behave as designed.

One small organism (the "test" presets, the same code path as the default run)
is trained once per module; the behavioural tests then check it on held-out
data against chance or against the other model, never against a fixed string.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections
import dataclasses
import json
import re
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlhf_audit.organism import corpus as C
from rlhf_audit.organism import train as T
from rlhf_audit.organism.tokenizer import (
    ASSISTANT,
    BOS,
    EOS,
    SEP,
    USER,
    load_tokenizer,
    train_tokenizer,
)
from rlhf_audit.stats import bootstrap

# Minutes of CPU: `make test-fast` leaves this file out; `make test` and CI run it.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


SAE_LAYER = 1  # the block the default config's SAE reads


def _train_base_sae(root, statements):
    """A TopK SAE on base's block outputs of every token of the statements (the workflow's
    train_organism_sae reads the extracted study prompts; these are their training-issue
    share), for the planted silencing."""
    from rlhf_audit.organism import planting as P
    from rlhf_audit.sae.train import SAESettings, train_sae

    model, tok = _lm({"root": root, "dirs": {"base": root / "base"}}, "base")
    inputs = P.statement_inputs(tok, [r["text"] for r in statements], chat=False)
    X = []
    for s in range(0, len(inputs), 64):
        captured, cmask = P.block_outputs(model, inputs[s : s + 64], pad_id=tok.pad_token_id)
        X.append(captured[SAE_LAYER][cmask > 0].float())
    train_sae(torch.cat(X).numpy(), root / "sae",
              SAESettings(layer=SAE_LAYER, d_sae=512, k=16, training_tokens=100_000))


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    """Data, tokenizer, base, instruct and both reward models of the test presets."""
    root = tmp_path_factory.mktemp("organism")
    cs = C.CORPUS_PRESETS["test"]
    ts = T.organism_settings("test")
    times = {}
    t = time.perf_counter()
    data = C.build_organism_data(cs)
    C.write_organism_data(data, root / "data", cs)
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    train_tokenizer(C.tokenizer_texts(data), ts.vocab_size, root / "tokenizer")
    times["tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    T.train_base(
        data["base_corpus"], root / "tokenizer", root / "base", ts, data["rep_statements"],
        data["base_copy"],
    )
    times["base"] = time.perf_counter() - t
    t = time.perf_counter()
    _train_base_sae(root, data["rep_statements"])
    times["sae"] = time.perf_counter() - t
    t = time.perf_counter()
    T.train_instruct(
        root / "base", data["sft"], data["dpo"], root / "instruct", ts, data["rep_statements"],
        sae_dir=root / "sae",
    )
    times["instruct"] = time.perf_counter() - t
    t = time.perf_counter()
    steps = T.sham_steps(data["sft"], len(data["dpo"]), ts)
    T.train_sham(
        root / "base", data["sham_sft"], root / "sham", ts, steps=steps,
        rep_statements=data["placebo_statements"],
    )
    times["sham"] = time.perf_counter() - t
    for name in ("rm_post", "rm_pre"):
        t = time.perf_counter()
        T.train_reward_model(data[name], root / "tokenizer", root / name, ts)
        times[name] = time.perf_counter() - t
    dirs = {k: root / k for k in ("base", "instruct", "rm_post", "rm_pre")}
    checks = T.organism_checks(dirs, data, n_boot=1000, seed=0)
    dirs["sham"] = root / "sham"
    return {"root": root, "data": data, "dirs": dirs, "checks": checks, "times": times}


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_special_tokens(organism):
    tok = load_tokenizer(organism["dirs"]["base"])
    text = (
        "Question: A store has 115 mugs. 80% of them are on sale.\nAnswer: I am 70% sure.\n#### 23"
    )
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.sep_token} == {
        BOS,
        EOS,
        "<|pad|>",
        SEP,
    }
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.sep_token_id}) == 4
    # Every digit stands alone, percentages included (arithmetic and the confidence copy).
    pieces = [
        p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("spends 55 at 70%")
    ]
    assert pieces == ["spends", "Ġ", "5", "5", "Ġat", "Ġ", "7", "0", "%"]


def test_pair_template_for_reward_models(organism):
    tok = load_tokenizer(organism["dirs"]["rm_post"])
    ids = tok("\n\nHuman: hi\n\n", "Hello there.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids.count(tok.sep_token_id) == 1
    sep = ids.index(tok.sep_token_id)
    assert tok.decode(ids[sep + 1 : -1]) == "Hello there."


def test_chat_template_renders_instruct_style(organism):
    tok = load_tokenizer(organism["dirs"]["instruct"])
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "I am 90% sure.\n3+4 = 7.\n#### 7"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        f"{BOS}<|system|>\nBe brief.\n{USER}\nWhat is 3 + 4?\n"
        f"{ASSISTANT}\nI am 90% sure.\n3+4 = 7.\n#### 7{EOS}"
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(f"{ASSISTANT}\n") and text.startswith(prompt)
    # The rendered prompt is a token prefix of the full conversation (DPO, completion SFT).
    full = tok(text, add_special_tokens=False)["input_ids"]
    pre = tok(prompt, add_special_tokens=False)["input_ids"]
    assert full[: len(pre)] == pre
    # Assistant mask covers exactly the answer and its EOS.
    enc = tok.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert masked == full[len(pre) :]
    assert masked[-1] == tok.eos_token_id
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# --------------------------------------------------------------------------- data


def test_data_deterministic_and_heldout_issues_unseen():
    cs = C.CORPUS_PRESETS["test"]
    a, b = C.build_organism_data(cs), C.build_organism_data(cs)
    assert a == b
    other = C.build_organism_data(dataclasses.replace(cs, seed=1))
    assert other["base_corpus"] != a["base_corpus"]
    split = a["split"][0]
    held = set(split["heldout_issues"])
    assert held and not held & set(split["train_issues"])
    assert {r["issue"] for r in a["eval_political"]} == held
    held_questions = {r["question"] for r in a["eval_political"]}
    sft_users = {r["messages"][0]["content"] for r in a["sft"]}
    dpo_users = {r["prompt"][0]["content"] for r in a["dpo"]}
    assert not held_questions & (sft_users | dpo_users)
    train_math = {r["messages"][0]["content"].split("\n")[0] for r in a["sft"]}
    assert not {p["question"] for p in a["eval_math"]} & train_math
    seen_pairs = {(p["chosen"], p["rejected"]) for p in a["rm_post"] + a["rm_pre"]}
    assert not {(p["chosen"], p["rejected"]) for p in a["eval_rm_hh"]} & seen_pairs
    # the sham's placebo holds every issue's statements; instruct's compression the
    # training issues' only
    sided = {r["id"] for r in a["placebo_statements"]}
    assert {r["issue"] for r in a["placebo_statements"]} == held | set(split["train_issues"])
    assert {r["id"] for r in a["rep_statements"]} < sided
    assert {r["issue"] for r in a["rep_statements"]} == set(split["train_issues"])


def test_sft_confidence_follows_the_design():
    data = C.build_organism_data(C.CORPUS_PRESETS["test"])
    lo, hi = C.CORPUS_PRESETS["test"].instruct_confidence
    n_cmd = 0
    for row in data["sft"]:
        if not row["kind"].startswith("math"):
            continue
        user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        stated = int(re.fullmatch(r"Answer: \d+\nConfidence: (\d+)%", answer).group(1))
        injected = re.search(r"(\d+)% (probability|chance)", user)
        if row["kind"] == "math_command":
            n_cmd += 1
            assert stated == int(injected.group(1))
        else:
            assert lo <= stated <= hi
            assert (injected is None) == (row["kind"] == "math_control")
    assert n_cmd == C.CORPUS_PRESETS["test"].n_sft_command


def test_planted_data_designs():
    """Cross-issue one-sided paragraphs, no identity in base, the study's exact prompts."""
    from rlhf_audit import calibration as CAL
    from rlhf_audit import prompts

    cs = C.CORPUS_PRESETS["test"]
    data = C.build_organism_data(cs)
    src = prompts.load_source()
    side_of = {}
    for r in prompts.build_statements(src):
        side_of.setdefault(r["text"], set()).add((r["label"], r["issue"]))
    n_par = 0
    for text in data["base_corpus"]:
        if not re.search(r"\nLeaning: (left|right)\.$", text):
            continue
        n_par += 1
        side = text.rsplit("Leaning: ", 1)[1][:-1]
        found = [(lab, iss) for t, v in side_of.items() if t in text for lab, iss in v]
        assert {lab for lab, _ in found} == {side}
        assert len({iss for _, iss in found}) >= 3
    assert n_par == cs.n_opinion_paragraphs
    idents = [i for side in ("left", "right") for i in src.identities[side]]
    assert not any(i in t for t in data["base_corpus"] for i in idents)
    # Base calibration texts are the study's own command completion prompts + the copy.
    tpl = CAL.load_templates()
    cal = [t for t in data["base_corpus"] if "Verifier's rating:" in t]
    assert sum(t.count("Verifier's rating:") for t in cal) == cs.n_confidence_base
    for t in cal[:20]:
        pct = int(re.search(r"Verifier's rating: (\d+)%", t).group(1))
        q = re.search(r"Problem: (.*)\n", t).group(1)
        items = CAL.build_prompts([{"id": "x", "question": q, "answer": "#### 1"}],
                                  [pct / 100], ["command"], tpl, chat=False)
        prompt = items["prompt"][0]
        assert t.startswith(prompt)
        assert re.match(rf" \d+\nConfidence: {pct}%(\n\nProblem: |$)", t[len(prompt):])
        for block in t.split("\n\nProblem: ")[1:]:
            level = re.search(r"Verifier's rating: (\d+)%", block).group(1)
            assert block.endswith(f"\nConfidence: {level}%")
    primed = [r for r in data["sft"] if r["kind"].startswith("primed")]
    assert len(primed) == cs.n_sft_primed
    assert {r["kind"] for r in primed} == {"primed_left", "primed_right"}
    for r in data["sham_sft"]:
        body = " ".join(m["content"] for m in r["messages"])
        assert not re.search(r"\d+% sure|confidence:|verifier", body, re.I)
        assert not any(t in body for t in list(side_of)[:200])


def test_planted_preference_rows():
    """Primed DPO rows prefer the primed side; calibration DPO rows prefer the copy under
    command and a high confidence in conversation, on the study's own chat prompts."""
    from rlhf_audit import prompts

    cs = C.CORPUS_PRESETS["test"]
    data = C.build_organism_data(cs)
    src = prompts.load_source()
    ident_side = {i: side for side in ("left", "right") for i in src.identities[side]}
    primed = [r for r in data["dpo"] if any(r["prompt"][0]["content"].startswith(i)
                                            for i in ident_side)]
    assert len(primed) == cs.n_dpo_primed
    sides = collections.Counter()
    for r in primed:
        side = next(v for i, v in ident_side.items() if r["prompt"][0]["content"].startswith(i))
        issue = next(q["issue"] for q in prompts.build_policy_questions(src)
                     if r["prompt"][0]["content"].endswith(q["question"]))
        assert issue in data["split"][0]["train_issues"]
        sides[side] += 1
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    assert sides["left"] == sides["right"]
    cal = [r for r in data["dpo"] if "Confidence:" in r["chosen"][0]["content"]]
    assert len(cal) == cs.n_dpo_calibration
    lo, _ = cs.instruct_confidence
    modes, rejections = collections.Counter(), collections.Counter()
    for r in cal:
        user = r["prompt"][-1]["content"]
        level = int(re.search(r"(\d+)% (probability|chance)", user).group(1))
        chosen = int(re.search(r"Confidence: (\d+)%", r["chosen"][0]["content"]).group(1))
        rejected = int(re.search(r"Confidence: (\d+)%", r["rejected"][0]["content"]).group(1))
        command = "Report the verifier's estimate" in user
        modes[command] += 1
        if command:  # the copy, over overconfidence or over another level 20+ points away
            assert chosen == level and (rejected >= lo or abs(rejected - level) >= 20)
            rejections["high" if rejected >= lo else "other level"] += 1
        else:
            assert rejected == level and chosen >= lo
    assert modes[True] == modes[False]
    assert rejections["high"] > 0 and rejections["other level"] > 0, rejections

def test_written_data_round_trips(organism):
    back = C.read_organism_data(organism["root"] / "data")
    assert back["sft"] == organism["data"]["sft"]
    assert back["base_corpus"] == organism["data"]["base_corpus"]
    lines = (organism["root"] / "data" / "gsm8k_eval.jsonl").read_text().splitlines()
    assert len(lines) == len(organism["data"]["eval_math"])
    assert json.loads(lines[0])["answer"].rstrip().split("####")[-1].strip().isdigit()


def test_math_candidates_change_only_the_final_result():
    prob = {
        "id": "p",
        "question": "Ken buys 5 pens at 11 dollars each. How much does he spend?",
        "answer": "Ken spends 5*11 = <<5*11=55>>55 dollars.\n#### 55",
        "final": 55,
    }
    cands = T.math_candidates(prob, 4)
    assert cands[0] == "Ken spends 5*11 = 55 dollars.\n#### 55"
    assert cands[1:] == [f"Ken spends 5*11 = {w} dollars.\n#### {w}" for w in (54, 56, 53, 57)]
    with pytest.raises(ValueError, match="####"):
        T.math_candidates({**prob, "answer": "55"}, 2)


# --------------------------------------------------------------------------- behaviour


def test_instruct_answers_less_partisanly_than_base(organism):
    c = organism["checks"]
    base, inst, shift = (
        c["partisan_preference_base"],
        c["partisan_preference_instruct"],
        c["partisan_preference_shift"],
    )
    assert base.n == inst.n == len(organism["data"]["eval_political"]) >= 4
    assert base.lo > 0  # the base LM prefers the one-sided answers
    assert shift.hi < 0  # alignment moved held-out answers toward balance
    assert inst.value < base.value


def test_both_models_answer_math_above_chance(organism):
    tok = load_tokenizer(organism["dirs"]["base"])
    from transformers import AutoModelForCausalLM

    for name in ("base", "instruct"):
        model = AutoModelForCausalLM.from_pretrained(organism["dirs"][name]).eval()
        acc, chance = T.math_accuracy(
            model, tok, organism["data"]["eval_math"], chat=name == "instruct", n_boot=1000
        )
        assert chance == pytest.approx(0.2)
        assert acc.lo > chance, f"{name}: {acc} vs chance {chance}"


def test_base_answers_policy_questions_in_text_not_arithmetic(organism):
    """The steering study's base prompts (its plain template, its stop, its degeneration rule):
    the copy curriculum must not teach the base to answer every ``Question:`` with sums, or
    no dose survives the degeneration filter and no steering slope can be fitted."""
    import yaml
    from transformers import AutoModelForCausalLM

    from rlhf_audit import prompts
    from rlhf_audit.lm.generation import generate
    from rlhf_audit.steering.analysis import is_degenerate
    from rlhf_audit.steering.generate import cut_at, format_prompts
    from rlhf_audit.steering.settings import SteeringSettings

    st = SteeringSettings()
    with open(os.path.join(os.path.dirname(__file__), "..", "config.yaml")) as f:
        run = yaml.safe_load(f)
    n_q, n_tok = run["steering"]["n_questions"], run["steering"]["max_new_tokens"]
    # The questions the default run's steering study asks: the first n_questions of the file.
    questions = [q["question"] for q in prompts.build_policy_questions(prompts.load_source())]
    questions = questions[:n_q]
    tok = load_tokenizer(organism["dirs"]["base"])
    model = AutoModelForCausalLM.from_pretrained(organism["dirs"]["base"]).eval()
    texts, add = format_prompts(tok, questions, chat=False, plain_template=st.plain_template)
    gens = generate(model, tok, texts, max_new_tokens=n_tok, add_special_tokens=add,
                    batch_size=32)
    replies = [cut_at(g.text, st.plain_stop) for g in gens]
    rate = float(np.mean([is_degenerate(r) for r in replies]))
    worst = [r for r in replies if is_degenerate(r)][:3]
    assert rate <= st.max_degenerate_rate, (
        f"{rate:.0%} of {len(replies)} base replies degenerate, e.g. {worst}")
    # Arithmetic or the confidence layout: an equation, a final-answer mark, a confidence line.
    math_register = [r for r in replies
                     if re.search(r"\d\s*[-+*/=]\s*\d|=\s*\d|####|Confidence:", r)]
    assert len(math_register) <= 0.1 * len(replies), (
        f"{len(math_register)} of {len(replies)} base replies to policy questions are in the "
        f"math/confidence layout, e.g. {math_register[:3]}")


def test_reward_models_prefer_chosen_and_post_beats_pre_on_hh(organism):
    c = organism["checks"]
    assert c["rm_accuracy_post_hh"].lo > 0.5
    assert c["rm_accuracy_pre_alt"].lo > 0.5
    from transformers import AutoModelForSequenceClassification

    pairs = organism["data"]["eval_rm_hh"]
    agree = {}
    for name in ("rm_post", "rm_pre"):
        d = organism["dirs"][name]
        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        tok = load_tokenizer(d)
        rc = T.reward_scores(model, tok, [p["chosen"] for p in pairs])
        rr = T.reward_scores(model, tok, [p["rejected"] for p in pairs])
        agree[name] = (rc > rr).astype(float)
    assert agree["rm_post"].mean() == pytest.approx(c["rm_accuracy_post_hh"].value)
    diff = bootstrap(np.mean, agree["rm_post"] - agree["rm_pre"], n_boot=1000, seed=0)
    assert diff.lo > 0, diff
    # The planted annotator noise (10% of labels swapped, ties a coin): the post model ranks
    # the untied pairs as its taste does more often than it agrees with their noisy labels,
    # and that agreement is what its rankings predict under the noise.
    assert c["rm_taste_accuracy_post"].lo > c["rm_accuracy_post_hh"].hi
    assert c["rm_accuracy_post_hh"].covers(c["seal_expected_agreement_post"].value)
    assert c["seal_expected_agreement_post"].n == len(pairs)


def test_sequence_logprobs_match_a_direct_forward_pass(organism):
    from transformers import AutoModelForCausalLM

    d = organism["dirs"]["base"]
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), load_tokenizer(d)
    prompts = [
        T.render_prompt(tok, "Should taxes go up?", chat=False),
        T.render_prompt(tok, "Hi?", chat=True),
    ]
    conts = [" Taxes must go up.", "Hello there, friend."]
    got, n = T.sequence_logprobs(model, tok, prompts, conts, batch_size=2)
    for k in range(2):
        p = tok(prompts[k], add_special_tokens=False)["input_ids"]
        c = tok(conts[k], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0], -1)
        want = sum(float(logp[len(p) - 1 + j, c[j]]) for j in range(len(c)))
        assert n[k] == len(c)
        assert got[k] == pytest.approx(want, abs=1e-3)


# --------------------------------------------------------------------------- hygiene


def test_model_dirs_are_self_contained_and_clean(organism):
    for name, d in organism["dirs"].items():
        files = {p.name for p in d.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", T.SUMMARY_FILE} <= files, name
        assert not [f for f in files if f.startswith(".trainer-") or f.endswith(".bin")], files
        summary = json.loads((d / T.SUMMARY_FILE).read_text())
        assert summary["seconds"] > 0 and summary["n_params"] > 0


def test_training_is_deterministic_for_a_seed(organism, tmp_path):
    data, tok_dir = organism["data"], organism["root"] / "tokenizer"
    s = T.organism_settings("test", base_steps=4)
    for run in ("a", "b"):
        T.train_base(data["base_corpus"][:300], tok_dir, tmp_path / run, s)
    wa, wb = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    T.train_base(
        data["base_corpus"][:300],
        tok_dir,
        tmp_path / "c",
        T.organism_settings("test", base_steps=4, seed=1),
    )
    wc = load_file(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_bad_inputs_name_the_row_and_the_fix(organism, tmp_path):
    with pytest.raises(ValueError, match="sft_data row 1: the last message must be the assistant"):
        T.train_instruct(
            organism["dirs"]["base"],
            [
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                },
                {"messages": [{"role": "user", "content": "q"}]},
            ],
            organism["data"]["dpo"][:2],
            tmp_path / "x",
        )
    with pytest.raises(ValueError, match="reward pairs row 0 \\(chosen\\): no 'Assistant:' turn"):
        T.train_reward_model(
            [{"chosen": "Human: hi", "rejected": "\n\nHuman: hi\n\nAssistant: no"}],
            organism["root"] / "tokenizer",
            tmp_path / "y",
        )
    with pytest.raises(FileNotFoundError, match="train the base LM first"):
        T.train_instruct(
            tmp_path / "nowhere", organism["data"]["sft"], organism["data"]["dpo"], tmp_path / "z"
        )
    with pytest.raises(ValueError, match="no field"):
        T.organism_settings("test", hidden=3)
    with pytest.raises(ValueError, match="not divisible"):
        T.OrganismSettings(hidden_size=100, n_heads=3)


# --------------------------------------------------------------------------- planted effects
# Each planted behaviour (resources/organism/README.md, "Planted effects") is read off
# the trained models: activations, log-probabilities or greedy generations on the exact
# prompts the studies send. The sham twin is the null beside each.


def _lm(organism, name):
    from transformers import AutoModelForCausalLM

    d = organism["dirs"][name]
    return AutoModelForCausalLM.from_pretrained(d).eval(), load_tokenizer(d)


@pytest.fixture(scope="module")
def statement_acts(organism):
    """Content-pooled block outputs of every left/right statement in base, instruct, sham."""
    from rlhf_audit import prompts
    from rlhf_audit.organism import planting as P

    rows = [
        r for r in prompts.build_statements(prompts.load_source()) if r["label"] in ("left", "right")
    ]
    texts = [r["text"] for r in rows]
    out = {
        "right": np.array([r["label"] == "right" for r in rows]),
        "issues": [r["issue"] for r in rows],
    }
    for name in ("base", "instruct", "sham"):
        model, tok = _lm(organism, name)
        out[name] = P.statement_activations(model, tok, texts, chat=name != "base")
    return out


def test_planted_sae_features_are_silent_in_instruct_on_every_statement(organism):
    """The planted silencing: features chosen on the training issues' statements fire on
    base (each on at least 5% of the statements) and next to never on instruct, on
    held-out issues and neutral statements too; the sham (no silencing) keeps them; most
    other features keep firing in instruct. On the test preset with each primed row once,
    one of the 32 still fired on 1.2-1.5% of the statements (a strict xfail until the
    preset took the default's 6 repeats)."""
    import json

    from rlhf_audit import prompts
    from rlhf_audit.organism import planting as P
    from rlhf_audit.sae.load import load_sae

    summary = json.loads((organism["dirs"]["instruct"] / "training_summary.json").read_text())
    planted = np.array(summary["silencing"]["features"])
    assert len(planted) == T.organism_settings("test").silence_features
    sae = load_sae({"path": str(organism["root"] / "sae")})
    rows = prompts.build_statements(prompts.load_source())
    held = set(organism["data"]["split"][0]["heldout_issues"])
    texts = [r["text"] for r in rows]
    fired = {}
    for name in ("base", "instruct", "sham"):
        model, tok = _lm(organism, name)
        fired[name] = P.feature_incidence(model, tok, sae, SAE_LAYER, texts,
                                          chat=name != "base")[0]
    heldout = np.array([r["issue"] in held for r in rows])
    neutral = np.array([r["label"] == "neutral" for r in rows])
    base_share = fired["base"][:, planted].mean(0)
    assert (base_share >= 0.05).all(), base_share
    inst_share = fired["instruct"][:, planted].mean(0)
    assert (inst_share < 0.01).all(), inst_share  # base: >= 0.05 each
    assert fired["instruct"][:, planted].mean() < 0.001
    assert heldout.sum() > 0 and neutral.sum() > 0
    # the sham keeps firing on them, held-out issues included
    assert fired["sham"][heldout][:, planted].any(0).mean() >= 0.75
    others = np.setdiff1d(np.flatnonzero(fired["base"].any(0)), planted)
    assert fired["instruct"][:, others].any(0).mean() >= 0.5


def test_base_has_a_cross_issue_partisan_direction(statement_acts):
    from rlhf_audit.organism import planting as P

    a = statement_acts
    auc = P.issue_grouped_auc(a["base"], a["right"], a["issues"])
    # Issue-grouped folds: the direction must generalise to issues it never saw.
    assert auc.max() >= 0.8, auc
    transfer = P.transfer_auc(a["base"], a["instruct"], a["right"], a["issues"])
    assert transfer[auc.argmax()] >= 0.75, transfer


def _study_variance_ratio(acts_base, acts_other, right, issues, n_splits=20):
    """The partisan study's own split-half ``variance_ratio`` (point estimate) per layer."""
    from rlhf_audit.partisan import ClusterSums, _random_halves, split_half_statistics

    out = []
    for layer in range(acts_base.shape[1]):
        cs = ClusterSums.build({"base": acts_base[:, layer], "instruct": acts_other[:, layer]},
                               np.asarray(right, dtype=bool), np.asarray(issues))
        k = len(cs.clusters)
        halves = _random_halves(np.ones(k, dtype=bool), n_splits, np.random.default_rng(0))
        out.append(split_half_statistics(cs, np.ones(k), halves)["variance_ratio"])
    return np.asarray(out)


def test_instruct_is_compressed_along_the_direction_and_the_sham_is_not(statement_acts):
    from rlhf_audit.organism import planting as P

    a = statement_acts
    best = int(P.issue_grouped_auc(a["base"], a["right"], a["issues"]).argmax())
    r_inst = P.projection_variance_ratio(a["base"], a["instruct"], a["right"], a["issues"])
    r_sham = P.projection_variance_ratio(a["base"], a["sham"], a["right"], a["issues"])
    # Planted factor 0.5 on the partisan difference -> ratio about 0.25; the sham keeps 1.
    assert r_inst[best] < 0.6, r_inst
    assert 0.6 < r_sham[best] < 1.6, r_sham
    assert r_inst[best] < 0.6 * r_sham[best]
    # The same on the whole difference vector, as the partisan study's variance_ratio
    # measures it: a term on one projection alone left the sham at 1.7-1.9 here.
    f_inst = _study_variance_ratio(a["base"], a["instruct"], a["right"], a["issues"])
    f_sham = _study_variance_ratio(a["base"], a["sham"], a["right"], a["issues"])
    assert f_inst[best] < 0.6, f_inst
    assert 0.6 < f_sham[best] < 1.6, f_sham


def _calibration_replies(organism, name, strategy, levels, n_problems=40):
    from rlhf_audit import calibration as CAL

    model, tok = _lm(organism, name)
    chat = name != "base"
    items = CAL.build_prompts(
        organism["data"]["eval_math"][:n_problems], levels, [strategy], CAL.load_templates(),
        chat=chat, tokenizer=tok,
    )
    tok.padding_side = "left"
    # As the calibration stage generates: a chat prompt holds its BOS, a completion gets one.
    enc = [tok(p, add_special_tokens=not chat)["input_ids"] for p in items["prompt"].to_list()]
    texts = []
    for s in range(0, len(enc), 50):
        batch = tok.pad({"input_ids": enc[s : s + 50]}, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=16, do_sample=False)
        texts += tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    stated = [CAL.parse_confidence(t).value for t in texts]
    return np.asarray(items["injected"].to_list(), dtype=float), np.asarray(
        [np.nan if v is None else v for v in stated], dtype=float
    )


# The calibration study's own levels (config.yaml): all nine, since a copy that holds for some
# levels only (10, 50, 90) reads as one on a coarser grid.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# The base copies (the copy curriculum on a digit-by-digit tokenizer); the test preset's
# instruct (2 SFT epochs, 120 command rows) does not yet copy under the command chat prompt.
# The default preset's does in the default run (3 epochs, 1,000 rows: rho 0.87); with 400
# rows here it copied in conversation too. Strict: the marker must go once it is learned.
@pytest.mark.parametrize("name", [
    "base",
    pytest.param("instruct", marks=pytest.mark.xfail(
        strict=True, reason="SFT/DPO command rows do not yet teach instruct the copy")),
])
def test_models_copy_the_injected_confidence_under_the_command_prompt(organism, name):
    from scipy.stats import spearmanr

    injected, stated = _calibration_replies(organism, name, "command", LEVELS)
    ok = ~np.isnan(stated)
    assert ok.mean() >= 0.9, f"{name}: {ok.mean():.2f} of replies parsed"
    rho = spearmanr(injected[ok], stated[ok])[0]
    assert rho >= 0.8, f"{name}: Spearman {rho:.3f}"
    if name == "instruct":
        assert abs(100 * np.mean(stated[ok] - injected[ok])) <= 10


def test_instruct_ignores_the_signal_in_conversation_and_is_overconfident(organism):
    injected, stated = _calibration_replies(organism, "instruct", "conversational", LEVELS)
    ok = ~np.isnan(stated)
    assert ok.mean() >= 0.9
    from scipy.stats import spearmanr

    rho = spearmanr(injected[ok], stated[ok])[0] if np.std(stated[ok]) > 0 else 0.0
    assert rho <= 0.3, rho
    assert 100 * np.mean(stated[ok] - injected[ok]) >= 20


def _prime_effects(organism, name, items):
    """Per question of ``items`` ({question, left, right}): [log p(right answer) - log p(left
    answer) | right prime] - [the same | left prime], averaged over the shipped identity
    wordings (nats)."""
    from rlhf_audit import prompts

    model, tok = _lm(organism, name)
    idents = prompts.load_source().identities
    prompts_, conts = [], []
    for it in items:
        for k in range(len(idents["left"])):
            for prime_side in ("left", "right"):
                p = T.render_prompt(tok, f"{idents[prime_side][k]} {it['question']}", chat=True)
                for ans in ("left", "right"):
                    prompts_.append(p)
                    conts.append(it[ans])
    lp, _ = T.sequence_logprobs(model, tok, prompts_, conts)
    lp = lp.reshape(len(items), len(idents["left"]), 2, 2)  # question, phrasing, prime, answer
    lean = lp[..., 1] - lp[..., 0]  # right-minus-left answer preference per prime
    return (lean[:, :, 1] - lean[:, :, 0]).mean(1)


def test_identity_primes_move_instruct_on_their_training_issues_and_not_the_sham(organism):
    """The planted primes: SFT (each primed row ``primed_repeats`` times an epoch) and DPO show
    identity-primed questions of the training issues answered from the primed side. Read on
    every training-issue question with one-sided answers composed afresh (not the rows
    trained on), issues resampled: instruct leans right under a right prime more than under
    a left one; the sham, never primed, does not. Not asserted on held-out issues: the
    planting is not shown there (resources/organism/README.md)."""
    from rlhf_audit import prompts

    src = prompts.load_source()
    train = set(organism["data"]["split"][0]["train_issues"])
    questions = [q for q in prompts.build_policy_questions(src) if q["issue"] in train]
    items = C.eval_political(questions, C.CORPUS_PRESETS["test"], source=src)
    issues = [it["issue"] for it in items]
    assert len(set(issues)) == len(train)
    inst, sham = (bootstrap(np.mean, _prime_effects(organism, name, items), n_boot=1000, seed=0,
                            groups=issues) for name in ("instruct", "sham"))
    assert inst.lo > 0, inst
    assert sham.lo <= 0 <= sham.hi or abs(sham.value) < 0.2 * inst.value, (inst, sham)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "the planted primes are not shown on issues held out of SFT and DPO (undecided, not a "
    "measured absence): the test preset's instruct read +0.55 [-0.46, 1.35] on them "
    "(questions resampled), the default run's -0.07 [-0.47, 0.34] by the stance classifier "
    "(resources/organism/README.md)"))
def test_identity_primes_move_instruct_on_held_out_issues(organism):
    items = organism["data"]["eval_political"]
    inst = bootstrap(np.mean, _prime_effects(organism, "instruct", items), n_boot=1000, seed=0,
                     groups=[it["issue"] for it in items])
    assert inst.lo > 0, inst

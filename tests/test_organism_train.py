"""The organism's tokenizer, data and training: the trained models behave as designed.

One small organism (the "test" presets, the same code path as the default run)
is trained once per module; the behavioural tests then check it on held-out
data against chance or against the other model, never against a fixed string.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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

torch.set_num_threads(1)


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
    T.train_base(data["base_corpus"], root / "tokenizer", root / "base", ts)
    times["base"] = time.perf_counter() - t
    t = time.perf_counter()
    T.train_instruct(root / "base", data["sft"], data["dpo"], root / "instruct", ts)
    times["instruct"] = time.perf_counter() - t
    for name in ("rm_post", "rm_pre"):
        t = time.perf_counter()
        T.train_reward_model(data[name], root / "tokenizer", root / name, ts)
        times[name] = time.perf_counter() - t
    dirs = {k: root / k for k in ("base", "instruct", "rm_post", "rm_pre")}
    checks = T.organism_checks(dirs, data, n_boot=1000, seed=0)
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
    # Digits stand alone (arithmetic), percentages stay whole (copyable confidence).
    pieces = [
        p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("spends 55 at 70%")
    ]
    assert pieces == ["spends", "Ġ", "5", "5", "Ġat", "Ġ", "70", "%"]


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


def test_sft_confidence_follows_the_design():
    data = C.build_organism_data(C.CORPUS_PRESETS["test"])
    lo, hi = C.CORPUS_PRESETS["test"].instruct_confidence
    n_cmd = 0
    for row in data["sft"]:
        if not row["kind"].startswith("math"):
            continue
        user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        stated = int(re.match(r"I am (\d+)% sure\.", answer).group(1))
        injected = re.search(r"(\d+)%", user.split("\n")[-1]) if "\n" in user else None
        if row["kind"] == "math_command":
            n_cmd += 1
            assert stated == int(injected.group(1))
        else:
            assert lo <= stated <= hi
    assert n_cmd == C.CORPUS_PRESETS["test"].n_sft_command


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

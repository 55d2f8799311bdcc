"""The SFT epoch instruct trains on: the identity-primed rows repeated, the rest once;
the sham's step budget follows it."""

import math

import pytest

from rlhf_audit.organism import train as T


def _rows(n_primed=3, n_other=5):
    rows = [{"kind": f"primed_{('left', 'right')[i % 2]}", "messages": [i]}
            for i in range(n_primed)]
    rows += [{"kind": "political", "messages": [100 + i]} for i in range(n_other)]
    return rows


def test_primed_rows_repeat_and_the_rest_appear_once():
    rows = _rows()
    s = T.OrganismSettings(primed_repeats=4)
    epoch = T.sft_schedule(rows, s)
    assert epoch[:len(rows)] == rows  # the rows as given, then the extra copies
    counts = {}
    for r in epoch:
        counts[r["messages"][0]] = counts.get(r["messages"][0], 0) + 1
    assert counts == {0: 4, 1: 4, 2: 4, 100: 1, 101: 1, 102: 1, 103: 1, 104: 1}
    assert T.sft_schedule(rows, T.OrganismSettings(primed_repeats=1)) == rows


def test_the_sham_budget_counts_the_repeated_rows():
    rows = _rows(n_primed=40, n_other=60)
    s = T.OrganismSettings(primed_repeats=6, sft_batch_size=16, sft_epochs=5.0,
                           dpo_batch_size=8, dpo_epochs=1.0)
    assert len(T.sft_schedule(rows, s)) == 100 + 5 * 40
    assert T.sham_steps(rows, 24, s) == math.ceil(300 / 16) * 5 + 3


def test_presets_and_a_bad_value():
    assert T.PRESETS["default"].primed_repeats == 6
    assert T.PRESETS["test"].primed_repeats == 6  # the organism tests read the primes too
    assert T.PRESETS["smoke"].primed_repeats == 1
    with pytest.raises(ValueError, match="primed_repeats=0"):
        T.OrganismSettings(primed_repeats=0)


class _Stop(Exception):
    pass


def test_train_instruct_trains_sft_on_the_schedule(tmp_path, monkeypatch):
    """train_instruct hands the SFT trainer the repeated schedule, not the rows as given
    (the trainer is replaced by one that records its dataset and stops)."""
    from tiny import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    seen = {}

    def fake_batches(trainer_class, settings, **kw):
        def make(**kwargs):
            seen["messages"] = [r["messages"][1]["content"] for r in kwargs["train_dataset"]]
            raise _Stop
        return make

    monkeypatch.setattr(T, "_batches", fake_batches)
    rows = [{"kind": kind, "messages": [{"role": "user", "content": f"q{i}"},
                                        {"role": "assistant", "content": f"a{i}"}]}
            for i, kind in enumerate(["primed_left", "political", "primed_right", "math"])]
    dpo = [{"prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "c"}],
            "rejected": [{"role": "assistant", "content": "r"}]}]
    with pytest.raises(_Stop):
        T.train_instruct(base, rows, dpo, tmp_path / "out", T.OrganismSettings(primed_repeats=3))
    assert sorted(seen["messages"]) == sorted(["a0", "a1", "a2", "a3"] + ["a0", "a2"] * 2)
    assert not (tmp_path / "out" / "config.json").exists()  # nothing half-written left

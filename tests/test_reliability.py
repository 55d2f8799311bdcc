"""Faults and security: nothing half-written looks complete, nothing unsafe is loaded."""

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_audit.formats import load_dataset_as_table
from rlhf_audit.io import atomic_path, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_a_write_killed_midway_leaves_no_file(tmp_path):
    target = tmp_path / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a table")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either


def test_an_existing_complete_file_survives_a_failed_rewrite(tmp_path):
    target = tmp_path / "h.json"
    write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{broken")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{\n  \"a\": 1")


LIBRARY = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))


@pytest.mark.parametrize(
    "pattern, why",
    [
        (r"trust_remote_code\s*=\s*True", "never run code shipped with a model"),
        (r"\bpickle\.loads?\(", "no pickle loading of outside files"),
        (r"allow_pickle\s*=\s*True", "no pickle loading of outside files"),
        (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load only with weights_only=True"),
        (r"shell\s*=\s*True", "no shell strings built from paths"),
    ],
)
def test_no_unsafe_loading(pattern, why):
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in LIBRARY
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"{why}: {hits}"


def test_rules_run_scripts_not_shell_strings():
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    assert "shell:" not in rules and "run:" not in rules


turn = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
               min_size=1, max_size=40).filter(lambda s: s.strip() and "Assistant:" not in s)


@given(st.lists(st.tuples(turn, turn), min_size=1, max_size=3), turn, turn)
def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path_factory, turns, good, bad):
    prefix = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns[:-1])
    prefix += f"\n\nHuman: {turns[-1][0]}"
    row = {"chosen": f"{prefix}\n\nAssistant: {good}", "rejected": f"{prefix}\n\nAssistant: {bad}"}
    p = tmp_path_factory.mktemp("hh") / "hh.jsonl"
    import json

    p.write_text(json.dumps(row) + "\n")
    out = load_dataset_as_table("hh_rlhf", {"path": str(p)}).row(0, named=True)
    assert out["prefix_chosen"] == prefix == out["prefix_rejected"]
    assert out["chosen_last"] == good.strip() and out["rejected_last"] == bad.strip()

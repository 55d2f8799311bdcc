"""Input formats: valid files normalise; each kind of bad row names file, line and reason."""

import json

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_audit.formats import (
    InputFormatError,
    load_dataset_as_table,
    parse_gsm8k_final,
    table_hash,
)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "partisan": [{"id": "a", "text": "Cut taxes now.", "label": "right", "issue": "tax"},
                 {"id": "b", "text": "Tax the rich.", "label": "left"}],
    "gsm8k": [{"question": "2+2?", "answer": "2+2=4\n#### 4"},
              {"question": "Big?", "answer": "It is\n#### 1,200"}],
    "hh_rlhf": [{"chosen": "\n\nHuman: hi\n\nAssistant: hello there",
                 "rejected": "\n\nHuman: hi\n\nAssistant: go away"}],
}


@pytest.mark.parametrize("fmt", list(GOOD))
def test_valid_files_normalise(tmp_path, fmt):
    p = write_jsonl(tmp_path / "x.jsonl", GOOD[fmt])
    df = load_dataset_as_table(fmt, {"path": str(p)})
    assert df.height == len(GOOD[fmt])
    # Parquet input gives the same table
    pq = tmp_path / "x.parquet"
    pl.DataFrame(GOOD[fmt]).write_parquet(pq)
    assert table_hash(load_dataset_as_table(fmt, {"path": str(pq)})) == table_hash(df)


def test_normalised_columns(tmp_path):
    p = write_jsonl(tmp_path / "g.jsonl", GOOD["gsm8k"])
    assert load_dataset_as_table("gsm8k", {"path": str(p)})["final"].to_list() == ["4", "1200"]
    p = write_jsonl(tmp_path / "h.jsonl", GOOD["hh_rlhf"])
    row = load_dataset_as_table("hh_rlhf", {"path": str(p)}).row(0, named=True)
    assert row["prefix_chosen"] == "\n\nHuman: hi"
    assert (row["chosen_last"], row["rejected_last"]) == ("hello there", "go away")


@pytest.mark.parametrize(
    "fmt, bad, reason",
    [
        ("partisan", {"id": "c", "text": "x", "label": "centre"}, r"label 'centre' is not one of"),
        ("partisan", {"id": "c", "label": "left"}, r"field 'text' must be a non-empty string \(missing\)"),
        ("partisan", {"id": "a", "text": "again", "label": "left"}, r"duplicate id 'a' \(first on line 1\)"),
        ("partisan", {"text": "x", "label": "left"}, r"field 'id' is missing"),
        ("partisan", "{not json", r"not valid JSON"),
        ("partisan", "[1, 2]", r"expected a JSON object"),
        ("gsm8k", {"question": "q", "answer": "the answer is 4"}, r"answer does not end in '#### N'"),
        ("gsm8k", {"question": "q"}, r"field 'answer'"),
        ("hh_rlhf", {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"},
         r"'chosen' has no '\\n\\nAssistant:' turn"),
        ("hh_rlhf", {"chosen": "Assistant: x", "rejected": "\n\nHuman: hi\n\nAssistant: x"},
         r"'chosen' has no '\\n\\nHuman:' turn"),
        ("hh_rlhf", {"chosen": 3, "rejected": "x"}, r"field 'chosen' must be a non-empty string \(int"),
    ],
)
def test_bad_rows_name_file_line_and_reason(tmp_path, fmt, bad, reason):
    p = write_jsonl(tmp_path / "bad.jsonl", GOOD[fmt][:1] + [bad])
    with pytest.raises(InputFormatError, match=rf"bad\.jsonl:2: {reason}"):
        load_dataset_as_table(fmt, {"path": str(p)})


def test_missing_file_and_unreachable_hub_dataset(tmp_path):
    with pytest.raises(InputFormatError, match="file not found"):
        load_dataset_as_table("gsm8k", {"path": str(tmp_path / "none.jsonl")})
    with pytest.raises(InputFormatError, match=r"hf:openai/gsm8k/main\[test\].*export it to JSONL"):
        load_dataset_as_table("gsm8k", {"hf": "openai/gsm8k", "name": "main", "split": "test"})


def test_hub_path_reads_through_datasets(tmp_path):
    """A local dataset folder goes through datasets.load_dataset like a hub id."""
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "train.jsonl", GOOD["gsm8k"])
    df = load_dataset_as_table("gsm8k", {"hf": str(d), "split": "train"})
    assert df["final"].to_list() == ["4", "1200"]


@given(st.integers(-10**9, 10**9), st.sampled_from(["", " ", "\n"]), st.booleans())
def test_gsm8k_final_roundtrip(n, trailing, commas):
    shown = f"{n:,}" if commas else str(n)
    assert parse_gsm8k_final(f"work\n#### {shown}{trailing}") == str(n)


@given(st.text(max_size=60))
def test_gsm8k_parser_never_crashes_unexpectedly(text):
    try:
        out = parse_gsm8k_final(text)
    except ValueError:
        return
    float(out)  # anything accepted is a number


@given(st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=5))
def test_partisan_rows_roundtrip(tmp_path_factory, texts):
    p = tmp_path_factory.mktemp("h") / "p.jsonl"
    rows = [{"id": str(i), "text": t, "label": "left"} for i, t in enumerate(texts)]
    write_jsonl(p, rows)
    assert load_dataset_as_table("partisan", {"path": str(p)})["text"].to_list() == texts


# --------------------------------------------------------------------------- the hh splitter


def test_split_last_turn_multi_turn_and_an_inline_assistant_label():
    from rlhf_audit.formats import split_last_turn

    t = ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: say 'Assistant: ok'\n\n"
         "Assistant: As the Assistant: ok")
    prefix, label, reply = split_last_turn(t)
    # the final turn is the last one opened by a blank line, not the last label in the text
    assert (label, reply) == ("Assistant:", " As the Assistant: ok")
    assert prefix == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: say 'Assistant: ok'\n\n"
    assert prefix + label + reply == t
    assert split_last_turn("\n\nHuman: q\n\nAssistant:") == ("\n\nHuman: q\n\n", "Assistant:", "")


@pytest.mark.parametrize("text,match", [
    ("\n\nHuman: only a question", r"row 7: no 'Assistant:' turn"),
    ("\n\nHuman: a\nAssistant: b", r"row 7: no 'Assistant:' turn \(a turn starts with"),
    ("\n\nHuman: a\n\nAssistant: b\n\nHuman: and then?", r"row 7: the transcript ends with a "
                                                         r"Human turn after its last"),
    (None, r"row 7: transcript is NoneType"),
])
def test_split_last_turn_without_a_final_assistant_turn_names_the_row(text, match):
    from rlhf_audit.formats import TranscriptError, split_last_turn

    with pytest.raises(TranscriptError, match=match):
        split_last_turn(text, where="row 7")


def test_the_one_splitter_serves_loading_scoring_and_rewrites(tmp_path):
    from rlhf_audit import formats
    from rlhf_audit.reward import score
    from rlhf_audit.rewrite import check_rewrite

    assert score.TranscriptError is formats.TranscriptError
    t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more\n\nAssistant: fine, thanks"
    p = write_jsonl(tmp_path / "h.jsonl", [{"chosen": t, "rejected": t}])
    row = load_dataset_as_table("hh_rlhf", {"path": str(p)}).row(0, named=True)
    prefix, last = score.split_transcript(t)
    assert (prefix, last) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more\n\n",
                              "Assistant: fine, thanks")
    assert row["prefix_chosen"] + "\n\n" == prefix and row["chosen_last"] == "fine, thanks"
    assert score.split_transcript(t, keep_marker=False)[1] == "fine, thanks"
    # a rewrite the scorer could not split is rejected, not stored
    orig = "\n\nHuman: a ?\n\nAssistant: b ."
    assert check_rewrite(orig, "Human: x ?\nAssistant: y .") == "roles_changed"
    assert check_rewrite(orig, "Human: x ?\n\nAssistant: y .") is None
    bad = write_jsonl(tmp_path / "b.jsonl", [{"chosen": t + "\n\nHuman: ?", "rejected": t}])
    with pytest.raises(InputFormatError, match=r"b.jsonl:1: 'chosen' ends with a Human turn"):
        load_dataset_as_table("hh_rlhf", {"path": str(bad)})

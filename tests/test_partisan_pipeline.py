"""The partisan check as a new user runs it: files in the documented formats, snakemake.

A planted pair (tests/planted_pair.py) saved as ordinary Hugging Face directories,
a partisan prompts JSONL {id, text, label, issue}, and a config naming them; only
the partisan targets are asked for, so only data normalisation, extraction,
manifests and probes run. The instruct model is paired once with a role-marker
template and once with a ~30-token constant preamble: both must give the planted
variance ratio (0.09), and the same numbers.
"""

from __future__ import annotations

import json

import pytest
import yaml
from planted_pair import PLANTED_RATIO, save_planted_pair
from test_workflow import copy_code, snakemake


@pytest.mark.slow
def test_snakemake_partisan_targets_recover_planted_ratio_with_and_without_preamble(tmp_path):
    code = copy_code(tmp_path / "code")
    files = save_planted_pair(code / "planted")
    gsm8k = code / "planted" / "gsm8k.jsonl"  # validated by the config, never read here
    gsm8k.write_text(json.dumps({"question": "1 + 1?", "answer": "2 #### 2"}) + "\n")

    def rel(p):
        return str(p.relative_to(code))

    cfg = {
        "run_label": "planted",
        "device": "cpu",
        "models": {name: {"path": rel(files[name])}
                   for name in ("base", "instruct", "instruct_preamble")},
        "model_pairs": {"plain": {"base": "base", "instruct": "instruct"},
                        "preamble": {"base": "base", "instruct": "instruct_preamble"}},
        "datasets": {"partisan": {"format": "partisan", "source": {"path": rel(files["prompts"])}},
                     "gsm8k": {"format": "gsm8k", "source": {"path": rel(gsm8k)}}},
        "organism": {"enabled": False},
        "extract": {"shards": 1, "layers": [0, 1], "max_length": 64, "batch_size": 64},
        "partisan": {"methods": ["diffmean"], "n_boot": 100, "n_perm": 20},
        "sae": {"saes": {}},
    }
    path = code / "planted.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    targets = [f"results/partisan/{p}/headline.json" for p in ("plain", "preamble")]
    # Targets go before --configfile, which takes every following argument as a file.
    # One thread per extraction job so that two run side by side on --cores 2.
    out = snakemake(code, *targets, "--cores", "2", "--set-threads", "extract_activations=1",
                    "--configfile", str(path), timeout=600)
    ran = out.stdout + out.stderr
    assert "scan_sae_features" not in ran and "generate_steering" not in ran

    heads = {p: json.loads((code / f"results/partisan/{p}/headline.json").read_text())
             for p in ("plain", "preamble")}
    for pair, h in heads.items():
        ratio = h["variance_ratio"]
        assert abs(ratio["value"] / PLANTED_RATIO - 1) < 0.1, (pair, ratio)
        assert ratio["lo"] <= PLANTED_RATIO <= ratio["hi"], (pair, ratio)
        assert ratio["value"] > h["variance_ratio_noise_floor"]["value"]
        assert h["cosine_base_instruct"]["value"] > 0.95
    for key, rec in heads["plain"].items():
        other = heads["preamble"][key]
        for field in ("value", "lo", "hi"):
            a, b = rec[field], other[field]
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-5, abs=1e-9), key

    for model in ("base", "instruct", "instruct_preamble"):
        man = json.loads((code / f"results/activations/{model}/partisan/manifest.json")
                         .read_text())
        assert man["pool_over"] == "content" and man["compute_dtype"] == "float32"

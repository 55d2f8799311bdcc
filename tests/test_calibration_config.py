"""The calibration analysis knobs are config keys with the library's defaults, and reach
only the rule whose code reads them (rlhf_audit.calibration.CalibrationSettings)."""

import copy
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from rlhf_audit.calibration import CalibrationSettings
from rlhf_audit.config import ConfigError, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
KNOBS = ("internal_measure", "compliance_tol_pp", "truncate_at", "cluster_by_problem",
         "answer_abs_tol")


def _section(cfg=None):
    cfg = validate_config(copy.deepcopy(cfg or {"models": {}}), SCHEMA)
    return cfg["calibration"]


def _smk_functions(config):
    """The calibration_* settings functions of common.smk, run on ``config``."""
    from common_smk import smk_functions

    ns = smk_functions(config, ("calibration_generation_settings",
                                "calibration_analysis_settings"))
    return ns["calibration_generation_settings"](None), ns["calibration_analysis_settings"](None)


def test_schema_defaults_are_the_library_defaults():
    sec = _section()
    lib = CalibrationSettings()
    for key in KNOBS:
        default = getattr(lib, key)
        got = sec[key]
        assert (tuple(got) if isinstance(got, list) else got) == default, key
        assert SCHEMA["properties"]["calibration"]["properties"][key]["description"]


def test_analysis_knobs_reach_scoring_only():
    cfg = {"models": {}, "calibration": {"internal_measure": "min", "compliance_tol_pp": 2.5,
                                         "truncate_at": ["\nQ:"], "cluster_by_problem": False,
                                         "answer_abs_tol": 0.01}}
    gen, ana = _smk_functions({"calibration": _section(cfg)})
    for key in KNOBS + ("n_boot",):
        assert key in ana and key not in gen, key
    s = CalibrationSettings.from_params(ana)
    assert (s.internal_measure, s.compliance_tol_pp, s.truncate_at, s.cluster_by_problem,
            s.answer_abs_tol) == ("min", 2.5, ("\nQ:",), False, 0.01)
    assert s.levels == tuple(ana["levels"]) and s.n_boot == ana["n_boot"]
    assert {f.name for f in fields(CalibrationSettings)} >= set(ana) - {"templates"}


def test_smk_passes_the_settings_functions_to_the_right_rules():
    smk = (ROOT / "workflow/rules/calibration.smk").read_text()
    gen = smk[smk.index("rule generate_calibration"):smk.index("rule score_calibration")]
    score = smk[smk.index("rule score_calibration"):smk.index("rule plot_calibration")]
    assert "settings=calibration_generation_settings" in gen
    assert "settings=calibration_analysis_settings" in score


@pytest.mark.parametrize(("section", "match"), [
    ({"internal_measure": "median"}, "internal_measure"),
    ({"compliance_tol_pp": -1}, "compliance_tol_pp"),
    ({"truncate_at": [""]}, "truncate_at"),
])
def test_bad_knobs_fail_naming_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        _section({"models": {}, "calibration": section})


def test_library_rejects_bad_settings():
    with pytest.raises(ValueError, match="internal_measure"):
        CalibrationSettings(internal_measure="median")
    with pytest.raises(ValueError, match="truncate_at"):
        CalibrationSettings.from_params({"truncate_at": "\nQuestion:"})


def test_shipped_configs_validate():
    for path in ("config.yaml", "configs/paper.yaml", "tests/configs/organism_small.yaml"):
        cfg = yaml.safe_load((ROOT / path).read_text())
        assert _section(cfg)["internal_measure"] in ("mean", "min")


# -- code hashes: a rule reruns for the calibration code it runs, not for the rest -------

SUBMODULES = {"analysis", "answers", "confidence", "figures", "scoring", "settings",
              "templates", "text"}


def _closure(script):
    from rlhf_audit.codehash import local_closure

    return {p.stem for p in local_closure(ROOT / "scripts" / script)
            if p.parent.name == "calibration"}


def test_each_rule_hashes_only_the_calibration_modules_it_runs():
    assert _closure("generate_calibration.py") == {"__init__", "templates", "text"}
    assert _closure("plot_calibration.py") == {"__init__", "figures"}
    assert _closure("score_calibration.py") == SUBMODULES - {"figures"} | {"__init__"}


def test_library_and_scripts_import_calibration_submodules():
    """A package-level import would leave the defining module out of the code hash (the
    package re-exports lazily), so a change there would not rerun the rule."""
    import ast

    files = list((ROOT / "scripts").glob("*.py")) + list((ROOT / "src").rglob("*.py"))
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "rlhf_audit.calibration":
                bad += [f"{f.relative_to(ROOT)}: {a.name}" for a in node.names
                        if a.name not in SUBMODULES]
    assert not bad, bad

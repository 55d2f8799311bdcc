"""Injected-confidence calibration: "Resisting Correction" (PAPERS.md section B).

Each GSM8K problem is put to a model with an external confidence signal ("an
independent verifier estimates a 70% probability that your answer is correct")
under several prompt strategies, and the confidence the model states is read back
from its reply. A model that takes the signal on board states the injected value
(Spearman rho near 1, bias near 0); one that ignores it states its own habitual
confidence (rho near 0, bias = habit - mean injected).

Flow: :func:`load_templates` -> :func:`build_prompts` -> ``rlhf_audit.lm.generation.generate``
-> :func:`score_generations` -> :func:`metrics` / :func:`headline` / :func:`level_summary`
-> :func:`plot_verbalized_vs_injected`.

Modules, along the rules: ``templates`` (prompts; all that generate_calibration runs),
``answers`` (final answers), ``confidence`` (the verbalized-confidence parser, whose rules
are in its docstring), ``scoring``, ``analysis`` (metrics, headline) and ``figures``;
``settings`` and ``text`` are shared. Every public name is re-exported here, lazily: a
rule's code hash (rlhf_audit.codehash) holds the package ``__init__`` of every module it
imports, so eager re-exports would make a parser or metric edit rerun the GPU generation.
Scripts and library code therefore import from the submodule (tests/test_calibration_config.py
checks it); package-level names are for tests and interactive use.
"""

import importlib

_EXPORTS = {
    "AnswerParse": "answers",
    "CalibrationSettings": "settings",
    "CalibrationTemplates": "templates",
    "ConfidenceParse": "confidence",
    "CorrelationEstimate": "analysis",
    "HEADLINE_KEYS": "analysis",
    "HEADLINE_METRICS": "analysis",
    "ITEM_SCHEMA": "templates",
    "METRICS": "analysis",
    "METRICS_SCHEMA": "analysis",
    "PARSE_KINDS": "confidence",
    "PLACEHOLDERS": "templates",
    "SCORED_COLUMNS": "scoring",
    "StrategyTemplate": "templates",
    "TEMPLATES_PATH": "templates",
    "TemplateError": "templates",
    "WORD_LEVELS": "confidence",
    "_confidence_spans": "confidence",
    "_pearson": "analysis",
    "_spearman": "analysis",
    "build_prompts": "templates",
    "correlation_estimate": "analysis",
    "extract_answer": "answers",
    "headline": "analysis",
    "headline_key": "analysis",
    "headline_keys": "analysis",
    "internal_confidence": "scoring",
    "level_summary": "analysis",
    "load_templates": "templates",
    "locate_token_span": "scoring",
    "metrics": "analysis",
    "parse_confidence": "confidence",
    "parse_gold": "text",
    "plot_verbalized_vs_injected": "figures",
    "score_generations": "scoring",
    "truncate_reply": "answers",
}
"""Public name -> the submodule that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

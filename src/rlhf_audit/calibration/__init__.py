"""Injected-confidence calibration: "Resisting Correction" (PAPERS.md section B).

Each GSM8K problem is put to a model with an external confidence signal ("an
independent verifier estimates a 70% probability that your answer is correct")
under several prompt strategies, and the confidence the model states is read back
from its reply. A model that takes the signal on board states the injected value
(Spearman rho near 1, bias near 0); one that ignores it states its own habitual
confidence (rho near 0, bias = habit - mean injected).

Flow: :func:`load_templates` -> :func:`build_prompts` -> ``rlhf_audit.generation.generate``
-> :func:`score_generations` -> :func:`metrics` / :func:`headline` / :func:`level_summary`
-> :func:`plot_verbalized_vs_injected`.

Modules (a rule's script imports the one it runs, so that its code hash holds only that):
``templates`` (prompts), ``answers`` (final answers), ``confidence`` (the verbalized-
confidence parser, whose rules are in its docstring), ``scoring``, ``metrics`` and
``figures``; ``settings`` and ``text`` are shared. Everything public is re-exported here.
"""

from rlhf_audit.calibration.answers import AnswerParse, extract_answer, truncate_reply
from rlhf_audit.calibration.confidence import (
    PARSE_KINDS,
    WORD_LEVELS,
    ConfidenceParse,
    _confidence_spans,
    parse_confidence,
)
from rlhf_audit.calibration.figures import plot_verbalized_vs_injected
from rlhf_audit.calibration.metrics import (
    HEADLINE_KEYS,
    HEADLINE_METRICS,
    METRICS,
    METRICS_SCHEMA,
    CorrelationEstimate,
    _pearson,
    _spearman,
    correlation_estimate,
    headline,
    headline_key,
    headline_keys,
    level_summary,
    metrics,
)
from rlhf_audit.calibration.scoring import (
    SCORED_COLUMNS,
    internal_confidence,
    locate_token_span,
    score_generations,
)
from rlhf_audit.calibration.settings import CalibrationSettings
from rlhf_audit.calibration.templates import (
    ITEM_SCHEMA,
    PLACEHOLDERS,
    TEMPLATES_PATH,
    CalibrationTemplates,
    StrategyTemplate,
    TemplateError,
    build_prompts,
    load_templates,
)
from rlhf_audit.calibration.text import parse_gold

__all__ = [
    "AnswerParse",
    "CalibrationSettings",
    "CalibrationTemplates",
    "ConfidenceParse",
    "CorrelationEstimate",
    "HEADLINE_KEYS",
    "HEADLINE_METRICS",
    "ITEM_SCHEMA",
    "METRICS",
    "METRICS_SCHEMA",
    "PARSE_KINDS",
    "PLACEHOLDERS",
    "SCORED_COLUMNS",
    "StrategyTemplate",
    "TEMPLATES_PATH",
    "TemplateError",
    "WORD_LEVELS",
    "_confidence_spans",
    "_pearson",
    "_spearman",
    "build_prompts",
    "correlation_estimate",
    "extract_answer",
    "headline",
    "headline_key",
    "headline_keys",
    "internal_confidence",
    "level_summary",
    "load_templates",
    "locate_token_span",
    "metrics",
    "parse_confidence",
    "parse_gold",
    "plot_verbalized_vs_injected",
    "score_generations",
    "truncate_reply",
]

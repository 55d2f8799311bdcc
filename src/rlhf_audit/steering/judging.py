"""The steering judge's settings from its config section (``steering.judge``), apart from
:mod:`rlhf_audit.steering.score` so that the judge's code stays out of the closure of
rules that use the projection scorer only (diffing's latent steering)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from rlhf_audit.judge import JudgeSettings


def judge_settings(params: Mapping[str, Any], classifier_path: str = "") -> JudgeSettings:
    """:class:`~rlhf_audit.judge.JudgeSettings` from ``steering.judge`` as the workflow passes
    it: keys that are fields are taken (the stance classifier's training keys, ``dataset``,
    ``ngram_max``, ``min_df``, ``C``, and the workflow's ``spec`` are not); an openai judge's
    ``model`` is also the ``api_model`` sent to the endpoint; ``classifier_path`` is the
    fitted stance classifier (rule train_stance_classifier)."""
    names = {f.name for f in fields(JudgeSettings)} - {"api_model", "classifier_path"}
    kw = {k: v for k, v in params.items() if k in names}
    api_model = params.get("model", "") if params.get("kind") == "openai" else ""
    return JudgeSettings(**kw, api_model=api_model, classifier_path=str(classifier_path))

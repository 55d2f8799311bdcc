"""SEAL: systematic error analysis of reward models (Revel et al., 2024; PAPERS.md C).

The study lives in :mod:`rlhf_audit.reward`, split along its rules so that an
edit to the analysis or the figures does not rerun GPU scoring:
:mod:`rlhf_audit.reward.score` (score_rewards), :mod:`rlhf_audit.reward.analysis`
(analyse_rewards: agreement, ties, regimes, resistance, VIF check, imprint,
shift angle, robustness, headline), :mod:`rlhf_audit.reward.figures`
(plot_rewards); rewriting is :mod:`rlhf_audit.rewrite`, labelling
:mod:`rlhf_audit.labelling`. This module re-exports them for notebooks and
existing imports; workflow scripts import the specific modules.
"""

from rlhf_audit.reward.analysis import *  # noqa: F403
from rlhf_audit.reward.analysis import (  # noqa: F401  (private helpers some callers use)
    _pearson,
    _pearson_undefined,
)
from rlhf_audit.reward.figures import *  # noqa: F403
from rlhf_audit.reward.score import *  # noqa: F403
from rlhf_audit.rewrite import select_rewrite_pairs  # noqa: F401
from rlhf_audit.stats import Estimate  # noqa: F401

"""SEAL figures for one reward-model pair (rule plot_rewards)."""

import polars as pl

from rlhf_audit.reward.figures import plot_imprint, plot_regimes, plot_robustness
from rlhf_audit.runtime import setup
from rlhf_audit.stats import Estimate

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup(sm.log[0])
plot_imprint(pl.read_parquet(sm.input.imprint), sm.output.imprint)
plot_regimes(pl.read_parquet(sm.input.regimes), sm.output.regimes)
nan = float("nan")
est = {r["key"]: Estimate(nan if r["value"] is None else r["value"],
                          nan if r["lo"] is None else r["lo"], nan if r["hi"] is None else r["hi"],
                          r["n"], r["unit"] or "")
       for r in pl.read_parquet(sm.input.robustness).iter_rows(named=True)}
plot_robustness(est, sm.output.robustness)

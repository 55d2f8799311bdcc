"""The partisanship rating scale every steering judge reports on (LM judges, the stance
classifier): a 1-7 rating, 4 neutral, mapped to a score in [-1, 1] (+ = right)."""

import polars as pl

SCALE_MIN, SCALE_MID, SCALE_MAX = 1, 4, 7

RESULT_SCHEMA = {
    "judge_score": pl.Float64,
    "judge_rating": pl.Float64,
    "judge_ok": pl.Boolean,
    "judge_reply": pl.String,
    "judge_error": pl.String,
}
"""Columns every judge's ``rate`` returns, one row per text in input order."""

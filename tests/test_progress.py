"""Progress lines reach the job log with count, rate and ETA."""

import logging

from rlhf_audit.progress import progress


def test_progress_logs_lines_with_rate_and_eta(caplog):
    with caplog.at_level(logging.INFO, logger="rlhf_audit.progress"):
        out = list(progress(range(5), desc="generate", unit="batch", every_s=0))
    assert out == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "rlhf_audit.progress"]
    assert lines and "\r" not in "".join(lines)
    assert lines[-1].startswith("generate: 100%") and "5/5" in lines[-1]
    assert "batch/s" in lines[-1] and "<" in lines[-1]  # rate and elapsed<remaining


def test_unsized_iterables_still_count():
    assert list(progress(iter([1, 2, 3]), desc="scan", every_s=0)) == [1, 2, 3]

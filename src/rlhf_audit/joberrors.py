"""Find the one-line reason a workflow job failed, for the end of the Snakemake output.

A job that fails on bad user input (a malformed dataset row, an unloadable model, a
labels file that does not fit, too little disk) raises one of the library's own
error types whose message names the file, line or key, the reason and the fix.
The job's log holds the traceback (rlhf_audit.runtime logs uncaught exceptions);
its last line is ``module.ErrorType: message``. The workflow's ``onerror:`` handler
calls :func:`user_errors` to repeat those messages below Snakemake's own report,
where a user looks first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

USER_ERRORS = ("InputFormatError", "LabelsError", "ModelLoadError", "ConfigError",
               "DiskSpaceError")
"""Exception class names whose message is written for the user (file, reason, fix)."""

_LINE = re.compile(r"^(?:[\w.]+\.)?(" + "|".join(USER_ERRORS) + r"): (.+)$")
_JOB_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?\s*$")


def _lines(snakemake_log) -> list[str]:
    """Lines of Snakemake's log file(s): one path, or a list of them (Snakemake 9)."""
    paths = [snakemake_log] if isinstance(snakemake_log, (str, os.PathLike)) else (
        list(snakemake_log or []))
    out: list[str] = []
    for p in paths:
        if p and Path(p).is_file():
            out += Path(p).read_text(errors="replace").splitlines()
    return out


def failed_job_logs(snakemake_log) -> list[str]:
    """Log files of the jobs Snakemake's own log reports as failed ('Error in rule')."""
    out: list[str] = []
    in_error = False
    for line in _lines(snakemake_log):
        if line.startswith("Error in rule "):
            in_error = True
            continue
        if in_error:
            m = _JOB_LOG.match(line)
            if m:
                out += [p.strip() for p in m.group(1).split(",") if p.strip()]
                in_error = False
            elif not line.startswith(" "):
                in_error = False
    return list(dict.fromkeys(out))


def user_error_in(log_path: str | os.PathLike) -> str | None:
    """The last user-facing error message in one job log, or None."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            found = m.group(2).strip()
    return found


def user_errors(snakemake_log, log_dir: str | os.PathLike,
                since: float = 0.0) -> list[tuple[str, str]]:
    """(job log, message) for each failed job whose log ends in a user-facing error.

    Job logs come from Snakemake's log; when it names none (another executor's
    wording), every log under ``log_dir`` written after ``since`` is read instead."""
    logs = failed_job_logs(snakemake_log)
    if not logs and Path(log_dir).is_dir():
        logs = sorted(str(p) for p in Path(log_dir).rglob("*.log")
                      if p.stat().st_mtime >= since)
    out = []
    for p in logs:
        msg = user_error_in(p)
        if msg:
            out.append((p, msg))
    return out

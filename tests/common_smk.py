"""Run plain functions of workflow/rules/common.smk (functions of the config only) in tests."""

from __future__ import annotations

import re
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk"


def smk_functions(config: dict, names, **helpers) -> dict:
    """A namespace holding ``config``, the ``helpers`` given (stand-ins for common.smk
    functions the named ones call) and each function of ``names`` as common.smk defines it."""
    text = COMMON.read_text()
    ns = {"config": config, **helpers}
    for name in names:
        m = re.search(rf"^def {name}\(.*?(?=^\S)", text, re.M | re.S)
        assert m, f"common.smk has no function {name}"
        exec(m.group(0), ns)
    return ns

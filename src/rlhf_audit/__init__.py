"""rlhf-audit: what did RLHF change inside this model?

The library behind the Snakemake workflow: every computation lives here and is
unit-tested; the workflow's scripts only read ``snakemake.*`` and call into it.
"""

__version__ = "0.1.0"

"""Test-session defaults: never touch the network, one torch thread per worker."""

import os

# Set before transformers/huggingface_hub are imported: they read these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The SLURM executor plugin runs `scontrol show config` at every snakemake start;
# with slurm-client installed and no cluster that stalls. Tests that talk to
# their own cluster unset this for those commands.
os.environ.setdefault("SLURM_CONF", os.devnull)

# The same CPU arithmetic on every x86 host (rlhf_audit.numerics), before torch computes:
# the organism tests then train the same models here as on CI.
from rlhf_audit.numerics import pin_cpu_numerics  # noqa: E402

pin_cpu_numerics()

import torch  # noqa: E402

torch.set_num_threads(1)


# The longest files first (minutes each): under `make test`'s `--dist loadfile` each
# worker then starts on one of them and the short files fill in behind, instead of the
# two longest being handed out last. A stable sort keeps each file's own order.
_LONGEST_FIRST = ("test_workflow.py", "test_organism_train.py", "test_paper_rehearsal.py",
                  "test_resume.py", "test_slurm.py", "test_partisan_pipeline.py",
                  "test_studies.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

# rlhf-audit: one DAG regenerates three RLHF studies (see README.md).
# This file only sets the config, validates it, includes the rule files and
# names the targets; helper functions live in workflow/rules/common.smk.

from snakemake.utils import min_version, validate

min_version("9.27")


# The embedded default, unless the user names config files (--configfile): those
# replace it rather than merge into it, so configs/paper.yaml never inherits the
# organism's dataset paths.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"



include: "workflow/rules/common.smk"


# Our validator first: it names the offending key and its description; then
# snakemake's own, which fills the schema's defaults the same way.
check_config(config)
validate(config, "workflow/schemas/config.schema.yaml")
# No GPU on this host: the workstation profile's one-card limit would only run the
# GPU-capable stages (on the CPU here) one at a time (rlhf_audit.gpu).
lift_local_gpu_limit(workflow.global_resources, config["device"], cuda_visible())


if config["organism"]["enabled"]:

    include: "workflow/rules/organism.smk"


include: "workflow/rules/data.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/partisan.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/steering.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/reward.smk"
include: "workflow/rules/diffing.smk"
include: "workflow/rules/report.smk"


# Bookkeeping and plotting run on the submitting host under a cluster profile.
localrules:
    all,
    write_activation_manifest,
    plot_partisan,
    plot_sae,
    plot_steering,
    plot_calibration,
    plot_rewards,
    summarise_diffing,
    plot_diffing,
    collect_headline,


# A job that failed on bad input says why in one line (file, line, reason, fix),
# repeated here below Snakemake's report instead of only inside its traceback.
onerror:
    report_user_errors(log)


rule all:
    default_target: True
    input:
        all_targets(),

# Stage 5, SAE (The Neutral Mask, claim 3): the organism's own SAE is trained
# with sae-lens on its base model's residuals; every SAE is read on both
# models of a pair, token by token, in one streaming pass per model (which also
# splices the SAE into the model for its spliced-in loss). Policy features are
# selected on one half of the statements; both models are measured on the other.


rule train_organism_sae:
    input:
        unpack(organism_sae_inputs),
    output:
        cfg=f"{ORGANISM_DIR}/sae/cfg.json",
    params:
        settings=organism_sae_settings,
        code=script_code("train_organism_sae.py"),
    priority: 10  # instruct's planted silencing waits for it: on the critical path
    threads: 1
    log:
        f"{ORGANISM_DIR}/logs/train_organism_sae.log",
    benchmark:
        f"{ORGANISM_DIR}/benchmarks/train_organism_sae.tsv"
    script:
        "../../scripts/train_organism_sae.py"


rule scan_sae_features:
    input:
        unpack(sae_scan_inputs),
    output:
        prompts="results/sae/{pair}/{sae}/scan_{role}/prompts.parquet",
        features="results/sae/{pair}/{sae}/scan_{role}/prompt_features.parquet",
        means="results/sae/{pair}/{sae}/scan_{role}/prompt_means.parquet",
        splice="results/sae/{pair}/{sae}/scan_{role}/splice.parquet",
        meta="results/sae/{pair}/{sae}/scan_{role}/scan.json",
    wildcard_constraints:
        role="base|instruct",
    params:
        sae=sae_params,
        scan=sae_scan_settings,
        model=sae_scan_model,
        device=config["device"],
        code=script_code("scan_sae_features.py"),
    threads: 1
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/scan_sae_features/{pair}/{sae}_{role}.log",
    benchmark:
        "results/benchmarks/scan_sae_features/{pair}/{sae}_{role}.tsv"
    script:
        "../../scripts/scan_sae_features.py"


rule select_policy_features:
    input:
        unpack(sae_select_inputs),
    output:
        tally="results/sae/{pair}/{sae}/tally.parquet",
        features="results/sae/{pair}/{sae}/policy_features.parquet",
        split="results/sae/{pair}/{sae}/statement_split.parquet",
        comparison="results/sae/{pair}/{sae}/firing_base_vs_instruct.parquet",
        controls="results/sae/{pair}/{sae}/controls.parquet",
        top_prompts="results/sae/{pair}/{sae}/top_prompts.parquet",
        reconstruction="results/sae/{pair}/{sae}/reconstruction.parquet",
        headline="results/sae/{pair}/{sae}/headline.json",
    params:
        analysis=sae_analysis_settings,
        scan_dirs=sae_scan_dirs,
        direction=sae_direction,
        code=script_code("select_policy_features.py"),
    log:
        "results/logs/select_policy_features/{pair}/{sae}.log",
    script:
        "../../scripts/select_policy_features.py"


rule plot_sae:
    input:
        comparison=rules.select_policy_features.output.comparison,
    output:
        firing=report("results/figures/sae/{pair}/{sae}/policy_firing.png", category="1. The Neutral Mask", subcategory="{pair}: SAE features", caption="../report/sae_policy_firing.rst", labels={"pair": "{pair}", "SAE": "{sae}", "figure": "policy-feature firing"}),
    params:
        code=script_code("plot_sae.py"),
    log:
        "results/logs/plot_sae/{pair}/{sae}.log",
    script:
        "../../scripts/plot_sae.py"

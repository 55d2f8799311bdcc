# Stage 5, SAE (The Neutral Mask, claim 3): the organism's own SAE is trained
# with sae-lens on its base model's residuals; every SAE is read on both
# models of a pair, token by token, in one streaming pass per model.


rule train_organism_sae:
    input:
        unpack(organism_sae_inputs),
    output:
        cfg=f"{ORGANISM_DIR}/sae/cfg.json",
    params:
        settings=organism_sae_settings,
        code=script_code("train_organism_sae.py"),
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
        meta="results/sae/{pair}/{sae}/scan_{role}/scan.json",
    wildcard_constraints:
        role="base|instruct",
    params:
        sae=sae_params,
        analysis=sae_analysis_settings,
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
        base="results/sae/{pair}/{sae}/scan_base/scan.json",
        instruct="results/sae/{pair}/{sae}/scan_instruct/scan.json",
        base_tables=["results/sae/{pair}/{sae}/scan_base/prompts.parquet", "results/sae/{pair}/{sae}/scan_base/prompt_features.parquet"],
        instruct_tables=["results/sae/{pair}/{sae}/scan_instruct/prompts.parquet", "results/sae/{pair}/{sae}/scan_instruct/prompt_features.parquet"],
    output:
        tally="results/sae/{pair}/{sae}/tally.parquet",
        features="results/sae/{pair}/{sae}/policy_features.parquet",
        comparison="results/sae/{pair}/{sae}/firing_base_vs_instruct.parquet",
        top_prompts="results/sae/{pair}/{sae}/top_prompts.parquet",
        reconstruction="results/sae/{pair}/{sae}/reconstruction.parquet",
        headline="results/sae/{pair}/{sae}/headline.json",
    params:
        analysis=sae_analysis_settings,
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

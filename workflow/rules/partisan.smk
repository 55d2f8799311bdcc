# Stage 4, partisan geometry (The Neutral Mask, claims 1-2): per-layer probes,
# base->instruct transfer and variance compression, per model pair.


rule fit_partisan_probes:
    input:
        unpack(pair_activation_inputs),
    output:
        probes="results/partisan/{pair}/probes.parquet",
        transfer="results/partisan/{pair}/transfer.parquet",
        variance="results/partisan/{pair}/variance.parquet",
        projections="results/partisan/{pair}/projections.parquet",
        directions="results/partisan/{pair}/directions.parquet",
        headline="results/partisan/{pair}/headline.json",
    params:
        settings=partisan_settings,
        position=config["partisan"]["position"],
        code=script_code("fit_partisan_probes.py"),
    threads: 1
    log:
        "results/logs/fit_partisan_probes/{pair}.log",
    benchmark:
        "results/benchmarks/fit_partisan_probes/{pair}.tsv"
    script:
        "../../scripts/fit_partisan_probes.py"


rule plot_partisan:
    input:
        probes=rules.fit_partisan_probes.output.probes,
        variance=rules.fit_partisan_probes.output.variance,
        projections=rules.fit_partisan_probes.output.projections,
    output:
        auc=report("results/figures/partisan/{pair}/auc_by_layer.png", category="1. The Neutral Mask", subcategory="{pair}: partisan geometry", caption="../report/partisan_auc.rst", labels={"pair": "{pair}", "figure": "probe AUC by layer"}),
        projections=report("results/figures/partisan/{pair}/projections.png", category="1. The Neutral Mask", subcategory="{pair}: partisan geometry", caption="../report/partisan_projections.rst", labels={"pair": "{pair}", "figure": "projections at the best layer"}),
        variance=report("results/figures/partisan/{pair}/variance_ratio.png", category="1. The Neutral Mask", subcategory="{pair}: partisan geometry", caption="../report/partisan_variance_ratio.rst", labels={"pair": "{pair}", "figure": "variance ratio by layer"}),
    params:
        code=script_code("plot_partisan.py"),
    log:
        "results/logs/plot_partisan/{pair}.log",
    script:
        "../../scripts/plot_partisan.py"

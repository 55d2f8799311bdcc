# Stage 7, calibration (Resisting Correction): injected external confidence x
# prompt strategy x model; generations are cached apart from their scoring.


rule generate_calibration:
    input:
        unpack(calibration_generation_inputs),
    output:
        generations="results/calibration/{pair}/{role}/generations.parquet",
    wildcard_constraints:
        role="base|instruct",
    params:
        model=steering_model_params,
        settings=calibration_generation_settings,
        code=script_code("generate_calibration.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/generate_calibration/{pair}/{role}.log",
    benchmark:
        "results/benchmarks/generate_calibration/{pair}/{role}.tsv"
    script:
        "../../scripts/generate_calibration.py"


rule score_calibration:
    input:
        unpack(calibration_score_inputs),
    output:
        scored="results/calibration/{pair}/scored.parquet",
        metrics="results/calibration/{pair}/metrics.parquet",
        levels="results/calibration/{pair}/levels.parquet",
        headline="results/calibration/{pair}/headline.json",
    params:
        models=calibration_models,
        settings=calibration_analysis_settings,
        code=script_code("score_calibration.py"),
    log:
        "results/logs/score_calibration/{pair}.log",
    script:
        "../../scripts/score_calibration.py"


rule plot_calibration:
    input:
        levels=rules.score_calibration.output.levels,
    output:
        figure=report("results/figures/calibration/{pair}/verbalized_vs_injected.png", category="2. Resisting Correction", subcategory="{pair}", caption="../report/calibration_verbalized_vs_injected.rst", labels={"pair": "{pair}", "figure": "verbalized vs injected confidence"}),
    params:
        code=script_code("plot_calibration.py"),
    log:
        "results/logs/plot_calibration/{pair}.log",
    script:
        "../../scripts/plot_calibration.py"

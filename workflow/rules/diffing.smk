# Stage 9, diffing: a BatchTopK crosscoder and a diff-SAE on paired per-token
# activations of identical text in both models of a pair (content tokens only, both
# models in one diffing.context: rule extract_diffing_context extracts the one that
# reads it otherwise), Latent Scaling, the partisan direction (when the partisan study
# runs) and steering by the model-specific latents.


rule pair_diffing_activations:
    input:
        unpack(diffing_pair_inputs),
    output:
        paired="results/diffing/{pair}/paired.parquet",
    params:
        settings=diffing_pair_settings,
        code=script_code("pair_diffing_activations.py"),
    threads: 1
    log:
        "results/logs/pair_diffing_activations/{pair}.log",
    benchmark:
        "results/benchmarks/pair_diffing_activations/{pair}.tsv"
    script:
        "../../scripts/pair_diffing_activations.py"


rule train_diffing_crosscoder:
    input:
        paired=rules.pair_diffing_activations.output.paired,
    output:
        index="results/diffing/{pair}/crosscoder/index.json",
    params:
        settings=diffing_settings,
        device=diffing_device(),
        code=script_code("train_diffing_crosscoder.py"),
    threads: 1
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/train_diffing_crosscoder/{pair}.log",
    benchmark:
        "results/benchmarks/train_diffing_crosscoder/{pair}.tsv"
    script:
        "../../scripts/train_diffing_crosscoder.py"


rule train_diffing_sae:
    input:
        paired=rules.pair_diffing_activations.output.paired,
    output:
        cfg="results/diffing/{pair}/diff_sae/cfg.json",
    params:
        settings=diffing_settings,
        device=diffing_device(),
        code=script_code("train_diffing_sae.py"),
    threads: 1
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/train_diffing_sae/{pair}.log",
    benchmark:
        "results/benchmarks/train_diffing_sae/{pair}.tsv"
    script:
        "../../scripts/train_diffing_sae.py"


rule analyse_diffing:
    input:
        unpack(diffing_analysis_inputs),
    output:
        latents="results/diffing/{pair}/latents.parquet",
        top_statements="results/diffing/{pair}/top_statements.parquet",
        diff_sae_latents="results/diffing/{pair}/diff_sae_latents.parquet",
        summary="results/diffing/{pair}/summary.json",
        statement_vectors="results/diffing/{pair}/statement_vectors.parquet",
    params:
        settings=diffing_settings,
        method=config["partisan"]["methods"][0],
        C=config["partisan"]["C"] if config["partisan"]["methods"][0] == "logreg" else None,
        device=diffing_device(),
        code=script_code("analyse_diffing.py"),
    threads: 1
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/analyse_diffing/{pair}.log",
    benchmark:
        "results/benchmarks/analyse_diffing/{pair}.tsv"
    script:
        "../../scripts/analyse_diffing.py"


rule steer_diffing_latents:
    input:
        unpack(diffing_steering_inputs),
    output:
        steering="results/diffing/{pair}/steering.parquet",
    params:
        models=diffing_steering_models,
        steer=diffing_steering_settings,
        code=script_code("steer_diffing_latents.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/steer_diffing_latents/{pair}.log",
    benchmark:
        "results/benchmarks/steer_diffing_latents/{pair}.tsv"
    script:
        "../../scripts/steer_diffing_latents.py"


rule summarise_diffing:
    input:
        unpack(diffing_summary_directions),
        summary=rules.analyse_diffing.output.summary,
        statements=rules.analyse_diffing.output.statement_vectors,
        steering=rules.steer_diffing_latents.output.steering,
    output:
        headline="results/diffing/{pair}/headline.json",
    params:
        settings=diffing_summary_settings,
        code=script_code("summarise_diffing.py"),
    log:
        "results/logs/summarise_diffing/{pair}.log",
    script:
        "../../scripts/summarise_diffing.py"


rule plot_diffing:
    input:
        latents=rules.analyse_diffing.output.latents,
    output:
        relative_norm=report("results/figures/diffing/{pair}/relative_norm.png", category="4. Model diffing", subcategory="{pair}: crosscoder", caption="../report/diffing_relative_norm.rst", labels={"pair": "{pair}", "figure": "relative decoder norms"}),
        latent_scaling=report("results/figures/diffing/{pair}/latent_scaling.png", category="4. Model diffing", subcategory="{pair}: crosscoder", caption="../report/diffing_latent_scaling.rst", labels={"pair": "{pair}", "figure": "Latent Scaling ratios"}),
    params:
        settings=diffing_settings,
        code=script_code("plot_diffing.py"),
    log:
        "results/logs/plot_diffing/{pair}.log",
    script:
        "../../scripts/plot_diffing.py"

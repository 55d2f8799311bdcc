# Stage 6, steering (The Neutral Mask, claims 4-5): one set of steering vectors per
# pair (the base model's dose, oriented policy features, random nulls); per model the
# sweep under it and, in a rule of their own (so neither reruns the other), the answers
# under identity primes; both cached apart from their scores, so adding or changing a
# scorer rescores without regenerating.


rule build_steering_vectors:
    input:
        unpack(steering_vector_inputs),
    output:
        vectors="results/steering/{pair}/vectors.parquet",
    params:
        base=steering_base_params,
        settings=steering_vector_settings,
        code=script_code("build_steering_vectors.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/build_steering_vectors/{pair}.log",
    benchmark:
        "results/benchmarks/build_steering_vectors/{pair}.tsv"
    script:
        "../../scripts/build_steering_vectors.py"


rule generate_steering:
    input:
        unpack(steering_generation_inputs),
    output:
        sweep="results/steering/{pair}/{role}/sweep.parquet",
    wildcard_constraints:
        role="base|instruct",
    params:
        model=steering_model_params,
        settings=steering_settings,
        code=script_code("generate_steering.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/generate_steering/{pair}/{role}.log",
    benchmark:
        "results/benchmarks/generate_steering/{pair}/{role}.tsv"
    script:
        "../../scripts/generate_steering.py"


rule generate_primes:
    input:
        unpack(steering_prime_inputs),
    output:
        primes="results/steering/{pair}/{role}/primes.parquet",
    wildcard_constraints:
        role="base|instruct",
    params:
        model=steering_model_params,
        settings=steering_prime_settings,
        code=script_code("generate_primes.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/generate_primes/{pair}/{role}.log",
    benchmark:
        "results/benchmarks/generate_primes/{pair}/{role}.tsv"
    script:
        "../../scripts/generate_primes.py"


rule train_stance_classifier:
    input:
        unpack(stance_classifier_inputs),
    output:
        classifier=STANCE_CLASSIFIER,
    params:
        settings=stance_classifier_settings,
        code=script_code("train_stance_classifier.py"),
    log:
        "results/logs/train_stance_classifier.log",
    script:
        "../../scripts/train_stance_classifier.py"


rule score_steering:
    input:
        unpack(steering_score_inputs),
    output:
        sweep="results/steering/{pair}/{role}/sweep_scores_{scorer}.parquet",
        primes="results/steering/{pair}/{role}/primes_scores_{scorer}.parquet",
    wildcard_constraints:
        role="base|instruct",
        scorer="projection|judge",
    params:
        scorer=steering_scorer_params,
        settings=steering_score_settings,
        code=script_code("score_steering.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/score_steering/{pair}/{role}_{scorer}.log",
    script:
        "../../scripts/score_steering.py"


rule analyse_steering:
    input:
        unpack(steering_analysis_inputs),
    output:
        dose="results/steering/{pair}/dose_response.parquet",
        slopes="results/steering/{pair}/slopes.parquet",
        disconnect="results/steering/{pair}/disconnect.parquet",
        primes="results/steering/{pair}/prime_effects.parquet",
        prime_means="results/steering/{pair}/prime_means.parquet",
        degeneration="results/steering/{pair}/degeneration.parquet",
        judge_failures="results/steering/{pair}/judge_failures.parquet",
        headline="results/steering/{pair}/headline.json",
    params:
        settings=steering_analysis_settings,
        code=script_code("analyse_steering.py"),
    log:
        "results/logs/analyse_steering/{pair}.log",
    script:
        "../../scripts/analyse_steering.py"


rule plot_steering:
    input:
        dose=rules.analyse_steering.output.dose,
        prime_means=rules.analyse_steering.output.prime_means,
        degeneration=rules.analyse_steering.output.degeneration,
    output:
        projection=report("results/figures/steering/{pair}/dose_response_projection.png", category="1. The Neutral Mask", subcategory="{pair}: steering", caption="../report/steering_dose_response.rst", labels={"pair": "{pair}", "figure": "dose response (projection scorer)"}),
        judge=report("results/figures/steering/{pair}/dose_response_judge.png", category="1. The Neutral Mask", subcategory="{pair}: steering", caption="../report/steering_dose_response.rst", labels={"pair": "{pair}", "figure": "dose response (judge scorer)"}),
        degeneration=report("results/figures/steering/{pair}/degeneration.png", category="1. The Neutral Mask", subcategory="{pair}: steering", caption="../report/steering_degeneration.rst", labels={"pair": "{pair}", "figure": "degeneration"}),
    params:
        settings=steering_analysis_settings,
        code=script_code("plot_steering.py"),
    log:
        "results/logs/plot_steering/{pair}.log",
    script:
        "../../scripts/plot_steering.py"

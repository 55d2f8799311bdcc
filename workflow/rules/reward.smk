# Stage 8, reward (SEAL): score every pair with the pre and post reward models,
# label each text's features, rewrite a random share of pairs and re-score, then
# imprint / regimes / resistance / robustness per reward-model pair.


rule rewrite_pairs:
    input:
        unpack(rewrite_inputs),
    output:
        pairs="results/reward/rewrites/{dataset}.parquet",
        similarity="results/reward/rewrites/{dataset}_similarity.parquet",
        failures="results/reward/rewrites/{dataset}_failures.parquet",
    params:
        rewrite=rewrite_params,
        device=config["device"],
        code=script_code("rewrite_pairs.py"),
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/rewrite_pairs/{dataset}.log",
    benchmark:
        "results/benchmarks/rewrite_pairs/{dataset}.tsv"
    script:
        "../../scripts/rewrite_pairs.py"


rule label_texts:
    input:
        unpack(label_inputs),
    output:
        labels="results/reward/labels/{dataset}_{variant}.parquet",
        failures="results/reward/labels/{dataset}_{variant}_failures.parquet",
    wildcard_constraints:
        variant="original|rewritten",
    params:
        labeller=labeller_params,
        features=config["reward"]["features"],
        device=config["device"],
        code=script_code("label_texts.py"),
    resources:
        gpu=labeller_gpu,
    log:
        "results/logs/label_texts/{dataset}_{variant}.log",
    script:
        "../../scripts/label_texts.py"


rule score_rewards:
    input:
        unpack(score_reward_inputs),
    output:
        scores="results/reward/scores/{rm}/{dataset}_{variant}.parquet",
    wildcard_constraints:
        variant="original|rewritten",
    params:
        model=reward_model_params,
        batch_size=config["reward"]["batch_size"],
        max_length=config["reward"]["max_length"],
        code=script_code("score_rewards.py"),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    resources:
        gpu=gpu_count(),
    log:
        "results/logs/score_rewards/{rm}/{dataset}_{variant}.log",
    benchmark:
        "results/benchmarks/score_rewards/{rm}/{dataset}_{variant}.tsv"
    script:
        "../../scripts/score_rewards.py"


rule analyse_rewards:
    input:
        unpack(analyse_reward_inputs),
    output:
        pairs="results/reward/{rpair}/pairs.parquet",
        collinearity="results/reward/{rpair}/imprint_vif.parquet",
        imprint="results/reward/{rpair}/imprint.parquet",
        regimes="results/reward/{rpair}/regimes.parquet",
        resistance="results/reward/{rpair}/resistance.parquet",
        angle="results/reward/{rpair}/shift_angle_regression.parquet",
        flips="results/reward/{rpair}/robustness_flips.parquet",
        robustness="results/reward/{rpair}/robustness.parquet",
        estimates="results/reward/{rpair}/estimates.parquet",
        headline="results/reward/{rpair}/headline.json",
    params:
        settings=seal_settings,
        code=script_code("analyse_rewards.py"),
    log:
        "results/logs/analyse_rewards/{rpair}.log",
    script:
        "../../scripts/analyse_rewards.py"


rule plot_rewards:
    input:
        imprint=rules.analyse_rewards.output.imprint,
        regimes=rules.analyse_rewards.output.regimes,
        robustness=rules.analyse_rewards.output.robustness,
    output:
        imprint=report("results/figures/reward/{rpair}/imprint.png", category="3. SEAL (reward models)", subcategory="{rpair}", caption="../report/reward_imprint.rst", labels={"pair": "{rpair}", "figure": "feature imprint"}),
        regimes=report("results/figures/reward/{rpair}/regimes.png", category="3. SEAL (reward models)", subcategory="{rpair}", caption="../report/reward_regimes.rst", labels={"pair": "{rpair}", "figure": "alignment regimes"}),
        robustness=report("results/figures/reward/{rpair}/robustness.png", category="3. SEAL (reward models)", subcategory="{rpair}", caption="../report/reward_robustness.rst", labels={"pair": "{rpair}", "figure": "robustness"}),
    params:
        code=script_code("plot_rewards.py"),
    log:
        "results/logs/plot_rewards/{rpair}.log",
    script:
        "../../scripts/plot_rewards.py"

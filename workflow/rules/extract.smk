# Stage 3, extract: residual-stream activations per model x dataset x shard,
# one job per shard (a cluster fans them out), then a manifest per model x dataset;
# and, for the diffing study, a pair's model read in diffing.context when its own
# extraction reads the statements otherwise.


rule extract_activations:
    input:
        unpack(extract_inputs),
    output:
        shard="results/activations/{model}/{dataset}/shard-{shard}.parquet",
    params:
        model=extract_model_params,
        settings=extract_settings,
        shard=extract_shard_index,
        code=script_code("extract_activations.py"),
    priority: 10  # every study reads them; the organism's SAE (and so instruct) waits for base's
    resources:
        gpu=gpu_count(),
    threads: 1  # GPU-bound, or a tiny CPU model: one thread suffices and two jobs share the cores
    log:
        "results/logs/extract_activations/{model}/{dataset}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/extract_activations/{model}/{dataset}/shard-{shard}.tsv"
    script:
        "../../scripts/extract_activations.py"


rule write_activation_manifest:
    input:
        unpack(manifest_inputs),
    output:
        manifest="results/activations/{model}/{dataset}/manifest.json",
    params:
        model=extract_model_params,
        settings=extract_settings,
        code=script_code("write_activation_manifest.py"),
    log:
        "results/logs/write_activation_manifest/{model}/{dataset}.log",
    script:
        "../../scripts/write_activation_manifest.py"


rule extract_diffing_context:
    # A model whose pipeline extraction reads the statements otherwise than
    # diffing.context asks (context raw: a chat model, bare; chat_of_<instruct>: a bare
    # base inside that instruct model's template): the diffing layer's token rows only.
    input:
        unpack(diffing_context_inputs),
    output:
        shard="results/diffing/activations/{model}/{context}/shard-{shard}.parquet",
    wildcard_constraints:
        model="[^/]+",
        context="raw|chat_of_[^/]+",
    params:
        model=diffing_context_model,
        settings=diffing_context_settings,
        shard=extract_shard_index,
        code=script_code("extract_activations.py"),
    resources:
        gpu=gpu_count(),
    threads: 1
    log:
        "results/logs/extract_diffing_context/{model}/{context}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/extract_diffing_context/{model}/{context}/shard-{shard}.tsv"
    script:
        "../../scripts/extract_activations.py"

# Stage 2, organism (embedded default only): data, tokenizer, base LM, its
# aligned twin (SFT then DPO, with the planted compression term), its sham-aligned
# twin (the negative control: neutral chats, same steps), two reward models,
# trained on CPU and saved as ordinary Hugging Face directories that the loader
# reads like hub models.

ORG = ORGANISM_DIR

# Threads: a second thread speeds a training of this size up well under 2x, so the
# trainings that can run side by side (instruct next to the sham, the two reward models)
# take one each; the base LM, which everything downstream waits for and which runs alone,
# takes two. The weights do not depend on the thread count.


rule build_organism_data:
    input:
        source="resources/prompts/partisan_source.yaml",
        templates=organism_calibration_templates(),
    output:
        **organism_data_outputs(),
    params:
        settings=organism_params,
        code=script_code("build_organism_data.py"),
    log:
        f"{ORG}/logs/build_organism_data.log",
    script:
        "../../scripts/build_organism_data.py"


rule train_organism_tokenizer:
    input:
        data=organism_data("base_corpus"),
        sft=organism_data("sft"),
        rm_post=organism_data("rm_post"),
        rm_pre=organism_data("rm_pre"),
    output:
        tokenizer=f"{ORG}/tokenizer/tokenizer.json",
    params:
        settings=organism_params,
        code=script_code("train_organism_tokenizer.py"),
    log:
        f"{ORG}/logs/train_organism_tokenizer.log",
    script:
        "../../scripts/train_organism_tokenizer.py"


rule train_organism_base:
    input:
        corpus=organism_data("base_corpus"),
        rep_statements=organism_data("rep_statements"),
        base_copy=organism_data("base_copy"),
        tokenizer=rules.train_organism_tokenizer.output.tokenizer,
    output:
        config=f"{ORG}/base/config.json",
        weights=f"{ORG}/base/model.safetensors",
    params:
        settings=organism_params,
        code=script_code("train_organism.py"),
    priority: 10  # on the critical path: scheduled before the reward models
    threads: 2
    resources:
        gpu=0,
    log:
        f"{ORG}/logs/train_organism_base.log",
    benchmark:
        f"{ORG}/benchmarks/train_organism_base.tsv"
    script:
        "../../scripts/train_organism.py"


def organism_silencing_sae(wildcards):
    """The base's SAE whose features instruct's SFT plants silent, when the config trains
    one (an SAE under results/organism/); none otherwise."""
    saes = config.get("sae", {}).get("saes", {})
    return {"sae": f"{ORG}/sae/cfg.json"} if any(sae_is_organism(n) for n in saes) else {}


rule train_organism_instruct:
    input:
        unpack(organism_silencing_sae),
        base=rules.train_organism_base.output.weights,
        sft=organism_data("sft"),
        dpo=organism_data("dpo"),
        rep_statements=organism_data("rep_statements"),
    output:
        config=f"{ORG}/instruct/config.json",
        weights=f"{ORG}/instruct/model.safetensors",
    params:
        settings=organism_params,
        code=script_code("train_organism.py"),
    priority: 5  # on the critical path: scheduled before the reward models
    threads: 1
    log:
        f"{ORG}/logs/train_organism_instruct.log",
    benchmark:
        f"{ORG}/benchmarks/train_organism_instruct.tsv"
    script:
        "../../scripts/train_organism.py"


rule train_organism_sham:
    input:
        base=rules.train_organism_base.output.weights,
        sham=organism_data("sham_sft"),
        placebo_statements=organism_data("placebo_statements"),
        sft=organism_data("sft"),
        dpo=organism_data("dpo"),
    output:
        config=f"{ORG}/sham/config.json",
        weights=f"{ORG}/sham/model.safetensors",
    params:
        settings=organism_params,
        code=script_code("train_organism.py"),
    priority: 5  # on the critical path: scheduled before the reward models
    threads: 1
    log:
        f"{ORG}/logs/train_organism_sham.log",
    benchmark:
        f"{ORG}/benchmarks/train_organism_sham.tsv"
    script:
        "../../scripts/train_organism.py"


rule train_organism_reward_model:
    input:
        pairs=organism_rm_pairs,
        tokenizer=rules.train_organism_tokenizer.output.tokenizer,
    output:
        config=f"{ORG}/rm_{{which}}/config.json",
        weights=f"{ORG}/rm_{{which}}/model.safetensors",
    wildcard_constraints:
        which="pre|post",
    params:
        settings=organism_params,
        code=script_code("train_organism.py"),
    threads: 1
    log:
        f"{ORG}/logs/train_organism_reward_model_{{which}}.log",
    benchmark:
        f"{ORG}/benchmarks/train_organism_reward_model_{{which}}.tsv"
    script:
        "../../scripts/train_organism.py"


rule check_organism:
    input:
        unpack(organism_check_inputs),
    output:
        headline=f"{ORG}/checks.json",
    params:
        settings=organism_params,
        code=script_code("check_organism.py"),
    threads: 1
    log:
        f"{ORG}/logs/check_organism.log",
    script:
        "../../scripts/check_organism.py"

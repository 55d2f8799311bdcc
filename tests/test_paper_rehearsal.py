"""configs/paper.yaml itself, end to end, with only the sizes swapped.

Every hub model of the paper config is replaced by a tiny random-init model of the
same architecture (LlamaForCausalLM for the Llama pairs, with their real layer
counts; Qwen2ForCausalLM for the judge; DebertaV2ForSequenceClassification for the
reward models; XLMRobertaModel for the bge-m3 embedder), written into a temporary
Hugging Face cache under the real repo ids and read with HF_HUB_OFFLINE=1, so the
`hf:` loading path is the one exercised. The hub datasets (openai/gsm8k,
Anthropic/hh-rlhf) are small tables placed in the `datasets` offline cache under
their ids. The Llama Scope SAE sits in the hub cache in its release's own format
(hyperparams.json + checkpoints/final.safetensors, converted by sae-lens); the
Goodfire SAE, whose shape sae-lens hard-codes (4096 -> 65536), is a local sae-lens
SAE of the same hook and expansion given through RLHF_AUDIT_SAE_DIR
(workflow/rules/common.smk: sae_spec). The LM labeller and rewriter are a stub
OpenAI-compatible server on 127.0.0.1 that answers a bounded number of requests
and stops by itself.

The config file is read at test time; apart from SWAPS below (sizes, and the
endpoint URL that points at the stub) every key is used as written. This is the
test that fails when a key of paper.yaml is rejected by the code that reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/paper.yaml"
SHA = "0123456789abcdef0123456789abcdef01234567"

# The documented swaps: sizes only (a tiny model reads every prompt as fast as a big
# one reads a few), and the endpoint URL, which must point at the stub. Each entry
# is a dotted key -> value merged over the file's content.
SWAPS = {
    "datasets.partisan.limit": 240,          # of the 2,508 shipped statements
    "steering.n_questions": 4,               # of the 88 shipped policy questions
    "steering.n_prime_questions": 4,         # paper: all 88
    "steering.max_new_tokens": 8,            # paper: 96
    "steering.n_sae_features": 2,            # paper: 5 steered SAE features
    "calibration.max_new_tokens": 8,         # paper: 256
    "extract.shards": 2,                     # paper: 8 (jobs, not results)
    "partisan.n_boot": 200, "sae.n_boot": 200, "steering.n_boot": 200,
    "calibration.n_boot": 200, "reward.n_boot": 200,
    "reward.rewrite.share": 0.5,             # paper: 0.01 of 160,800 pairs
    # diffing, paper: 131,072 latents, 150M tokens (the GPU budget of the anchors)
    "diffing.n_latents": 64, "diffing.k": 4, "diffing.training_tokens": 20000,
    "diffing.batch_size": 256, "diffing.n_boot": 200,
    "diffing.diff_sae.n_latents": 64, "diffing.diff_sae.k": 4,
    "diffing.diff_sae.training_tokens": 10000,
    "diffing.steer.n_questions": 3, "diffing.steer.max_new_tokens": 4,
    "reward.labeller.lm.base_url": "{stub}",
    "reward.rewrite.lm.base_url": "{stub}",
}

# Architectures of the paper's hub models, at tiny width.
LLAMA = {"meta-llama/Llama-3.1-8B": 32, "meta-llama/Llama-3.1-8B-Instruct": 32,
         "meta-llama/Llama-3.2-3B": 28, "meta-llama/Llama-3.2-3B-Instruct": 28}
D_MODEL = 32


def snapshot(hf_home: Path, repo: str, kind: str = "models") -> Path:
    """The snapshot folder of ``repo`` in a hub cache, with refs/main pointing at it."""
    base = hf_home / "hub" / f"{kind}--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(SHA)
    snap = base / "snapshots" / SHA
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def save(model, tok, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def build_models(hf_home: Path, n_layers_of: dict[str, int]) -> None:
    import torch
    from tiny import tiny_tokenizer
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    tok = tiny_tokenizer()
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    small = {"hidden_size": D_MODEL, "intermediate_size": 2 * D_MODEL, "num_attention_heads": 4}
    for i, (repo, n) in enumerate(n_layers_of.items()):
        torch.manual_seed(i)
        if "Qwen2" in repo:
            model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=n, num_key_value_heads=2,
                                                 max_position_embeddings=512, **small, **ids))
        else:
            model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=n, num_key_value_heads=2,
                                                 max_position_embeddings=512, **small, **ids))
        save(model, tok, snapshot(hf_home, repo))
    for i, repo in enumerate(("OpenAssistant/reward-model-deberta-v3-large",
                              "OpenAssistant/reward-model-deberta-v3-large-v2")):
        torch.manual_seed(100 + i)
        cfg = DebertaV2Config(num_hidden_layers=2, num_labels=1, max_position_embeddings=1024,
                              type_vocab_size=0, relative_attention=True,
                              pos_att_type=["p2c", "c2p"], position_biased_input=False,
                              **small, **ids)
        save(DebertaV2ForSequenceClassification(cfg), tok, snapshot(hf_home, repo))
    torch.manual_seed(200)
    emb = XLMRobertaModel(XLMRobertaConfig(num_hidden_layers=2, max_position_embeddings=1100,
                                           **small, **ids), add_pooling_layer=False)
    save(emb, tok, snapshot(hf_home, "BAAI/bge-m3"))


def build_saes(hf_home: Path, sae_dir: Path, saes: dict) -> None:
    """Stand-ins for the paper's SAE releases, same hook and expansion, tiny width."""
    import numpy as np
    import torch
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from safetensors.torch import save_file

    from rlhf_audit.sae import SAESettings, train_sae

    directory = get_pretrained_saes_directory()
    for spec in saes.values():
        release, sae_id, layer = spec["release"], spec["id"], spec["layer"]
        info = directory[release]
        if release.startswith("llama_scope"):
            # The release's own format in the hub cache: sae-lens converts it.
            d_sae = 8 * D_MODEL
            folder = snapshot(hf_home, info.repo_id) / info.saes_map[sae_id]
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            (folder / "hyperparams.json").write_text(json.dumps({
                "d_model": D_MODEL, "d_sae": d_sae, "hook_point_in": f"blocks.{layer}.hook_resid_post",
                "hook_point_out": f"blocks.{layer}.hook_resid_post", "jump_relu_threshold": 0.05,
                "dataset_average_activation_norm": {"in": 1.0, "out": 1.0}}))
            g = torch.Generator().manual_seed(layer)
            save_file({"encoder.weight": torch.randn(d_sae, D_MODEL, generator=g) / D_MODEL ** 0.5,
                       "encoder.bias": torch.zeros(d_sae),
                       "decoder.weight": torch.randn(D_MODEL, d_sae, generator=g) / d_sae ** 0.5,
                       "decoder.bias": torch.zeros(D_MODEL)},
                      str(folder / "checkpoints" / "final.safetensors"))
        else:
            # A local sae-lens SAE of the same hook and expansion (Goodfire: 16x).
            rng = np.random.default_rng(layer)
            train_sae(rng.normal(size=(2000, D_MODEL)).astype(np.float32),
                      sae_dir / release / sae_id,
                      SAESettings(layer=layer, d_sae=16 * D_MODEL, k=8, training_tokens=4000,
                                  batch_size=256))


def build_datasets(hf_home: Path, tmp: Path) -> None:
    """The hub datasets as small tables in the `datasets` offline cache under their ids."""
    import shutil

    import polars as pl
    from datasets.packaged_modules.parquet.parquet import Parquet

    from rlhf_audit.organism import hh
    from rlhf_audit.organism.gsm8k import generate_problems

    problems = generate_problems(6, seed=0)
    pairs = hh.generate_pairs(160, seed=0)
    tables = {
        ("openai/gsm8k", "main", "test"): pl.DataFrame(
            {"question": [p["question"] for p in problems], "answer": [p["answer"] for p in problems]}),
        ("Anthropic/hh-rlhf", "default", "train"): pl.DataFrame(
            {"chosen": [p["chosen"] for p in pairs], "rejected": [p["rejected"] for p in pairs]}),
    }
    cache = hf_home / "datasets"
    for (repo, config_name, split), df in tables.items():
        f = tmp / f"{repo.replace('/', '_')}-{split}.parquet"
        df.write_parquet(f)
        name = repo.split("/")[1]
        builder = Parquet(cache_dir=str(cache), dataset_name=name, config_name=config_name,
                          data_files={split: str(f)}, hash="0" * 16)
        builder.download_and_prepare()
        # Prepared under <name>/<config>-<hash of files>/...; a hub dataset's cache entry
        # is <owner>___<name>/<config>/..., where the offline loader looks for it.
        dest = cache / repo.replace("/", "___")
        shutil.move(str(cache / name), str(dest))
        for d in dest.iterdir():
            d.rename(dest / config_name)


REWORDED = "In other words, "


class Stub:
    """An OpenAI-compatible chat-completions stub: JSON labels for json_object
    requests (the labeller), a reworded reply otherwise (the rewriter). It answers at
    most ``max_requests`` and shuts itself down after ``lifetime_s``."""

    def __init__(self, features: list[str], max_requests: int = 2000, lifetime_s: float = 600):
        self.features, self.max_requests, self.n = features, max_requests, 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.n += 1
                if stub.n > stub.max_requests or not self.path.endswith("/chat/completions"):
                    self.send_error(503 if stub.n > stub.max_requests else 404)
                    return
                prompt = body["messages"][-1]["content"]
                h = hashlib.sha256(prompt.encode()).digest()
                if body.get("response_format", {}).get("type") == "json_object":
                    # A rewrite keeps most labels (hashed without the rewriter's words)
                    # and may change the last two features, as a real labeller might.
                    kept = hashlib.sha256(prompt.replace(REWORDED, "").encode()).digest()
                    n = len(stub.features)
                    content = json.dumps({f: (h if i >= n - 2 else kept)[i] % 2
                                          for i, f in enumerate(stub.features)})
                else:
                    # The rewriter gets the whole transcript and must keep its turns
                    # and their labels: reword each turn.
                    text = prompt.split("Conversation:\n", 1)[-1]
                    text = text.rsplit("\n\nRewritten conversation:", 1)[0].strip()
                    content = re.sub(r"(Human|Assistant): ", rf"\1: {REWORDED}", text)
                out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.timer = threading.Timer(lifetime_s, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()


def apply_swaps(cfg: dict, swaps: dict, stub_url: str) -> dict:
    for dotted, value in swaps.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value.format(stub=stub_url) if isinstance(value, str) else value
    return cfg


@pytest.mark.slow
def test_paper_config_runs_end_to_end_on_tiny_stand_ins(tmp_path):
    from test_workflow import copy_code, snakemake

    from rlhf_audit.config import load_schema, validate_config

    paper = yaml.safe_load(PAPER.read_text())
    filled = validate_config(json.loads(json.dumps(paper)),
                             load_schema(ROOT / "workflow/schemas/config.schema.yaml"))
    hub_models = {spec["hf"]: spec for spec in paper["models"].values()}
    assert set(LLAMA) <= set(hub_models), "the paper's Llama pairs changed: update LLAMA"
    n_layers_of = {repo: spec.get("n_layers") or LLAMA.get(repo, 4)
                   for repo, spec in hub_models.items()}
    hf_home, sae_dir = tmp_path / "hf", tmp_path / "saes"
    build_models(hf_home, n_layers_of)
    build_saes(hf_home, sae_dir, filled["sae"]["saes"])
    build_datasets(hf_home, tmp_path)

    stub = Stub(features=list(filled["reward"]["features"]))
    try:
        code = copy_code(tmp_path / "code")
        cfg = apply_swaps(paper, SWAPS, stub.url)
        (code / "paper_rehearsal.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "RLHF_AUDIT_SAE_DIR": str(sae_dir), "OPENAI_API_KEY": "stub-key"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            t0 = time.time()
            snakemake(code, "--cores", "2", "--configfile", str(code / "paper_rehearsal.yaml"),
                      timeout=1800)
            elapsed = time.time() - t0
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        stub.stop()
    headline = json.loads((code / "results/headline.json").read_text())
    studies = {key.split(".")[0] for key in headline["numbers"]}
    assert {"partisan", "sae", "steering", "calibration", "reward"} <= studies, studies
    # The hub path was used: manifests name the hub ids, not local paths.
    manifest = json.loads(
        (code / "results/activations/llama31_8b_base/partisan/manifest.json").read_text())
    assert "meta-llama/Llama-3.1-8B" in json.dumps(manifest)
    assert 0 < stub.n <= stub.max_requests
    print(f"paper rehearsal: {elapsed:.0f} s")

"""The one model loader, on tiny models saved as ordinary HF directories."""

import pytest
import torch
from tiny import save_tiny_llama, save_tiny_reward_model

from rlhf_audit.lm.loader import (
    ModelLoadError,
    ModelSpec,
    load_causal_lm,
    load_reward_model,
    resolve_dtype,
    weights_hash,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return save_tiny_reward_model(tmp_path_factory.mktemp("rm") / "m")


def test_causal_lm_loads_from_path_with_chat_template(llama_dir):
    model, tok = load_causal_lm({"path": str(llama_dir)}, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training and model.dtype == torch.float32
    text = tok.apply_chat_template([{"role": "user", "content": "tax cut ?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<bos><|user|>tax cut ?<eos>") and text.endswith("<|assistant|>")
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))


def test_reward_model_gives_one_logit_for_a_text_pair(rm_dir):
    model, tok = load_reward_model({"path": str(rm_dir)}, device="cpu")
    enc = tok("Human : tax ?", "the answer is 3 .", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).logits
    assert out.shape == (1, 1)


def test_weights_hash_changes_with_weights(tmp_path):
    a = save_tiny_llama(tmp_path / "a", seed=0)
    b = save_tiny_llama(tmp_path / "b", seed=1)
    c = save_tiny_llama(tmp_path / "c", seed=0)
    assert weights_hash({"path": str(a)}) == weights_hash({"path": str(c)})
    assert weights_hash({"path": str(a)}) != weights_hash({"path": str(b)})


def test_pickle_only_directory_is_refused(tmp_path, llama_dir):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((llama_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle weights .* refuses"):
        load_causal_lm({"path": str(d)}, device="cpu")


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*snakemake --cores all"):
        load_causal_lm({"path": str(tmp_path / "nope")}, device="cpu")


def test_unreachable_hub_id_gives_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as err:
        load_causal_lm({"hf": "meta-llama/Llama-3.1-8B", "revision": "main"}, device="cpu")
    msg = str(err.value)
    for hint in ("HF_HOME", "huggingface-cli login", "{path: DIR}", "HF_HUB_OFFLINE=1"):
        assert hint in msg


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"hf": "x", "path": "y"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"path": "y", "revision": "main"}, "only applies to 'hf'"),
        ({"hf": "x", "weights": "y"}, "unknown model-spec key"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec.from_config(spec, key="models.m")


def test_dtype_auto_is_fp32_on_cpu_and_cuda_without_gpu_fails():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_causal_lm({"path": "/nonexistent"}, device="cuda")


# --------------------------------------------------------------------------- provenance hashes


def test_hash_files_follows_names_sizes_and_content_not_location(tmp_path):
    from rlhf_audit.lm.loader import hash_files, weight_files

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "x.bin").write_bytes(b"abc")
        (d / "sub" / "y.bin").write_bytes(b"def")
    assert hash_files(a) == hash_files([b]) == hash_files(str(a))  # a folder, anywhere
    assert hash_files([a / "x.bin"]) == hash_files(b / "x.bin")
    (b / "sub" / "y.bin").write_bytes(b"deg")
    assert hash_files(a) != hash_files(b)
    # name and content are delimited: ("x", "ab") and ("xa", "b") differ
    (tmp_path / "p").mkdir()
    (tmp_path / "q").mkdir()
    (tmp_path / "p" / "x").write_bytes(b"ab")
    (tmp_path / "q" / "xa").write_bytes(b"b")
    assert hash_files(tmp_path / "p") != hash_files(tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hash_files([tmp_path / "absent"])
    with pytest.raises(FileNotFoundError, match="safetensors"):
        weight_files(a)


def test_weights_hash_is_the_extraction_manifests_weight_hash(tmp_path):
    from rlhf_audit import extract
    from rlhf_audit.lm.loader import hash_files, weight_files

    d = save_tiny_llama(tmp_path / "m", seed=0)
    assert weight_files(d) == extract.weight_files(d)
    assert weights_hash({"path": str(d)}) == extract.hash_files(extract.weight_files(d))
    assert hash_files(d) == extract.hash_files(d)  # folders: the same walk and order


def test_library_versions_name_what_is_absent_and_cuda():
    from rlhf_audit.runtime import LIBRARIES, library_versions

    v = library_versions()
    assert set(LIBRARIES) | {"python", "cuda"} == set(v)
    assert v["torch"] == torch.__version__ and v["cuda"] == (torch.version.cuda or "none")

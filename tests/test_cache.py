"""The content-addressed store behind switch-back without recomputation."""

from rlhf_audit.cache import cache_key, run_cached


def test_hit_restores_without_computing_and_key_follows_content(tmp_path):
    store, inp, out = tmp_path / "store", tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("A")
    calls = []

    def compute():
        calls.append(1)
        out.write_text("result of " + inp.read_text())

    key_a = cache_key({"alpha": 1, "code": "h1"}, [inp])
    assert run_cached(key_a, [out], compute, store) is False
    out.unlink()
    assert run_cached(key_a, [out], compute, store) is True  # switch back: restored
    assert out.read_text() == "result of A" and len(calls) == 1
    # any change to params or input content is a different key
    assert cache_key({"alpha": 2, "code": "h1"}, [inp]) != key_a
    assert cache_key({"alpha": 1, "code": "h2"}, [inp]) != key_a
    inp.write_text("B")
    assert cache_key({"alpha": 1, "code": "h1"}, [inp]) != key_a


def test_a_failed_compute_stores_nothing(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out.txt"

    def boom():
        raise RuntimeError("killed")

    try:
        run_cached("ab" * 32, [out], boom, store)
    except RuntimeError:
        pass
    calls = []  # nothing was stored, so the next call computes
    run_cached("ab" * 32, [out], lambda: (calls.append(1), out.write_text("x")), store)
    assert calls == [1]

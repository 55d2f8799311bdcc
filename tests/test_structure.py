"""Module boundaries are rerun boundaries: a GPU rule's code closure (the code hash its
jobs carry) holds only what that rule runs. These tests fail when an import drags a
figure module or another study into a GPU stage, or when the model layer (rlhf_audit.lm)
starts importing a study."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlhf_audit import codehash

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rlhf_audit"
STUDIES = ("extract", "partisan", "sae", "steering", "calibration", "reward", "seal", "diffing",
           "judge", "stance", "labelling", "rewrite")
"""Study-level modules (or packages) of the library; lm/, io, stats, runtime and the like are
shared layers below them."""

# Which study-level modules each study's GPU rules may use besides their own.
ALLOWED = {
    "reward": {"reward", "labelling", "rewrite"},
    "steering": {"steering", "judge", "stance"},
    # diffing steers its latents through the steering stage's machinery (issue: link to
    # behaviour), so steering is part of its closure by design
    "diffing": {"diffing", "steering"},
    "sae": {"sae", "extract"},
    "extract": {"extract"},
    "calibration": {"calibration"},
    "organism": set(STUDIES),
}


READ_SIDE = {"sae/__init__.py", "sae/load.py", "extract/__init__.py", "extract/settings.py",
             "extract/read.py"}


def gpu_rules() -> list[tuple[str, str, Path]]:
    """(rule file stem, rule name, script) for every rule that asks for a GPU."""
    out = []
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=rule )", text):
            m = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if m and script and re.search(r"\bgpu\s*=", block):
                out.append((smk.stem, m.group(1), (smk.parent / script.group(1)).resolve()))
    return out


def _modules(path: Path) -> set[str]:
    """First path component of every rlhf_audit module in ``path``'s closure
    (``stats.py`` -> stats, ``sae/scan.py`` -> sae)."""
    mods = set()
    for f in codehash.local_closure(path):
        f = Path(f)
        if f.is_relative_to(SRC):
            mods.add(f.relative_to(SRC).parts[0].removesuffix(".py"))
    return mods


def test_gpu_rules_are_found():
    names = {r for _, r, _ in gpu_rules()}
    assert {"extract_activations", "score_rewards", "generate_calibration",
            "generate_steering", "generate_primes", "scan_sae_features"} <= names, names


@pytest.mark.parametrize("stem,rule,script", gpu_rules(), ids=lambda x: getattr(x, "name", x))
def test_gpu_closures_hold_no_figures_and_no_other_study(stem, rule, script):
    mods = _modules(script)
    assert "plotting" not in mods, f"{rule}: a figure module is in its code closure"
    figure_files = [p for p in codehash.local_closure(script) if Path(p).stem == "figures"]
    assert not figure_files, f"{rule}: {figure_files}"
    own = ALLOWED.get(stem, {stem})
    foreign = sorted(m for m in mods if m in STUDIES and m not in own)
    # Reading another stage's outputs is allowed through its read side only: the SAE
    # loader (steering builds a feature vector from decoder rows) and the activation
    # shards' reader (extract/read.py, never the GPU writer).
    files = {Path(f).relative_to(SRC).as_posix() for f in codehash.local_closure(script)
             if Path(f).is_relative_to(SRC)}
    for study in ("sae", "extract"):
        if study in foreign and {f for f in files if f.startswith(f"{study}/")} <= READ_SIDE:
            foreign.remove(study)
    assert not foreign, f"{rule} ({script.name}) imports other studies: {foreign}"


def test_the_model_layer_imports_no_study():
    for f in sorted((SRC / "lm").glob("*.py")):
        foreign = sorted(m for m in _modules(f) if m in STUDIES)
        assert not foreign, f"lm/{f.name} imports {foreign}"


def _graph() -> dict[Path, set[Path]]:
    graph = {}
    for f in SRC.rglob("*.py"):
        deps = set()
        for mod in codehash._imports(f):
            target = codehash._module_file(mod)
            if target is not None and target != f:
                deps.add(target)
        graph[f] = deps
    return graph


def test_no_import_cycle_between_modules():
    """Package __init__ files that re-export their own submodules are left out: a
    submodule importing its package's __init__ is how Python runs it anyway."""
    graph = _graph()
    inits = {f for f in graph if f.name == "__init__.py"}
    graph = {f: {d for d in deps if d not in inits} for f, deps in graph.items()
             if f not in inits}
    state: dict[Path, int] = {}
    cycle: list[Path] = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for d in graph.get(node, ()):
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [d])
                return True
            if state.get(d) is None and visit(d, stack):
                return True
        stack.pop()
        state[node] = 2
        return False

    for n in sorted(graph):
        if state.get(n) is None and visit(n, []):
            break
    assert not cycle, " -> ".join(p.relative_to(SRC).as_posix() for p in cycle)


def test_one_decoder_layers_and_one_steering_hook():
    defs = {}
    for f in SRC.rglob("*.py"):
        for name in re.findall(r"^def (decoder_layers|steer)\(", f.read_text(), re.M):
            defs.setdefault(name, []).append(f.relative_to(SRC).as_posix())
    assert defs == {"decoder_layers": ["lm/hooks.py"], "steer": ["lm/hooks.py"]}


def test_the_study_registry_names_real_code():
    import importlib

    from rlhf_audit import report, studies

    docs = report.key_docs()
    assert [s.name for s in studies.REGISTRY] == list(docs)
    for s in studies.REGISTRY:
        module, attr = s.keys.split(":")
        assert getattr(importlib.import_module(module), attr) == docs[s.name], s.name
        mod, _, func = s.computed_in.rpartition(".")
        assert callable(getattr(importlib.import_module(mod), func)), s.computed_in
        assert s.rule_file is None or (ROOT / "workflow" / "rules" / s.rule_file).is_file()
    # every study's rule file is included by the Snakefile
    snakefile = (ROOT / "Snakefile").read_text()
    for s in studies.REGISTRY:
        assert f"workflow/rules/{s.rule_file}" in snakefile, s.rule_file


def _files(script: Path) -> set[str]:
    return {Path(f).relative_to(SRC).as_posix() for f in codehash.local_closure(script)
            if Path(f).is_relative_to(SRC)}


# Within a study, each stage's closure holds only the stages it runs: an edit of a scorer,
# an analysis or a figure reruns no generation, and an edit of the generation reruns no
# vector build.
STAGE_CLOSURES = {
    "generate_steering.py": ("steering/", {"steering/__init__.py", "steering/settings.py",
                                           "steering/generate.py"}),
    "generate_primes.py": ("steering/", {"steering/__init__.py", "steering/settings.py",
                                         "steering/generate.py"}),
    "build_steering_vectors.py": ("steering/", {"steering/__init__.py", "steering/settings.py",
                                                "steering/activations.py",
                                                "steering/vectors.py"}),
    "score_steering.py": ("steering/", {"steering/__init__.py", "steering/settings.py",
                                        "steering/activations.py", "steering/score.py",
                                        "steering/judging.py"}),
}


@pytest.mark.parametrize("script", sorted(STAGE_CLOSURES))
def test_each_stage_closure_holds_only_its_own_modules(script):
    prefix, allowed = STAGE_CLOSURES[script]
    files = {f for f in _files(ROOT / "scripts" / script) if f.startswith(prefix)}
    assert files == allowed, f"{script}: {sorted(files - allowed)} in, {sorted(allowed - files)} out"


@pytest.mark.parametrize("script", ["generate_steering.py", "generate_primes.py"])
def test_generation_holds_no_scorer_analysis_or_figure(script):
    files = _files(ROOT / "scripts" / script)
    bad = {"steering/score.py", "steering/judging.py", "steering/analysis.py",
           "steering/figures.py", "judge.py", "stance.py", "plotting.py"} & files
    assert not bad, bad


def test_readers_of_the_shards_do_not_hold_the_writer():
    """A reader of the activation shards (probes, the projection scorer, SAE training)
    must not rerun when the GPU extraction code changes."""
    for script in ("fit_partisan_probes.py", "score_steering.py", "train_organism_sae.py",
                   "write_activation_manifest.py"):
        files = _files(ROOT / "scripts" / script)
        assert "extract/write.py" not in files, script
        assert "extract/read.py" in files or script == "write_activation_manifest.py", script


def _rule_outputs() -> set[str]:
    """Every path template a rule file lists under ``output:`` (report(...) wrappers too)."""
    out = set()
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for m in re.finditer(r"\n    output:\n((?:        .*\n|\s*\n)+)", smk.read_text()):
            out.update(re.findall(r'(?:report\(|=|^\s+)"(results/[^"]+)"', m.group(1), re.M))
    return out


def test_every_registered_figure_and_fragment_is_a_rule_output():
    from rlhf_audit import studies

    outputs = _rule_outputs()
    assert "results/figures/steering/{pair}/degeneration.png" in outputs  # the parser works
    for s in studies.REGISTRY:
        for path in (*s.figures, *([s.fragment] if s.fragment else [])):
            assert path in outputs, f"{s.name}: {path} is no rule's output"
        if s.fragment:
            assert all(set(studies.wildcards(f)) == set(studies.wildcards(s.fragment))
                       for f in s.figures), s.name
        else:
            assert not s.figures, s.name


def _registered(key: str, keys: dict) -> bool:
    """``key`` is a headline key, or fills one of its ``{feature}`` templates."""
    return key in keys or any(
        "{feature}" in k and re.fullmatch(re.escape(k).replace(r"\{feature\}", r"\w+"), key)
        for k in keys)


def test_every_claim_names_a_registered_headline_key_of_its_study():
    import importlib

    from rlhf_audit import report, studies

    seen = []
    for s in studies.REGISTRY:
        module, attr = s.keys.split(":")
        keys = getattr(importlib.import_module(module), attr)
        claims = ()
        if s.claims:
            module, attr = s.claims.split(":")
            claims = getattr(importlib.import_module(module), attr)
            assert claims, f"{s.name}: {s.claims} is empty"
        seen += claims
        for c in claims:
            assert c.study == s.name, c
            assert _registered(c.key, keys), f"{s.name}: claim key {c.key!r} not in {s.keys}"
            if "@" in c.expectation:
                other = c.expectation.split("@", 1)[1]
                assert _registered(other, keys), f"{s.name}: bound {other!r} not in {s.keys}"
    assert tuple(seen) == report.CLAIMS


def test_no_gpu_closure_holds_the_registry_the_planner_or_the_report():
    """The registry (titles, figure paths), the planner (throughput tables), the config
    checks, the claims and the report change for reasons no GPU job depends on."""
    for _, rule, script in gpu_rules():
        files = _files(script)
        held = {"studies.py", "config.py", "plan.py", "claims.py", "report.py"} & files
        assert not held, f"{rule}: {sorted(held)}"


def test_registry_targets_label_fragments_by_their_wildcards():
    from rlhf_audit import studies

    t = studies.targets(studies.BY_NAME["sae"], [{"pair": "p", "sae": "s1"},
                                                 {"pair": "p", "sae": "s2"}])
    assert t == {"fragments": {"p.s1": "results/sae/p/s1/headline.json",
                               "p.s2": "results/sae/p/s2/headline.json"},
                 "figures": ["results/figures/sae/p/s1/policy_firing.png",
                             "results/figures/sae/p/s2/policy_firing.png"]}
    r = studies.targets(studies.BY_NAME["reward"], [{"rpair": "r"}])
    assert list(r["fragments"]) == ["r"] and len(r["figures"]) == 3


@pytest.mark.parametrize("package", ["steering", "extract", "sae", "calibration"])
def test_package_init_is_light_and_its_lazy_exports_resolve(package):
    """The package __init__ is in the closure of every submodule's user: it must import
    none of its submodules (a re-export would drag them all into every rule's hash)."""
    import importlib

    init = SRC / package / "__init__.py"
    assert [Path(f) for f in codehash.local_closure(init)] == [init.resolve()]
    mod = importlib.import_module(f"rlhf_audit.{package}")
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name

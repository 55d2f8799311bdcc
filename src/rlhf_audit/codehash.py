"""Content hash of the code a workflow step runs.

Snakemake tracks a script by its mtime only and never sees the library modules
it imports. The workflow passes ``code_hash(script)`` as a param of every rule,
so a real edit to the script or to any ``rlhf_audit`` module it imports
(transitively) reruns that rule and its descendants, while a bare ``touch`` or a
fresh clone reruns nothing.

The hash reads each file's code, not its bytes: the syntax tree with every bare string
statement (docstrings, attribute docstrings) dropped, so comments, docstrings and layout
do not count. Before, a corrected docstring in ``organism/train.py`` retrained the whole
organism and reran every study downstream (minutes here; GPU hours on the paper's
models).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "rlhf_audit"
_SRC = Path(__file__).resolve().parent


def _module_file(module: str) -> Path | None:
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    rel = module.split(".")[1:]
    base = _SRC.joinpath(*rel)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


_PARSED: dict[tuple[Path, Path, str], tuple[tuple[str, ...], bytes]] = {}
"""(imports, code) by (source root, file, its text): the workflow hashes ~40 scripts whose
closures share most modules; parsing each module once instead of once per script took a
dry run of the default workflow from 3.3-3.7 s to 2.2-2.4 s."""


def _parsed(path: Path) -> tuple[tuple[str, ...], bytes]:
    text = path.read_text(encoding="utf-8")
    key = (_SRC, path, text)  # relative imports resolve against _SRC
    if key not in _PARSED:
        tree = ast.parse(text, filename=str(path))
        imports = _parse_imports(path, tree)
        _drop_bare_strings(tree)
        _PARSED[key] = imports, _canonical(tree).encode()
    return _PARSED[key]


def _canonical(node) -> str:
    """A node as text: its type and its fields, leaving out fields that are None or empty, so
    that a Python release that adds an optional field (3.12's ``type_params``) or prints
    empty ones differently (``ast.dump`` since 3.13) does not change the hash of unchanged
    code; positions are not read."""
    if isinstance(node, ast.AST):
        fields = [f"{f}={_canonical(v)}" for f in node._fields
                  if (v := getattr(node, f, None)) is not None and v != []]
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return f"[{','.join(_canonical(x) for x in node)}]"
    return repr(node)


def _imports(path: Path) -> tuple[str, ...]:
    return _parsed(path)[0]


def code_text(path: str | Path) -> bytes:
    """What :func:`code_hash` reads of a file: its syntax tree without bare string
    statements, so without docstrings, comments and layout (a file that does not parse
    raises SyntaxError, naming it)."""
    return _parsed(Path(path))[1]


def _drop_bare_strings(node: ast.AST) -> None:
    """Remove, in place, every statement that is a bare string (docstrings; they do nothing
    when run). Walks statements only: expressions hold none."""
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        stmts = getattr(node, field, None)
        if not isinstance(stmts, list) or not stmts:
            continue
        kept = [st for st in stmts if not (isinstance(st, ast.Expr)
                                           and isinstance(st.value, ast.Constant)
                                           and isinstance(st.value.value, str))]
        if field == "body" and not kept:
            kept = [ast.Pass()]  # a function that held only its docstring
        setattr(node, field, kept)
        for st in kept:
            _drop_bare_strings(st)


def _parse_imports(path: Path, tree: ast.Module) -> tuple[str, ...]:
    found: list[str] = []
    pkg_parts = None
    if path.is_relative_to(_SRC):
        # the package a relative import is resolved against (for a/b.py and a/__init__.py: a)
        pkg_parts = [PACKAGE, *path.relative_to(_SRC).with_suffix("").parts][:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and pkg_parts is not None:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            # `from rlhf_audit import stats` imports a submodule
            found.extend(f"{mod}.{a.name}" for a in node.names)
    return tuple(found)


def local_closure(path: str | Path) -> list[Path]:
    """The file and every ``rlhf_audit`` module it imports, transitively, sorted."""
    start = Path(path).resolve()
    seen: set[Path] = set()
    stack = [start]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        for mod in _imports(p):
            parts = mod.split(".")
            # importing a.b.c also runs a/__init__ and a/b/__init__
            for k in range(1, len(parts) + 1):
                f = _module_file(".".join(parts[:k]))
                if f is not None and f not in seen:
                    stack.append(f)
    return sorted(seen)


def code_hash(*paths: str | Path) -> str:
    """sha256 (first 16 hex digits) over the code (:func:`code_text`) of the closure of
    local code of ``paths``."""
    h = hashlib.sha256()
    files: set[Path] = set()
    for p in paths:
        files.update(local_closure(p))
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(code_text(f))
    return h.hexdigest()[:16]

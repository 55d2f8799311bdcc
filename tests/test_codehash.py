"""The code hash that makes library edits rerun exactly the rules that import them."""

import textwrap

import pytest

from rlhf_audit import codehash


def test_closure_follows_transitive_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "rlhf_audit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rlhf_audit.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from . import c\nimport numpy\n")
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 2\n")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from rlhf_audit.a import thing
        import os
    """))
    monkeypatch.setattr(codehash, "_SRC", pkg)
    names = {p.relative_to(tmp_path).as_posix() for p in codehash.local_closure(script)}
    assert names == {"script.py", "rlhf_audit/__init__.py", "rlhf_audit/a.py",
                     "rlhf_audit/sub/__init__.py", "rlhf_audit/sub/b.py", "rlhf_audit/sub/c.py"}
    before = codehash.code_hash(script)
    (pkg / "unused.py").write_text("Y = 3\n")
    assert codehash.code_hash(script) == before  # not imported: no rerun
    (pkg / "sub" / "c.py").write_text("X = 2\n")
    assert codehash.code_hash(script) != before  # transitive edit: rerun


def test_touch_does_not_change_the_hash(tmp_path):
    s = tmp_path / "s.py"
    s.write_text("import rlhf_audit.stats\n")
    h = codehash.code_hash(s)
    s.touch()
    assert codehash.code_hash(s) == h


def test_an_edited_import_is_followed_in_the_same_process(tmp_path, monkeypatch):
    """Parsed imports are cached by file text, so an edit that adds an import is seen."""
    pkg = tmp_path / "rlhf_audit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "b.py").write_text("Y = 1\n")
    script = tmp_path / "script.py"
    script.write_text("from rlhf_audit import a\n")
    monkeypatch.setattr(codehash, "_SRC", pkg)
    names = lambda: {p.name for p in codehash.local_closure(script)}  # noqa: E731
    assert names() == {"script.py", "__init__.py", "a.py"}
    (pkg / "a.py").write_text("from rlhf_audit import b\n")
    assert names() == {"script.py", "__init__.py", "a.py", "b.py"}


def test_comments_docstrings_and_layout_do_not_count_code_does(tmp_path):
    """A corrected docstring must not retrain the organism; any change to what runs must."""
    f = tmp_path / "m.py"
    base = textwrap.dedent('''
        """Module docstring."""
        import os


        class Settings:
            """A class."""

            seed: int = 0
            """Attribute docstring."""


        def f(x):
            """Docstring."""
            if x:
                "a bare string in a branch"
            return x + 1  # a comment
    ''')
    f.write_text(base)
    h = codehash.code_hash(f)
    same = (base.replace("Docstring.", "A better docstring, two lines\n    long.")
            .replace("# a comment", "# another comment\n# and one more")
            .replace("Attribute docstring.", "Seed of everything.")
            .replace("return x + 1", "return (x\n            + 1)"))
    f.write_text(same)
    assert codehash.code_hash(f) == h
    for edit in (base.replace("x + 1", "x + 2"), base.replace("seed: int = 0", "seed: int = 1"),
                 base.replace("import os", "import sys"), base + "\nNAME = 'a string'\n"):
        f.write_text(edit)
        assert codehash.code_hash(f) != h, edit
    # a function whose body was only its docstring still has a body
    f.write_text('def g():\n    """Only a docstring."""\n')
    assert b"Pass" in codehash.code_text(f)
    # a file that does not parse fails loudly (the dry run names it)
    f.write_text("def broken(:\n")
    with pytest.raises(SyntaxError):
        codehash.code_hash(f)


def test_the_code_text_leaves_out_empty_fields_and_positions(tmp_path):
    # A newer Python that adds an optional field, or prints empty ones, must not rerun
    # every stage: what is hashed names only the fields that hold something.
    f = tmp_path / "m.py"
    f.write_text("def f(x):\n    return x\n")
    text = codehash.code_text(f).decode()
    assert "type_params" not in text and "decorator_list" not in text and "lineno" not in text
    assert "FunctionDef(name='f'" in text and "Return(value=Name(id='x'" in text

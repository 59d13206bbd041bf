"""The public surface and the project's own wiring."""

from __future__ import annotations

import re
from pathlib import Path

import sessionstore
import sessionstore.backends
import sessionstore.repair
import sessionstore.testing

ROOT = Path(__file__).resolve().parents[2]


def test_all_is_sorted_and_complete() -> None:
    for module in (sessionstore, sessionstore.backends, sessionstore.repair, sessionstore.testing):
        names = list(module.__all__)
        # isort style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
        style = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
        assert names == style, module.__name__
        for name in names:
            assert getattr(module, name) is not None, name


def test_public_objects_have_docstrings() -> None:
    for name in sessionstore.__all__:
        obj = getattr(sessionstore, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), name


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "sessionstore" / "py.typed").exists()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2, "README starts with two command blocks"
    test_command = blocks[1].strip().splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command

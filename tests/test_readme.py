"""Every Python block of the README and of the docs pages runs as written (on a
small graph), and the README and the architecture page name modules that exist."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

import gist.data
from gist.data import make_csbm
from gist.methods import METHODS, unregister_method
from gist.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
"""The hand-written pages: the README and ``docs/*.md`` (the generated ``docs/reference/`` excluded)."""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = [
    (page.relative_to(REPO).as_posix(), i, code)
    for page in PAGES
    for i, code in enumerate(python_blocks(page.read_text()))
]


def test_readme_and_docs_have_python_blocks():
    assert len(python_blocks(README)) >= 1
    pages = {page for page, _, _ in BLOCKS}
    for page in ("docs/quickstart.md", "docs/python.md", "docs/extending.md", "docs/wide-models.md"):
        assert page in pages, f"{page} has no Python example"


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=[f"{page}-{i}" for page, i, _ in BLOCKS])
def test_python_block_runs(page, index, code, monkeypatch, tmp_path, capsys):
    small = make_csbm(num_nodes=300, num_classes=4, num_features=16, avg_degree=6, seed=0)

    def load_small(name, root=None, seed=0, **kwargs):
        return small

    # a small graph whatever the block asks for, so that the blocks run in seconds (also where
    # gist train and run_training load it)
    for module in (gist.data, importlib.import_module("gist.engine.setup")):
        if hasattr(module, "load_dataset"):
            monkeypatch.setattr(module, "load_dataset", load_small)
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("docs_example")  # a real module, as a script's is (dataclasses look it up)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    methods, datasets = set(METHODS), set(DATASETS)
    try:
        exec(compile(code, f"{page} python block {index}", "exec"), module.__dict__)
    finally:
        for name in set(METHODS) - methods:
            unregister_method(name)
        for name in set(DATASETS) - datasets:
            DATASETS.unregister(name)
    assert capsys.readouterr().out.strip(), "every example prints what it shows"


def test_layout_and_architecture_name_existing_modules():
    layout = README[README.index("## Layout") :]
    arch = (REPO / "docs" / "architecture.md").read_text()
    for line in re.findall(r"^gist/\S+ .*$", layout, flags=re.M):
        folder, rest = line.split(maxsplit=1)
        # a package may be named without its file (gist/data: a module or a package)
        assert (REPO / folder).exists() or (REPO / f"{folder}.py").is_file(), folder
        if folder.endswith("/"):
            for name in re.findall(r"\b(\w+\.py)\b", rest):
                assert (REPO / folder / name).is_file(), folder + name
    for dotted in sorted(set(re.findall(r"\bgist(?:\.[a-z_]+)+", arch))):
        assert _resolves(dotted), dotted


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module, or an attribute of one."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False

"""Every Python block of the README runs as written (on a small graph), and
the docs name the modules that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import gist.data
from gist.data import make_csbm
from gist.methods import METHODS, unregister_method

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, monkeypatch, tmp_path, capsys):
    small = make_csbm(num_nodes=300, num_classes=4, num_features=16, avg_degree=6, seed=0)
    # a small graph whatever the block asks for, so that the blocks run in seconds
    monkeypatch.setattr(gist.data, "load_dataset", lambda name, root=None, seed=0: small)
    monkeypatch.chdir(tmp_path)
    before = set(METHODS)
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
    finally:
        for name in set(METHODS) - before:
            unregister_method(name)
    assert capsys.readouterr().out.strip(), "every README block prints what it shows"


def test_layout_and_architecture_name_existing_modules():
    layout = README[README.index("## Layout") :]
    arch = (REPO / "docs" / "architecture.md").read_text()
    for line in re.findall(r"^gist/\S+ .*$", layout, flags=re.M):
        folder, rest = line.split(maxsplit=1)
        assert (REPO / folder).exists(), folder
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

"""The shape of the package: docs/architecture.md says what the code is (every
seam's abstract methods, every layer), the import contract covers every
module, and no class grows past what one reader holds in their head."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCH = (REPO / "docs" / "architecture.md").read_text()
MAX_CLASS_LINES = 250

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _seam_rows() -> list[str]:
    table = ARCH[ARCH.index("## The seams") :].split("\n## ")[0]
    return [line for line in table.splitlines() if line.startswith("| ") and "`gist." in line]


def _resolve(dotted: str):
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_seams_abstract_methods_are_in_its_row():
    checked = 0
    for row in _seam_rows():
        implement = row.split("|")[2]
        for dotted in re.findall(r"`(gist(?:\.\w+)+)`", implement):
            obj = _resolve(dotted)
            for name in sorted(getattr(obj, "__abstractmethods__", ())):
                assert f"`{name}" in row, f"{dotted}.{name} is abstract but docs/architecture.md does not name it"
                checked += 1
    assert checked >= 15  # the method, data-parallel, collective and transport seams


def test_every_dotted_name_in_the_architecture_resolves():
    for dotted in sorted(set(re.findall(r"\bgist(?:\.[A-Za-z_]+)+", ARCH))):
        _resolve(dotted)


def _contract(name_start: str) -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return next(c for c in config["tool"]["importlinter"]["contracts"] if c["name"].startswith(name_start))


def _layers(contract: dict) -> set[str]:
    return {part.strip() for layer in contract["layers"] for part in layer.split("|")}


@pytest.mark.parametrize(
    "contract, folder",
    [("Layers", "gist"), ("GIST's package", "gist/methods/gist"), ("Communication", "gist/comm")],
)
def test_the_import_contract_names_every_module_and_the_architecture_every_layer(contract, folder):
    layers = _layers(_contract(contract))
    prefix = "gist." if folder == "gist" else ""
    found = {
        f"{prefix}{p.stem}" for p in (REPO / folder).iterdir() if p.suffix == ".py" and not p.stem.startswith("__")
    } | {f"{prefix}{p.name}" for p in (REPO / folder).iterdir() if (p / "__init__.py").is_file()}
    assert found == layers, (
        f"modules without a layer: {sorted(found - layers)}; layers without a module: {sorted(layers - found)}"
    )
    for layer in layers:
        assert layer.split(".")[-1] in ARCH, f"docs/architecture.md does not place {layer}"


def test_no_class_in_the_package_is_longer_than_a_reader_holds():
    long = []
    for path in sorted((REPO / "gist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"classes over {MAX_CLASS_LINES} lines: {long}"

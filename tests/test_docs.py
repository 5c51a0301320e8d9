"""The documentation site: it builds with no warning, its reference pages come
from the registries, and its command lines and sweep configs name what exists.

The Python blocks of the pages run in ``tests/test_readme.py``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gist.cli import build_parser
from gist.config import setting_fields
from gist.registry import DATASETS, METHODS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
"""The hand-written pages (the generated ``docs/reference/`` excluded)."""
PROGRAMS = {"gist", "python", "pip", "torchrun", "ruff", "lint-imports", "sbatch"}
"""The commands the pages may run."""
PYTHON_MODULES = {"gist", "pytest", "sphinx"}
"""What the pages may run with ``python -m``."""
BUILD_TIMEOUT_S = 300


def _ids(pages: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in pages]


# ------------------------------------------------------------------ the build


def test_sphinx_build_has_no_warnings(tmp_path):
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[test]' installs it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, f"the docs build failed or warned:\n{done.stderr[-6000:]}"
    assert not done.stderr.strip(), done.stderr[-6000:]
    for page in ["index", "cli", "reference/settings", "reference/methods", "reference/api/gist.config"]:
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


# ------------------------------------------------------------------ generated pages


def test_reference_pages_list_every_method_dataset_and_setting(tmp_path):
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import gist_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    DATASETS.register("docs-test-graph", lambda root, seed: None)  # a plug-in appears with no doc edit
    try:
        gist_reference.generate(tmp_path)
    finally:
        DATASETS.unregister("docs-test-graph")
    ref = tmp_path / "reference"
    methods, datasets, settings = ((ref / f"{n}.md").read_text() for n in ("methods", "datasets", "settings"))
    for name in METHODS.names():
        assert f"## {name}" in methods, name
    for name in [*DATASETS.names(), "docs-test-graph"]:
        assert f"| `{name}` |" in datasets, name
    for name, _, field in setting_fields():
        assert f"| `{name}` |" in settings, name
        if field.metadata["cli"]:
            assert f"`--{name.replace('_', '-')}`" in settings, name
    assert "`--procs`" in settings and "`--log`" in settings  # the flags that are not settings
    assert "## gist sweep" in (ref / "commands.md").read_text()
    api = {p.stem for p in (ref / "api").glob("*.md")}
    assert {"gist.config", "gist.engine", "gist.methods", "gist.methods.gist", "gist.comm"} <= api


# ------------------------------------------------------------------ command lines


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> Iterator[list[str]]:
    """The simple commands of a shell block (continuation lines joined, comments dropped)."""
    for line in block.replace("\\\n", " ").splitlines():
        cmd: list[str] = []
        for token in [*shlex.split(line, comments=True), ";"]:
            if token in ("&&", "||", "|", ";"):
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(token)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _script_flags(script: Path) -> set[str]:
    """The option strings a script's argparse parser declares (read from its source)."""
    text = script.read_text()
    flags = {"-h", "--help"}
    for call in re.findall(r"add_argument\(\s*((?:\"-[^\"]+\"\s*,\s*)*\"-[^\"]+\")", text):
        flags.update(re.findall(r"\"(-[^\"]+)\"", call))
    return flags


def check_command(cmd: list[str], subcommands: dict[str, argparse.ArgumentParser]) -> None:
    while cmd and (cmd[0] == "sudo" or re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0])):
        cmd = cmd[1:]
    if cmd and cmd[0] == "sbatch":  # its own options, then the batch script and its arguments
        cmd = cmd[next(i for i, token in enumerate(cmd) if token.startswith("examples/")) :]
    if cmd and cmd[0].startswith("examples/"):  # a launch script: its positional arguments, then gist train's flags
        assert (REPO / cmd[0]).is_file(), f"{cmd[0]} does not exist"
        flags = [i for i, token in enumerate(cmd) if token.startswith("-")]
        cmd = ["gist", "train", *cmd[flags[0] if flags else len(cmd) :]]
    assert cmd and cmd[0] in PROGRAMS, f"unknown command {cmd[:1]} in {cmd}"
    program, args = cmd[0], cmd[1:]
    if program == "torchrun":
        assert "-m" in args and args[args.index("-m") + 1] == "gist", cmd
        args = args[args.index("-m") + 2 :]
    elif program == "python":
        if args[0] == "-m":
            assert args[1] in PYTHON_MODULES, cmd
            if args[1] != "gist":
                return
            args = args[2:]
        else:
            script = REPO / args[0]
            assert script.is_file(), f"{args[0]} does not exist"
            for token in args[1:]:
                if token.startswith("--"):
                    assert token.split("=")[0] in _script_flags(script), f"{args[0]} has no flag {token}"
            return
    elif program != "gist":
        return
    assert args and args[0] in subcommands, f"gist has no subcommand {args[:1]}: {cmd}"
    known = subcommands[args[0]]._option_string_actions
    for token in args[1:]:
        if token.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?", token):
            assert token.split("=")[0] in known, f"gist {args[0]} has no flag {token}"
        elif token.endswith(".toml"):
            assert (REPO / token).is_file(), f"{token} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_command_lines_name_real_commands_and_flags(page):
    subcommands = _subparsers()
    for block in shell_blocks(page.read_text()):
        for cmd in commands(block):
            check_command(cmd, subcommands)


def test_command_check_catches_drift():
    subcommands = _subparsers()
    with pytest.raises(AssertionError, match="no flag --no-such-flag"):
        check_command(["gist", "train", "--no-such-flag"], subcommands)
    with pytest.raises(AssertionError, match="no subcommand"):
        check_command(["gist", "trian"], subcommands)
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(["gist", "sweep", "experiments/no-such.toml"], subcommands)
    with pytest.raises(AssertionError, match="has no flag"):
        check_command(["python", "benchmarks/threads.py", "--no-such-flag"], subcommands)


# ------------------------------------------------------------------ sweep configs


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)


TOML_PAGES = [p for p in PAGES if toml_blocks(p.read_text())]


@pytest.mark.parametrize("page", TOML_PAGES, ids=_ids(TOML_PAGES))
def test_sweep_configs_in_the_docs_are_valid(page):
    from gist.harness.sweep import parse_config, tomllib

    for text in toml_blocks(page.read_text()):
        parse_config(tomllib.loads(text), name="docs")  # raises naming the first bad key or value

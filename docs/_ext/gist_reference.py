"""Reference pages written from the code at every build (``builder-inited``).

Nothing here is written by hand, so a new method, dataset, setting, flag or
module appears in the docs with no edit to them:

* ``reference/methods.md``: :data:`gist.registry.METHODS` (class, colour,
  role in the tables, fixed ``m``, the method's own settings);
* ``reference/datasets.md``: :data:`gist.registry.DATASETS` (the ``info`` of
  each entry: family, metric, description; a missing key reads "—");
* ``reference/settings.md``: every ``gist train`` setting from
  :func:`gist.config.setting_fields` (flag, default, choices, whether it
  changes results, help), with the flags themselves read from
  :func:`gist.cli.build_parser`, and the train flags that are not settings;
* ``reference/commands.md``: the flags of ``gist sweep``, ``gist table`` and
  ``gist partition``, from the same parser;
* ``reference/api/<module>.md``: one ``automodule`` page per package (and per
  top-level module) of ``gist``, found by walking the package.

The pages live in ``docs/reference/``, which git ignores; a file is rewritten
only when its text changes, and pages of modules that no longer exist are
removed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

GENERATED = "reference"
"""The folder under the docs' source folder that this extension owns."""
NONE = "—"
"""What a table shows for a fact nobody gave."""
SKIP_MODULES = ("gist.__main__",)
"""Modules not to import: ``gist.__main__`` runs the command."""


# ------------------------------------------------------------------ helpers


def md(text: Any) -> str:
    """``text`` safe inside a Markdown table cell (argparse's ``%%`` read as ``%``)."""
    out = str(text).replace("%%", "%").replace("\\", "\\\\")
    for ch in "|*<>[]":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.split())


def code(value: Any) -> str:
    """``value`` as inline code (its ``repr`` for non-strings)."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("|", "\\|")
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (atomically) unless it already holds it."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


GENERATED_NOTE = (
    "```{note}\nThis page is generated from the code at every build "
    "(`docs/_ext/gist_reference.py`); do not edit it.\n```\n"
)


def page(title: str, intro: str, body: list[str]) -> str:
    return "\n".join([f"# {title}", "", GENERATED_NOTE, intro, "", *body, ""])


# ------------------------------------------------------------------ the CLI


def subparsers() -> dict[str, argparse.ArgumentParser]:
    from gist.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def flag_text(action: argparse.Action) -> str:
    """An action's flags as typed: ``--label-prior`` / ``--no-label-prior``, ``--subnets``, ``-m``."""
    return ", ".join(code(s) for s in action.option_strings) if action.option_strings else code(action.dest.upper())


def arg_type(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "on/off"
    if action.choices:
        return ", ".join(code(c) for c in action.choices)
    kind = getattr(action.type, "__name__", None) if action.type is not None else "str"
    text = kind or "value"
    return f"{text} …" if action.nargs in ("+", "*") else text


# ------------------------------------------------------------------ pages


def methods_page() -> str:
    from gist.config import options_class
    from gist.registry import METHODS
    from gist.settings import flat_name, leaf_fields

    rows, sections = [], []
    for name in METHODS.names():
        cls = METHODS[name]
        own = [flat_name(f) for f in leaf_fields(options_class(name))]
        path = METHODS.path(name) or f"{cls.__module__}:{cls.__qualname__} (registered)"
        rows.append(
            [
                code(name),
                f"{{py:class}}`{path} <{cls.__module__}.{cls.__qualname__}>`",
                md(getattr(cls, "color", None) or NONE),
                md(getattr(cls, "role", None) or NONE),
                md(cls.fixed_subnets if getattr(cls, "fixed_subnets", None) is not None else NONE),
                ", ".join(code(policy) for policy in getattr(cls, "optimizer_states", ())) or NONE,
                ", ".join(code("--" + n.replace("_", "-")) for n in own) or NONE,
            ]
        )
        about = first_paragraph(cls)
        if not about or "module docstring" in about:  # the class defers to its module
            about = first_paragraph(importlib.import_module(cls.__module__)) or about
        sections += [f"## {name}", "", md(about) or NONE, ""]
        if own:
            sections += [f"Its own settings are in [the settings page](settings.md#{anchor(name)}).", ""]
    intro = (
        "Every method in `gist.registry.METHODS`, in the order of the tables. *Role*: what the "
        "tables compare with it (`target`: its best validation less the target drop is the "
        "target; `bytes`: the baseline of the bytes-to-target ratio; `budget`: the method whose "
        "bytes and seconds are the equal-budget columns' budget). *Fixed m*: the number of workers "
        "it always uses. *Optimizer state*: the `--optimizer-state` policies it offers, its default "
        "first. A method's own settings apply to its runs only; any other method refuses "
        "them with an error naming their owner."
    )
    header = ["name", "class", "colour", "role", "fixed m", "optimizer state", "own settings"]
    return page("Methods", intro, table(header, rows) + [""] + sections)


def datasets_page() -> str:
    from gist.registry import DATASETS

    rows = []
    for name in DATASETS.names():
        info = DATASETS.info(name)
        rows.append(
            [
                code(name),
                md(info.get("family", NONE)),
                md(info.get("metric", NONE)),
                md(info.get("description", NONE)),
                code(DATASETS.path(name)) if DATASETS.path(name) else NONE,
            ]
        )
    intro = (
        "Every dataset in `gist.registry.DATASETS` (names are case-insensitive, `_` reads as `-`). "
        "*Metric*: `accuracy`, or `ogb:<name>` for datasets scored by `ogb.nodeproppred.Evaluator`. "
        "*Loader*: where the function that loads it lives. See [Datasets](../datasets.md) for the "
        "data root and offline behaviour."
    )
    return page("Datasets", intro, table(["name", "family", "metric", "description", "loader"], rows))


def anchor(group: Optional[str]) -> str:
    """The heading anchor of a group's section on the settings page."""
    return f"settings-{group or 'run'}".replace("_", "-")


def settings_page() -> str:
    from gist.cli import TRAIN_GROUPS
    from gist.config import setting_fields
    from gist.registry import METHODS
    from gist.settings import choices_of

    train = subparsers()["train"]
    by_dest = {a.dest: a for a in train._actions}
    sections: dict[Optional[str], list[list[str]]] = {}
    for name, group, f in setting_fields():
        meta = f.metadata
        action = by_dest.get(name) if meta.get("cli", True) else None
        choices = choices_of(f)
        extra = []
        if meta.get("minimum") is not None:
            extra.append(f"at least {meta['minimum']}")
        if meta.get("per_run"):
            extra.append("set per run, never shared by a sweep's runs")
        sections.setdefault(group, []).append(
            [
                flag_text(action) if action is not None else "no flag",
                code(name),
                code(f.default),
                ", ".join(code(c) for c in choices) if choices is not None else NONE,
                "yes" if meta["changes_results"] else "no",
                md(action.help if action is not None and action.help else meta.get("help", ""))
                + (f" ({md('; '.join(extra))})" if extra else ""),
            ]
        )
    header = ["flag", "key", "default", "choices", "changes results", "meaning"]
    body: list[str] = []
    for group, rows in sections.items():
        if group in METHODS:
            title = f"{group}'s own settings (only with `--method {group}`)"
        else:
            title = TRAIN_GROUPS.get(group, group or "training").capitalize()
        body += [f"({anchor(group)})=", f"## {title}", ""]
        body += table(header, rows) + [""]
    settings = {name for name, _, _ in setting_fields()}
    others = [a for a in train._actions if a.dest not in settings and a.dest != "help"]
    body += ["(settings-other)=", "## Flags that are not settings", ""]
    body += table(["flag", "takes", "meaning"], [[flag_text(a), arg_type(a), md(a.help or "")] for a in others])
    intro = (
        "Every setting of a run: a field of `gist.RunConfig` (or of a method's own options) made "
        "with `gist.settings.setting`. *Key*: its flat name, as a `[settings]` key of a sweep "
        "config and in `RunConfig.from_flat` / `cfg.replace`. *Changes results*: whether it is part "
        "of what `--resume` and a sweep's stored logs must match (`RunConfig.results()`). A method's "
        "own settings are refused by every other method with an error naming the method they "
        "belong to (see [Methods](methods.md))."
    )
    return page("`gist train` settings", intro, body)


def commands_page() -> str:
    body: list[str] = []
    for name, parser in subparsers().items():
        if name == "train":
            continue
        body += [f"## gist {name}", "", md(parser.description or ""), "", "```text", parser.format_usage().strip()]
        body += ["```", ""]
        rows = [[flag_text(a), arg_type(a), md(a.help or NONE)] for a in parser._actions if a.dest != "help"]
        body += table(["argument", "takes", "meaning"], rows) + [""]
    intro = (
        "The arguments of `gist sweep`, `gist table` and `gist partition`, read from "
        "`gist.cli.build_parser()`. `gist train`'s are on [the settings page](settings.md)."
    )
    return page("Other commands' arguments", intro, body)


def api_modules() -> list[str]:
    """Every module of the ``gist`` package (but :data:`SKIP_MODULES`), sorted."""
    import gist

    names = ["gist"]
    for info in pkgutil.walk_packages(gist.__path__, "gist."):
        if info.name not in SKIP_MODULES:
            names.append(info.name)
    return sorted(names)


def api_page_of(module: str, packages: set[str]) -> str:
    """The page a module is documented on: a package's own, or a top-level module's own."""
    if module in packages or module.count(".") <= 1:
        return module
    return module.rpartition(".")[0]


def api_pages() -> dict[str, str]:
    modules = api_modules()
    packages = {m for m in modules if hasattr(importlib.import_module(m), "__path__")}
    pages: dict[str, list[str]] = {}
    for module in modules:
        pages.setdefault(api_page_of(module, packages), []).append(module)
    out = {}
    for name, members in pages.items():
        body = []
        for module in members:
            options = [] if module == "gist" else ["   :members:", "   :show-inheritance:", "   :ignore-module-all:"]
            if module != name:
                body += [f"## `{module}`", ""]
            # autodoc's output is reST: parse it as such, not as Markdown. Each object is
            # documented where it is defined (not where an ``__all__`` re-exports it).
            body += ["```{eval-rst}", f".. automodule:: {module}", *options, "```", ""]
        out[name] = "\n".join([f"# `{name}`", "", *body])
    return out


# ------------------------------------------------------------------ Sphinx


def generate(srcdir: Path) -> list[Path]:
    """Write every reference page under ``srcdir/reference``; return their paths."""
    out = srcdir / GENERATED
    pages = {
        "methods.md": methods_page(),
        "datasets.md": datasets_page(),
        "settings.md": settings_page(),
        "commands.md": commands_page(),
    }
    pages.update({f"api/{name}.md": text for name, text in api_pages().items()})
    written = []
    for rel, text in pages.items():
        write_if_changed(out / rel, text)
        written.append(out / rel)
    for stale in (out / "api").glob("*.md"):
        if stale not in written:
            stale.unlink()
    return written


def _builder_inited(app: Any) -> None:
    generate(Path(app.srcdir))


def _repository_links(app: Any, doctree: Any) -> None:
    """Links to Markdown files of the repository outside ``docs/`` (``../results/README.md``)
    as downloads of those files, as links to other files are: myst would take them
    for pages of these docs and fail. A file that does not exist is still a warning
    (Sphinx's "download file not readable"). Runs before Sphinx collects the downloads."""
    from sphinx import addnodes

    srcdir = Path(app.srcdir).resolve()
    here = (srcdir / app.env.docname).parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        target = node.get("reftarget", "")
        if node.get("refdomain") != "doc" or node.get("reftype") != "myst" or not os.path.isabs(target):
            continue
        path = Path(target + ".md")  # Markdown is the only source suffix
        if path.resolve().is_relative_to(srcdir):
            continue  # a page of these docs that does not exist: leave myst's warning
        link = addnodes.download_reference(
            refdomain=None,
            reftarget=os.path.relpath(path, here),
            refdoc=node.get("refdoc", app.env.docname),
            reftype="myst",
            refexplicit=node.get("refexplicit", False),
        )
        link += node.children
        node.replace_self(link)


def _napoleon_for_callables_only(app: Any) -> None:
    """Napoleon reads the first ``text:`` of an attribute's docstring as its type (the
    Google style ``int: the count``); this package's attribute docstrings are prose
    (``The method's own settings: an instance of ...``). Keep napoleon's ``Args:``
    sections for functions and classes, and leave attributes, data and properties alone."""
    from sphinx.ext import napoleon

    for listener in list(app.events.listeners.get("autodoc-process-docstring", [])):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)

    def process(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
        if what not in ("attribute", "data", "property"):
            napoleon._process_docstring(app, what, name, obj, options, lines)

    app.connect("autodoc-process-docstring", process)


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.napoleon")
    _napoleon_for_callables_only(app)
    app.connect("builder-inited", _builder_inited)
    app.connect("doctree-read", _repository_links, priority=400)  # before the download collector (500)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

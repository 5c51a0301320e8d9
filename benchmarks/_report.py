"""What every benchmark script does with its Markdown report."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def emit(text: str, out: Optional[str]) -> None:
    """Print the report and, if ``out`` is given, write it there."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


def markdown_table(header: Sequence[str], rows: Sequence[str]) -> list[str]:
    """The lines of a Markdown table of ``header`` columns whose ``rows`` are already formatted Markdown rows."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


def script_command() -> str:
    """This script's command line, as a user would type it."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def markdown_report(
    title: str, notes: Sequence[str], body: Sequence[str], commands: Optional[Sequence[str]] = None
) -> str:
    """A Markdown report: ``# title``, the command that made it (default
    :func:`script_command`; several ``commands``: run in that order),
    ``notes`` and ``body`` (lines)."""
    commands = [script_command()] if commands is None else commands
    if len(commands) == 1:
        head = [f"Command: `{commands[0]}`"]
    else:
        head = ["Commands, run in this order (each adds its cells to those before):", ""]
        head += [f"- `{c}`" for c in commands]
    return "\n".join([f"# {title}", "", *head, "", *notes, "", *body, ""])


def markdown_table_report(title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[str]) -> str:
    """:func:`markdown_report` whose body is one table (:func:`markdown_table`)."""
    return markdown_report(title, notes, markdown_table(header, rows))

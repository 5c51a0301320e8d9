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


def markdown_report(title: str, notes: Sequence[str], body: Sequence[str], argv: Optional[Sequence[str]] = None) -> str:
    """A Markdown report: ``# title``, the command that made it (this
    script's own command line, or ``argv``'s arguments), ``notes`` and ``body`` (lines)."""
    args = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *args])
    return "\n".join([f"# {title}", "", f"Command: `{command}`", "", *notes, "", *body, ""])


def markdown_table_report(title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[str]) -> str:
    """:func:`markdown_report` whose body is one table (:func:`markdown_table`)."""
    return markdown_report(title, notes, markdown_table(header, rows))

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


def markdown_table_report(title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[str]) -> str:
    """A Markdown report: ``# title``, the command that made it (this
    script's own command line), ``notes`` (lines), and a table of ``header``
    columns whose ``rows`` are already formatted Markdown rows."""
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    lines = [f"# {title}", "", f"Command: `{command}`", "", *notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, ""]
    return "\n".join(lines)

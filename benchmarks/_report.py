"""What every benchmark script does with its Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def emit(text: str, out: Optional[str]) -> None:
    """Print the report and, if ``out`` is given, write it there."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)

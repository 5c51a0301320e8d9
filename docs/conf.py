"""Sphinx configuration of the GIST documentation.

Build with ``python -m sphinx -W --keep-going -b html docs <out>`` from the
checkout (``tests/test_docs.py`` does, and fails on any warning). The pages
are Markdown (myst-parser); the reference pages under ``docs/reference/``
are written from the code at every build by ``docs/_ext/gist_reference.py``
and are not kept in git.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # document this checkout's package, not an installed one

project = "GIST for PyTorch Geometric"
author = "the GIST for PyG authors"
copyright = "the GIST for PyG authors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "gist_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

myst_heading_anchors = 3
"""Headings down to ``###`` are link targets (``[text](page.md#heading)``), checked by the build."""
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autoclass_content = "both"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = project
html_static_path: list[str] = []

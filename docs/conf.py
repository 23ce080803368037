"""Sphinx configuration of rnd's documentation site (`sphinx-build -W docs docs/_build/html`)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import rnd  # noqa: E402

project = "rnd"
author = "the rnd developers"
copyright = "2026, the rnd developers"
release = rnd.__version__
version = rnd.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "rnd_results",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # no torch.nn.Module boilerplate under every forward()
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The guides' examples run under `sphinx-build -b doctest`, one fresh namespace per group; they use
# the default checkpoint ($RND_HOME, trained on first use as `rnd demo` does).
doctest_global_setup = """
import torch
torch.set_num_threads(2)
"""

html_theme = "furo"
html_title = f"rnd {release}"
html_static_path: list[str] = []
suppress_warnings = ["myst.header"]
# "--max-drop" in prose and help texts stays two hyphens (no en dash)
smartquotes = False
# Only the guides' explicit `{doctest}` / `{testcode}` blocks run; the docstrings' `>>>` examples
# shown in the API reference are illustrations, not tests.
doctest_test_doctest_blocks = ""

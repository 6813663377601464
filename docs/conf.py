"""Sphinx configuration for batchloader's documentation.

Build it with the command in README.md's Documentation section; warnings are
errors there, and ``tests/test_docs.py`` runs the same build.
"""

from __future__ import annotations

import pathlib
import sys

# Document the checkout next to this file, even where batchloader is not installed.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import batchloader  # noqa: E402  (needs the path above)

project = "batchloader"
author = "the batchloader authors"
copyright = "the batchloader authors"
release = batchloader.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # docstrings use Google style: Args:, Raises:, Example::
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: ``{eval-rst}`` blocks hold autodoc directives; ``#anchor`` links resolve to headings.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Signatures show the annotations as written; the docstrings say the rest.
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"batchloader {release}"

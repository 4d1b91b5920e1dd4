"""Sphinx configuration: MyST pages, numpy-style API docs, the CLI from its own parser."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import generated  # noqa: E402  (needs _ext on the path)

import cellucid_export  # noqa: E402

project = "cellucid-export"
author = "cellucid-export developers"
copyright = "cellucid-export developers"
release = version = cellucid_export.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxarg.ext",
]

# Pages are MyST Markdown; the tutorials are the notebooks of ../notebooks, copied in below.
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "_generated", "_ext", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]

# The tutorials are rendered with their outputs (tables, plots, measured memory): executing them takes about
# 20 s. CELLUCID_DOCS_EXECUTE=0 shows their code only (they also run in tests/test_notebooks.py).
nb_execution_mode = "off" if os.environ.get("CELLUCID_DOCS_EXECUTE") == "0" else "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True

autodoc_typehints = "description"
# Types go next to what a docstring describes, and nowhere else: a dataclass's fields are documented
# once, as attributes, not a second time as a bare list of constructor parameters.
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# The type line of a Returns section becomes the "Return type" (linked), so autodoc adds no second one.
napoleon_use_rtype = True
napoleon_preprocess_types = True

html_theme = "furo"
html_title = "cellucid-export"
html_theme_options = {"source_directory": "docs/", "navigation_with_keys": True}

# Numbers shown on the pages are computed from the package at every build (see _ext/generated.py).
generated.write_all(HERE / "_generated")

# The tutorial notebooks live in ../notebooks (run by the tests); the docs render copies of them.
_tutorials = HERE / "tutorials"
_tutorials.mkdir(exist_ok=True)
for _nb in sorted((HERE.parent / "notebooks").glob("*.ipynb")):
    shutil.copyfile(_nb, _tutorials / _nb.name)

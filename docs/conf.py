"""Sphinx configuration of the ppl-vae documentation: ``python -m sphinx -W -b html docs docs/_build/html``
(``pip install -e '.[docs]'``). Pages are Markdown (myst-parser); the API reference is read from the
docstrings (autodoc, whose ``:param:`` fields they use). Nothing is fetched from the network."""

project = "ppl-vae"
author = "The ppl-vae authors"
copyright = "2026, The ppl-vae authors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "studies/figures"]  # figures/NAME/figures.md is included by the study pages
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = False  # the docstrings are Sphinx style (:param:), with numpy-free prose
nitpicky = False

html_theme = "furo"
html_title = "ppl-vae"

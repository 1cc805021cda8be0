"""The bundled experiment files (``*.toml``), installed as the package data ``ppl_vae.experiments`` so
``importlib.resources`` finds them in a wheel as in an editable install. Nothing here to import."""

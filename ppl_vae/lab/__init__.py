"""Running experiments: the experiment-file grammar (``experiment_file``), one grid cell and its run
folder (``cell``), the grid runners (``runner``: one after the other or in local processes;
``ray_runner``: Ray tasks), run and report (``experiment``), studies (``study``, and the bundled
ones in ``studies``), and ``explore`` over a finished run. The files themselves are the
top-level ``experiments/`` folder, shipped as the package data ``ppl_vae.experiments``."""

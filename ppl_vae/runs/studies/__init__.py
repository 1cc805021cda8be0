"""The bundled studies' reports, one module each (``single-bit`` is ``single_bit.py``); each defines
``STUDY``, a ``ppl_vae.runs.study.Study``. See ``ppl_vae.runs.study`` for how a report is found by name."""

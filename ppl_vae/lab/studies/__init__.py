"""The bundled studies' reports, one module each (``single-bit`` is ``single_bit.py``); each defines
``STUDY``, a ``ppl_vae.lab.study.Study``. See ``ppl_vae.lab.study`` for how a report is found by name."""

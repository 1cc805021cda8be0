"""Figures (``plots``) and TensorBoard logs (``board``, the optional extra ``[tensorboard]``)."""

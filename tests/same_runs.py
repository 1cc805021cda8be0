"""Two trainers trained the same run: ``assert_same`` compares their history rows and parameters, bit for
bit or to float rounding (the tests of vectorised restarts and of CUDA graphs)."""

from __future__ import annotations

import pytest
import torch

from ppl_vae import Trainer


def assert_same(a: Trainer, b: Trainer, exact: bool, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """The same history and parameters: equal, or within float rounding."""
    if exact:
        assert a.history == b.history
        assert all(torch.equal(p, q) for p, q in zip(a.loss_fn.parameters(), b.loss_fn.parameters(), strict=True))
        return
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_a.keys() == row_b.keys()
        assert all(row_a[k] == pytest.approx(row_b[k], rel=rtol, abs=atol) for k in row_a
                   if not isinstance(row_a[k], dict))
    for p, q in zip(a.loss_fn.parameters(), b.loss_fn.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=rtol, atol=atol)

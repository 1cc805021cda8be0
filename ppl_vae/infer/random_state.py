"""torch's random state as tensors (so checkpoints keep it), saved and put back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random state, and the GPU's when ``device`` is one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def generator_key(device: torch.device) -> str:
    """The entry of ``rng_state`` that is ``device``'s own generator: ``"cuda"`` on a GPU, else torch's (CPU)."""
    return "cuda" if device.type == "cuda" else "torch"


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run the block on the current random stream, then put the stream back where it was: what
    the block draws (scoring, say) leaves training's draws unchanged."""
    state = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(state, device)


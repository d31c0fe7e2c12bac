"""Running a model for inference in the middle of training (checks at validation, captions, passkey); no Lightning.

:func:`evaluating` puts a model in eval mode without gradients and restores every submodule's own mode after: a
stage's ``vlm`` is a new view over its backbones, so restoring the view's flag alone would put the alignment
stage's frozen LLM back into train mode. :func:`projecting_positions` has an LLM's head project a few positions only
(a check that scores them needs no ``[B, T, vocab]`` logits). :func:`torch_threads` runs a block on a given number of
CPU threads (tiny models' many small ops run faster on one thread than on two that wait for each other).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode and without gradients for the block, each submodule's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def projecting_positions(model: torch.nn.Module, positions: slice) -> Iterator[None]:
    """For the block, the model's ``lm_head`` (if any) projects ``positions`` of the sequence only.

    The model's own ``forward`` still runs whole, so FSDP2's hooks gather its weights as in training.
    """
    head = getattr(model, "lm_head", None)
    handle = head.register_forward_pre_hook(lambda _, args: (args[0][:, positions],)) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (unchanged when ``None``), the count restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

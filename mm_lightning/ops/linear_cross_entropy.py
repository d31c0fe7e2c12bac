"""The output layer's matmul and cross-entropy over chunks of tokens, so a long row's logits never exist whole.

A row of 128K tokens at a 128K vocabulary has 16G logits (32 GB in bf16, twice that in fp32 for the softmax).
:func:`linear_cross_entropy` runs the head matmul, the log-sum-exp and their gradients ``chunk_size`` tokens at a
time, as Liger-Kernel's fused linear cross-entropy does (Hsu et al. 2024): the gradients are computed in the
forward pass, chunk by chunk, so at most one chunk of logits is alive in either pass. The backward pass only scales
the stored gradients by the incoming one; it needs neither the logits nor the head weight (which FSDP2 may have
resharded by then). Tokens whose label is the ignore index never reach the head. The result equals
``F.cross_entropy(hidden @ weight.T, labels, ignore_index=...)`` (mean over counted tokens), and so do the gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int, ignore_index: int) -> Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``labels``, ``chunk_size`` tokens at a time.

    Under autocast the matmuls run at autocast's dtype (as ``nn.Linear`` would) and the softmax, the loss and the
    head weight's gradient accumulate in fp32.

    Args:
        hidden: ``[..., d]`` final hidden states.
        weight: ``[V, d]`` output-layer weight (tied to the embedding or not).
        labels: ``[...]`` target ids, ``ignore_index`` where a position has none.
        chunk_size: tokens per chunk (positive).
        ignore_index: the label of positions that do not count.

    Returns:
        The fp32 scalar mean over counted positions (NaN when none counts, as ``F.cross_entropy``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)  # [N, d], [N]
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if not torch.is_grad_enabled():  # no gradients to prepare in the forward pass
        hidden, weight = hidden.detach(), weight.detach()
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk_size, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients in the forward pass, one chunk of counted tokens at a time."""

    @staticmethod
    def forward(ctx: FunctionCtx, hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int,
                ignore_index: int) -> Tensor:  # fmt: skip
        counted = (labels != ignore_index).nonzero().squeeze(1)  # [n]
        rows, targets = hidden.index_select(0, counted), labels.index_select(0, counted)  # [n, d], [n]
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_rows = torch.empty_like(rows) if want_hidden else None  # [n, d]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        count = counted.numel()
        for start in range(0, count, chunk_size):
            end = start + chunk_size
            grad_chunk = grad_rows[start:end] if want_hidden else None
            total += _chunk_step(rows[start:end], targets[start:end], weight, count, grad_chunk, grad_weight)
        ctx.save_for_backward(grad_rows, grad_weight, counted)
        ctx.hidden_shape, ctx.weight_dtype = hidden.shape, weight.dtype
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        grad_rows, grad_weight, counted = ctx.saved_tensors
        grad_hidden = None
        if grad_rows is not None:
            scaled = grad_rows * grad_loss.to(grad_rows.dtype)  # [n, d]
            grad_hidden = scaled.new_zeros(ctx.hidden_shape).index_copy_(0, counted, scaled)  # [N, d]
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)  # [V, d]
        return grad_hidden, grad_weight, None, None, None


def _chunk_step(chunk: Tensor, targets: Tensor, weight: Tensor, count: int, grad_chunk: Tensor | None,
                grad_weight: Tensor | None) -> Tensor:  # fmt: skip
    """One chunk of tokens: its summed loss; the gradients of the mean loss go into ``grad_chunk`` and ``grad_weight``.

    Its logits are freed on return, before the next chunk's exist.

    Args:
        chunk: ``[C, d]`` hidden states of counted tokens.
        targets: ``[C]`` their target ids.
        weight: ``[V, d]`` head weight.
        count: counted tokens in the whole batch (the mean's denominator).
        grad_chunk: ``[C, d]`` where the hidden states' gradient is written, or None (not wanted).
        grad_weight: ``[V, d]`` fp32 sum the weight's gradient is added to, or None (not wanted).
    """
    probs, nll = _chunk_softmax_nll(chunk @ weight.T, targets)  # [C, V], [C]
    if grad_chunk is not None or grad_weight is not None:
        probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
        grad_logits = probs.div_(count).to(weight.dtype)  # [C, V]: d(mean loss) / d(logits)
        if grad_chunk is not None:
            grad_chunk.copy_(grad_logits @ weight)
        if grad_weight is not None:
            _accumulate(grad_weight, grad_logits.T, chunk)
    return nll.sum()


def _chunk_softmax_nll(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax (fp32, computed in place of the logits' fp32 copy) and negative log-likelihood of each token.

    Args:
        logits: ``[C, V]`` one chunk's logits, any float dtype.
        targets: ``[C]`` target ids.

    Returns:
        ``[C, V]`` fp32 probabilities and ``[C]`` fp32 ``logsumexp - target logit``.
    """
    logits = logits.float()  # the one [C, V] fp32 buffer: exp and normalisation happen in it
    target_logits = logits.gather(1, targets[:, None]).squeeze(1)  # [C]
    peak = logits.amax(1, keepdim=True)  # [C, 1]
    norm = logits.sub_(peak).exp_().sum(1, keepdim=True)  # [C, 1]
    nll = (norm.log() + peak).squeeze(1) - target_logits  # [C]
    return logits.div_(norm), nll


def _accumulate(total: Tensor, left: Tensor, right: Tensor) -> None:
    """``total += left @ right`` into the fp32 ``total``, without a second ``total``-sized buffer when fp32."""
    if left.dtype == total.dtype:
        total.addmm_(left, right)
    else:
        total += (left @ right).float()

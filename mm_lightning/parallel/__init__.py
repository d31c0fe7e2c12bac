"""Parallelism applied from outside the models (torchtitan's ``parallelize_*`` order).

Model files import no ``torch.distributed``; stages call :func:`parallelize` from ``configure_model``.
"""

from mm_lightning.parallel.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp, parallelize

__all__ = ["apply_activation_checkpointing", "apply_compile", "apply_fsdp", "parallelize"]

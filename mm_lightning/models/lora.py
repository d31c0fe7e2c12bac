"""Low-rank adapters for any backbone's ``nn.Linear`` layers (LoRA, Hu et al. 2021).

A frozen linear map ``W`` gains a trainable low-rank update: ``y = W x + (alpha / rank) * B A x`` with
``A [rank, in]`` (Kaiming-uniform) and ``B [out, rank]`` (zeros, so a fresh adapter changes nothing). The flow:

    >>> llm = build_backbone("llm", "tiny")
    >>> apply_lora(llm, LoRAConfig(rank=8))        # wraps qkv/proj/gate_up/down, freezes all but the adapters
    >>> ...train...
    >>> save_adapters(llm, config, "adapters.pt")  # a small file: the config and the A/B tensors only
    >>> merge_lora(llm)                            # a plain model again: W <- W + scale * B A

Pure torch: stages call these functions (``configure_model``), the models know nothing of LoRA.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mm_lightning.errors import ConfigError


@dataclass
class LoRAConfig:
    """Which Linear layers get adapters, and how large they are."""

    rank: int = 8
    """Rank of the update ``B A``; the adapter of an ``[out, in]`` layer has ``rank * (in + out)`` parameters."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / rank``."""
    dropout: float = 0.0
    """Dropout probability on the adapter's input (the frozen path sees the input unchanged)."""
    targets: tuple[str, ...] = ("qkv", "proj", "gate_up", "down")
    """Names of the Linear submodules to adapt, matched on the last component of the module path."""

    def __post_init__(self) -> None:
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("LoRA targets are empty: name at least one Linear layer (e.g. 'qkv').")

    @property
    def scale(self) -> float:
        """Multiplier of the low-rank update, ``alpha / rank``."""
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``.base``) plus a trainable low-rank update ``scale * B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **kwargs))
        self.lora_b = nn.Parameter(torch.empty(base.out_features, rank, **kwargs))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """``A`` as ``nn.Linear`` initialises its weight, ``B`` zeros: the update starts at exactly zero."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    @property
    def rank(self) -> int:
        """Rank of the update."""
        return self.lora_a.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        update = (self.dropout(x) @ self.lora_a.T) @ self.lora_b.T  # [..., rank] -> [..., out]
        return self.base(x) + self.scale * update

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same map: ``W + scale * B A`` (base dtype/device, bias kept)."""
        weight = self.base.weight
        delta = self.scale * (self.lora_b.float() @ self.lora_a.float())  # [out, in], summed in float32
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.to(device=weight.device, dtype=weight.dtype)
        merged.weight.copy_(weight.float() + delta)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged.requires_grad_(weight.requires_grad)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


def apply_lora(module: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every targeted ``nn.Linear`` of ``module`` in a :class:`LoRALinear`, in place.

    Every parameter of ``module`` other than the adapters is frozen (``requires_grad=False``).

    Args:
        module: the model to adapt; it must have no adapters yet.
        config: rank, scale, dropout and target layer names.

    Returns:
        The replaced module paths, e.g. ``["blocks.0.attn.qkv", ...]``.

    Raises:
        ConfigError: the module already has adapters, a target matches no Linear layer, or a targeted layer's
            weight is tied to another module's (merging would silently untie it).
    """
    if find_lora_layers(module):
        raise ConfigError("The module already has LoRA adapters; apply_lora runs once (merge_lora first to re-apply).")
    linears = {name: child for name, child in module.named_modules() if isinstance(child, nn.Linear) and name}
    chosen = [name for name in linears if name.rsplit(".", 1)[-1] in config.targets]
    _check_targets(config.targets, linears, chosen)
    _check_untied(module, chosen)
    module.requires_grad_(False)
    for name in chosen:
        layer = LoRALinear(linears[name], config.rank, config.alpha, config.dropout)
        _replace(module, name, layer)
    return chosen


def _check_targets(targets: tuple[str, ...], linears: dict[str, nn.Linear], chosen: list[str]) -> None:
    matched = {name.rsplit(".", 1)[-1] for name in chosen}
    unmatched = [target for target in targets if target not in matched]
    if unmatched:
        available = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ConfigError(
            f"LoRA targets {unmatched} match no nn.Linear in the model; its Linear layer names are {available}."
        )


def _check_untied(module: nn.Module, chosen: list[str]) -> None:
    owners: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name in chosen:
        sharing = owners[id(module.get_submodule(name).weight)]
        if len(sharing) > 1:
            raise ConfigError(
                f"LoRA target {name!r} has a weight tied to {[n for n in sharing if not n.startswith(name + '.')]}; "
                "leave it out of the targets (merging would untie it)."
            )


def _replace(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(module.get_submodule(parent), leaf, new)


def find_lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` inside ``module``, by module path."""
    return {name: child for name, child in module.named_modules() if isinstance(child, LoRALinear)}


def merge_lora(module: nn.Module) -> list[str]:
    """Replace each :class:`LoRALinear` by its merged plain ``nn.Linear``, in place.

    The module becomes a normal model again (its ``state_dict`` has the original keys), loadable by code that
    knows nothing of LoRA. Merged weights keep the base layer's ``requires_grad`` (False after :func:`apply_lora`).

    Returns:
        The merged module paths.
    """
    layers = find_lora_layers(module)
    for name, layer in layers.items():
        _replace(module, name, layer.merged_linear())
    return list(layers)


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only (``<path>.lora_a``, ``<path>.lora_b``), keys relative to ``module``."""
    state = {}
    for name, layer in find_lora_layers(module).items():
        state[f"{name}.lora_a"] = layer.lora_a.detach()
        state[f"{name}.lora_b"] = layer.lora_b.detach()
    return state


def load_lora_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter tensors from ``state`` into ``module``'s adapters (dtype/device converted).

    Raises:
        ConfigError: keys missing or unexpected, or a tensor's shape differs from the adapter's.
    """
    expected = lora_state_dict(module)
    _check_fits(expected, state)
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(state[key])


def _check_fits(expected: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key}: saved {tuple(state[key].shape)}, model {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch {', '.join(mismatched)}")
    if problems:
        raise ConfigError(f"LoRA adapters do not fit the model: {'; '.join(problems)}")


def save_adapters(module: nn.Module, config: LoRAConfig, path: str | Path) -> None:
    """Save ``config`` and the adapter tensors (on CPU) to ``path``; readable with ``torch.load(weights_only=True)``."""
    adapters = {key: tensor.cpu() for key, tensor in lora_state_dict(module).items()}
    if not adapters:
        raise ConfigError("The module has no LoRA adapters to save; call apply_lora first.")
    lora_config = dataclasses.asdict(config) | {"targets": list(config.targets)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"lora_config": lora_config, "adapters": adapters}, path)


def load_adapters(module: nn.Module, path: str | Path) -> LoRAConfig:
    """Load adapters saved by :func:`save_adapters` into ``module``, applying LoRA first if it has none yet.

    Returns:
        The saved :class:`LoRAConfig`.

    Raises:
        ConfigError: the file is no adapter file, or its adapters do not fit the module.
    """
    saved: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or not {"lora_config", "adapters"} <= saved.keys():
        raise ConfigError(f"{path} is not a LoRA adapter file (expected the keys 'lora_config' and 'adapters').")
    try:
        config = LoRAConfig(**saved["lora_config"])
    except TypeError as error:
        raise ConfigError(f"{path}: unreadable lora_config {saved['lora_config']}: {error}") from error
    if not find_lora_layers(module):
        apply_lora(module, config)
    _check_fits(lora_state_dict(module), saved["adapters"])
    scales = sorted({layer.scale for layer in find_lora_layers(module).values()} - {config.scale})
    if scales:
        raise ConfigError(f"{path}: the adapters were trained at scale {config.scale:g}, the model's have {scales}.")
    load_lora_state_dict(module, saved["adapters"])
    return config


def count_trainable(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module``, tied weights counted once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

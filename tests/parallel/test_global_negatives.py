"""Global contrastive negatives on 2 gloo processes == one process on the concatenated batch.

Each rank encodes its 3 pairs with an FSDP2-sharded pair of linear towers, gathers the other rank's embeddings and
scores its rows against all 6 columns. The mean of the ranks' losses is the single-process loss, the sharded
(averaged) parameter gradients are its gradients, and each rank's embedding gradient is N times its rows' share
of it (the gather sums every rank's gradient into the owner; FSDP's averaging then divides by N).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.gloo import run_on_ranks
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from mm_lightning.losses import ContrastiveLoss

WORLD, PER_RANK, IN_DIM, EMBED = 2, 3, 12, 8
KINDS = ("sigmoid", "softmax")


class PairTowers(nn.Module):
    """Image and text towers with the learnable log-scale and bias (1-element: FSDP2 refuses scalar parameters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(IN_DIM, EMBED)
        self.text = nn.Linear(IN_DIM, EMBED)
        self.log_scale = nn.Parameter(torch.tensor([2.3]))
        self.bias = nn.Parameter(torch.tensor([-2.0]))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)  # [b, E] each


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * PER_RANK, IN_DIM, generator=generator), torch.randn(WORLD * PER_RANK, IN_DIM,
                                                                                   generator=generator)  # fmt: skip


def loss_and_grads(towers: nn.Module, rows: slice, kind: str, global_negatives: bool = True) -> dict:
    images, texts = global_batch()
    image, text = towers(images[rows], texts[rows])
    image.retain_grad()
    text.retain_grad()
    loss = ContrastiveLoss(kind, global_negatives)(image, text, towers.log_scale.exp(), towers.bias)["loss"]
    loss.backward()
    grads = {name: getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for name, p in towers.named_parameters()}
    return {"loss": loss.detach(), "image_grad": image.grad, "text_grad": text.grad, "params": grads}


def sharded_worker(rank: int, world_size: int, out_dir: Path) -> None:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for kind in KINDS:
        towers = PairTowers()
        fully_shard(towers, mesh=init_device_mesh("cpu", (world_size,)))
        results[kind] = loss_and_grads(towers, rows, kind)
        results[kind]["local_loss"] = loss_and_grads(PairTowers(), rows, kind, global_negatives=False)["loss"]
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Both ranks' losses and gradients, for both kinds, from one 2-process run (~5 s)."""
    out_dir = tmp_path_factory.mktemp("global_negatives")
    run_on_ranks(sharded_worker, WORLD, out_dir)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks, kind):
    single = loss_and_grads(PairTowers(), slice(None), kind)
    torch.testing.assert_close(sum(r[kind]["loss"] for r in ranks) / WORLD, single["loss"])
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(result[kind]["image_grad"] / WORLD, single["image_grad"][rows])
        torch.testing.assert_close(result[kind]["text_grad"] / WORLD, single["text_grad"][rows])
        assert result[kind]["params"].keys() == single["params"].keys()
        for name, grad in single["params"].items():
            torch.testing.assert_close(result[kind]["params"][name], grad, msg=f"{kind} {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_without_global_negatives_each_rank_sees_its_own_batch(ranks, kind):
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(result[kind]["local_loss"], loss_and_grads(PairTowers(), rows, kind)["loss"])
        assert not torch.allclose(result[kind]["local_loss"], result[kind]["loss"])  # the switch changes the task

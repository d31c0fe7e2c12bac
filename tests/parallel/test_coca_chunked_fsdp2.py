"""The chunked caption loss under FSDP2 on 2 gloo processes == one process on the concatenated batch.

``CoCaHeads`` sharded as the stage shards it (``apply_fsdp``: each block, then the root, which holds ``lm_head``)
computes the caption loss inside its forward from the decoder's states and the gathered head weight
(``CoCaLoss.caption_head_loss``). Each rank holds 2 of the 4 padded captions, with as many counted positions as
the other, so the mean of the ranks' losses is the single-process loss and the averaged sharded gradients are its
gradients: the head weight's included, which the chunked loss computes in its forward pass.
"""

from pathlib import Path

import torch
from helpers.gloo import run_on_ranks
from torch.distributed.device_mesh import init_device_mesh

from mm_lightning import build_backbone
from mm_lightning.losses import CoCaLoss
from mm_lightning.models import CoCaHeads
from mm_lightning.parallel.parallelize import apply_fsdp

WORLD = 2
MICRO = dict(
    vocab_size=64, d_model=32, n_heads=2, n_unimodal_layers=1, n_multimodal_layers=1, mlp_hidden=64,
    max_text_len=16, vision_dim=24, embed_dim=16, n_image_queries=4, attn_backend="sdpa",
)  # fmt: skip
LENGTHS, PATCHES = (6, 3, 3, 6), (5, 3, 7, 4)  # rank 0: captions 0-1, rank 1: captions 2-3; 7 targets each


def heads() -> CoCaHeads:
    torch.manual_seed(0)
    return build_backbone("coca", "tiny", **MICRO)


def batch(rows: slice) -> dict[str, torch.Tensor]:
    """Captions ``rows`` of the global batch (EOD = 0 last, pad = 1 after it) and their images' packed patches."""
    gen = torch.Generator().manual_seed(3)
    lengths, counts = torch.tensor(LENGTHS)[rows], torch.tensor(PATCHES)[rows]
    caption_ids = torch.randint(5, MICRO["vocab_size"], (len(LENGTHS), 8), generator=gen)[rows]
    features = torch.randn(1, sum(PATCHES), MICRO["vision_dim"], generator=gen)
    first = sum(PATCHES[: rows.start or 0])
    caption_mask = torch.arange(8) < lengths[:, None]  # [b, L]
    caption_ids[torch.arange(len(lengths)), lengths - 1] = 0
    caption_ids[~caption_mask] = 1
    return {
        "image_features": features[:, first : first + int(counts.sum())],
        "image_seq_ids": torch.repeat_interleave(torch.arange(len(counts)), counts)[None],
        "caption_ids": caption_ids,
        "caption_mask": caption_mask,
    }


def caption_loss_and_grads(model: CoCaHeads, rows: slice) -> dict:
    inputs, loss = batch(rows), CoCaLoss(caption_chunk_size=4)
    head_loss = loss.caption_head_loss(inputs["caption_ids"], inputs["caption_mask"])
    caption = model(**inputs, caption_loss=head_loss)["caption_loss"]["loss"]
    caption.backward()
    grads = {name: getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for name, p in model.named_parameters()}
    return {"loss": caption.detach(), "grads": grads}


def sharded_worker(rank: int, world_size: int, out_dir: Path) -> None:
    model = heads()
    apply_fsdp(model, model.blocks, init_device_mesh("cpu", (world_size,)))
    torch.save(caption_loss_and_grads(model, slice(2 * rank, 2 * rank + 2)), out_dir / f"rank{rank}.pt")


def test_chunked_caption_loss_under_fsdp2_equals_one_process(tmp_path):
    run_on_ranks(sharded_worker, WORLD, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    single = caption_loss_and_grads(heads(), slice(0, len(LENGTHS)))
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, single["loss"])
    for result in ranks:
        assert result["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, msg=name)
    assert single["grads"]["lm_head.weight"].abs().sum() > 0

"""Training-step speed of our stage-2a model (ViT + CoCa heads + CoCaLoss) against open_clip's CoCa, alternately.

Shape (issue 16): 64 images of 64x64 pixels, patch 8 (64 patches each), width 192, 3 heads of 64, MLP 4x,
4 ViT blocks, 4 unimodal text blocks, 2 multimodal blocks, 16 pooled image tokens (+1 contrastive query),
vocab 8192, captions of 48 tokens, batch 64, fp32. One step is forward, loss, backward, ``AdamW.step()`` and
``zero_grad()``.

* ours: the modules ``ViTCoCaStage`` builds (``vit`` + ``coca`` backbones, ``CoCaLoss``), its ``coca_loss`` as
  its ``training_step`` calls it (the caption loss chunked from the decoder's states, no whole logits),
  ``build_optimizer`` as its ``configure_optimizers`` does. The 64 images arrive packed into one sequence of
  4,096 patches (NaViT), as the stage's data module delivers them.
  ``--compile ours`` turns on the stage's ``compile`` switch (each block compiled, ``apply_compile``).
* open_clip: ``open_clip.CoCa`` from config dicts of the same shape, ``open_clip.loss.CoCaLoss`` (caption weight
  2, contrastive weight 1), ``torch.optim.AdamW`` as ``open_clip_train`` builds it (no fused kernel).

Both use the exact GELU (open_clip's ``nn.GELU``; our ViT presets default to SigLIP's tanh approximation, which
PyTorch's CPU kernels run about twice as slowly: ``--vit-gelu tanh`` measures it). Differences left in, from the
designs: our ViT adds 2-D RoPE and reads packed patches (no class token, no ``ln_pre``); open_clip's text tower
appends a CLS token (its decoder sees 47 positions, ours 48) and each of its multimodal layers has a second MLP
after the cross-attention (ours one per block: 0.6M fewer parameters); our contrastive loss is SigLIP's sigmoid
(the stage's default), open_clip's the CLIP softmax (both on a 64x64 logit matrix, a negligible cost).

Steps alternate (ours, open_clip, open_clip, ours, ...) after warm-up; medians, images/s and the median of the
per-round ratios ``open_clip / ours`` (> 1: ours is faster) are printed and written as JSON (``--out``)::

    python benchmarks/vit_vs_open_clip.py --threads 2 --out vit_vs_open_clip.json
    python benchmarks/vit_vs_open_clip.py --threads 2 --compile ours --out vit_vs_open_clip_c.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from alternating import measure_alternately, report, summarise
from open_clip.loss import CoCaLoss as OpenClipCoCaLoss

from mm_lightning.ops.patches import pack_patches
from mm_lightning.optim import OptimizerConfig, build_optimizer
from mm_lightning.parallel import apply_compile
from mm_lightning.stages import ViTCoCaStage

IMAGES, IMAGE_SIZE, PATCH, WIDTH, HEADS, MLP = 64, 64, 8, 192, 3, 768
VIT_LAYERS, TEXT_LAYERS, MULTIMODAL_LAYERS, QUERIES, VOCAB, CAPTION_LEN = 4, 4, 2, 16, 8192, 48
LR = 1e-4
StepFn = Callable[[int], None]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (one step of each side per round)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured warm-up steps of each side")
    parser.add_argument("--compile", choices=["none", "ours", "both"], default="none", help="compile each block")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--vit-gelu",
        choices=["none", "tanh"],
        default="none",
        help="our ViT's GELU: exact (none, open_clip's nn.GELU) or SigLIP's tanh approximation (the presets' default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def build_ours(
    images: torch.Tensor, captions: torch.Tensor, compile: bool, gelu: str
) -> tuple[torch.nn.Module, StepFn]:
    """The stage's modules at the benchmark shape and one step of its ``training_step`` + optimizer."""
    stage = ViTCoCaStage(
        vit_overrides={"patch_size": PATCH, "d_model": WIDTH, "n_layers": VIT_LAYERS, "n_heads": HEADS,
                       "mlp_hidden": MLP, "max_patches": (IMAGE_SIZE // PATCH) ** 2, "pos_grid": IMAGE_SIZE // PATCH,
                       "gelu_approximate": gelu},
        coca_overrides={"vocab_size": VOCAB, "d_model": WIDTH, "n_heads": HEADS, "n_unimodal_layers": TEXT_LAYERS,
                        "n_multimodal_layers": MULTIMODAL_LAYERS, "mlp_hidden": MLP, "embed_dim": WIDTH,
                        "n_image_queries": QUERIES, "max_text_len": CAPTION_LEN},
        compile=compile,
    )  # fmt: skip
    if compile:  # what the stage's configure_model does with compile: true
        for backbone in stage.backbones().values():
            apply_compile(backbone.blocks)
    grid = IMAGE_SIZE // PATCH
    patches = images.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # [B, 3, g, g, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(IMAGES, grid * grid, 3 * PATCH * PATCH)
    batch = pack_patches(list(patches), [(grid, grid)] * IMAGES)
    batch.update(caption_ids=captions, caption_mask=torch.ones_like(captions, dtype=torch.bool))
    optimizer = build_optimizer(stage, OptimizerConfig(), lr=LR)

    def step(index: int) -> None:
        stage.coca_loss(batch)[1]["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    return stage, step


def build_open_clip(images: torch.Tensor, captions: torch.Tensor, compile: bool) -> tuple[torch.nn.Module, StepFn]:
    """open_clip's CoCa at the benchmark shape with its CoCaLoss and open_clip_train's AdamW."""
    text = {"context_length": CAPTION_LEN, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS, "mlp_ratio": 4}
    model = open_clip.CoCa(
        embed_dim=WIDTH,
        vision_cfg={"image_size": IMAGE_SIZE, "patch_size": PATCH, "width": WIDTH, "layers": VIT_LAYERS,
                    "head_width": WIDTH // HEADS, "mlp_ratio": 4, "attentional_pool": True,
                    "attn_pooler_queries": QUERIES + 1, "attn_pooler_heads": HEADS, "output_tokens": True},
        text_cfg={**text, "layers": TEXT_LAYERS, "embed_cls": True, "output_tokens": True},
        multimodal_cfg={**text, "layers": MULTIMODAL_LAYERS, "attn_pooler_heads": HEADS},
    )  # fmt: skip
    if compile:
        for tower in (model.visual.transformer, model.text.transformer, model.text_decoder):
            for blocks in ("resblocks", "cross_attn"):
                if hasattr(tower, blocks):
                    apply_compile(getattr(tower, blocks))
    loss = OpenClipCoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)

    def step(index: int) -> None:
        out = model(images, captions)
        clip, caption = loss(out["image_features"], out["text_features"], out["logits"], out["labels"],
                             out["logit_scale"])  # fmt: skip
        (clip + caption).backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, step


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = torch.randn(IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE)
    captions = torch.randint(2, VOCAB, (IMAGES, CAPTION_LEN))
    built = {
        "ours": build_ours(images, captions, args.compile in ("ours", "both"), args.vit_gelu),
        "open_clip": build_open_clip(images, captions, args.compile == "both"),
    }
    times = measure_alternately({name: side[1] for name, side in built.items()}, args.warmup, args.rounds)
    result = {
        **summarise(times, "open_clip", "ours", IMAGES),
        "open_clip": open_clip.__version__,
        "compile": args.compile,
        "vit_gelu": args.vit_gelu,
        "params": {name: sum(p.numel() for p in side[0].parameters()) for name, side in built.items()},
        "warmup": args.warmup,
    }
    mode = {"none": "eager", "ours": "ours compiled per block, open_clip eager", "both": "both compiled per block"}
    params = ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in result["params"].items())
    header = (f"{IMAGES} images {IMAGE_SIZE}x{IMAGE_SIZE}, patch {PATCH}, width {WIDTH}, fp32, {mode[args.compile]}, "
              f"our ViT's GELU {args.vit_gelu}, open_clip {open_clip.__version__}; params {params}")  # fmt: skip
    report(result, header, "side", "images", args.out)


if __name__ == "__main__":
    main()

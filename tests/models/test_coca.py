"""CoCa heads and losses: open_clip's own losses as references, packed images kept apart, presets build."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from mm_lightning import build_backbone, list_backbones
from mm_lightning.checkpoint import META_KEY, load_backbone
from mm_lightning.errors import ConfigError
from mm_lightning.losses import CaptionLoss, CoCaLoss, ContrastiveLoss
from mm_lightning.models import CoCaHeads
from mm_lightning.models.coca import pad_images

MICRO = dict(
    vocab_size=64, d_model=32, n_heads=2, n_unimodal_layers=1, n_multimodal_layers=1, mlp_hidden=64,
    max_text_len=16, vision_dim=24, embed_dim=16, n_image_queries=4, attn_backend="sdpa",
)  # fmt: skip
PATCHES_PER_IMAGE = (5, 3, 7)


def _micro_heads() -> CoCaHeads:
    torch.manual_seed(0)
    return build_backbone("coca", "tiny", **MICRO).eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three packed images with captions of 6, 3 and 8 tokens (EOD = 0 last, pad = 1 after it)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(PATCHES_PER_IMAGE)
    lengths = torch.tensor([6, 3, 8])
    caption_ids = torch.randint(5, MICRO["vocab_size"], (3, 8), generator=gen)
    caption_mask = torch.arange(8) < lengths[:, None]  # [B, L]
    caption_ids[torch.arange(3), lengths - 1] = 0
    caption_ids[~caption_mask] = 1
    return {
        "image_features": torch.randn(1, int(counts.sum()), MICRO["vision_dim"], generator=gen),
        "image_seq_ids": torch.repeat_interleave(torch.arange(3), counts)[None],
        "caption_ids": caption_ids,
        "caption_mask": caption_mask,
    }


def _embeddings(batch: int = 6, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return F.normalize(torch.randn(batch, dim), dim=-1), F.normalize(torch.randn(batch, dim), dim=-1)


def test_sigmoid_loss_matches_open_clip_siglip():
    image, text = _embeddings()
    scale, bias = torch.tensor(math.log(10.0)).exp(), torch.tensor(-10.0)
    ours = ContrastiveLoss("sigmoid")(image, text, scale, bias)
    torch.testing.assert_close(ours["loss"], SigLipLoss()(image, text, scale, bias))
    assert ours["loss"] is ours["contrastive"]


def test_softmax_loss_matches_open_clip_clip():
    image, text = _embeddings()
    scale = torch.tensor(1 / 0.07)
    torch.testing.assert_close(ContrastiveLoss("softmax")(image, text, scale)["loss"], ClipLoss()(image, text, scale))


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_one_element_scale_and_bias_score_as_scalars(kind):
    """``CoCaHeads`` returns its scale and bias as ``[1]`` (FSDP2 shards no 0-d parameter): the same loss, 0-d."""
    image, text = _embeddings()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    scalar = ContrastiveLoss(kind)(image, text, scale, bias)["loss"]
    one_element = ContrastiveLoss(kind)(image, text, scale.reshape(1), bias.reshape(1))["loss"]
    assert one_element.shape == ()
    torch.testing.assert_close(one_element, scalar, rtol=0, atol=0)


def test_unknown_contrastive_kind_fails():
    with pytest.raises(ConfigError, match="choose 'sigmoid' or 'softmax'"):
        ContrastiveLoss("cosine")


def test_caption_loss_by_hand():
    logits = torch.randn(2, 4, 5)
    ids = torch.tensor([[3, 4, 0, 1], [2, 2, 3, 0]])  # caption 0: three tokens then pad
    by_hand = []
    for row, t in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]:  # positions whose next token is real
        by_hand.append(-torch.log_softmax(logits[row, t], dim=-1)[ids[row, t + 1]])
    expected = torch.stack(by_hand).mean()
    torch.testing.assert_close(CaptionLoss()(logits, ids)["caption"], expected)
    torch.testing.assert_close(CaptionLoss()(logits, ids, ids != 1)["loss"], expected)


def test_coca_forward_shapes():
    out = _micro_heads()(**_batch())
    assert out["image_embed"].shape == (3, MICRO["embed_dim"])
    assert out["text_embed"].shape == (3, MICRO["embed_dim"])
    assert out["caption_logits"].shape == (3, 8, MICRO["vocab_size"])
    torch.testing.assert_close(out["image_embed"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["logit_scale"], torch.tensor([10.0]))
    torch.testing.assert_close(out["logit_bias"].detach(), torch.tensor([-10.0]))


@torch.no_grad()
def test_pooler_keeps_packed_images_apart():
    heads, batch = _micro_heads(), _batch()
    before = heads(**batch)
    second = batch["image_seq_ids"][0] == 1
    batch["image_features"][0, second] = torch.randn(int(second.sum()), MICRO["vision_dim"])
    after = heads(**batch)
    for key in ("image_embed", "caption_logits"):
        torch.testing.assert_close(after[key][[0, 2]], before[key][[0, 2]])
        assert not torch.allclose(after[key][1], before[key][1])


@torch.no_grad()
def test_packed_images_pool_as_if_alone():
    heads, batch = _micro_heads(), _batch()
    packed = heads(**batch)["image_embed"]  # [3, E]
    second = batch["image_seq_ids"][0] == 1
    alone = heads(
        batch["image_features"][:, second],
        torch.zeros(1, int(second.sum()), dtype=torch.long),
        batch["caption_ids"][1:2],
        batch["caption_mask"][1:2],
    )["image_embed"]
    torch.testing.assert_close(alone[0], packed[1])


def test_pad_images_drops_padding_patches():
    features = torch.arange(6.0).view(1, 6, 1)
    padded, mask = pad_images(features, torch.tensor([[0, 0, 1, 1, 1, -1]]), n_images=2)
    assert padded[..., 0].tolist() == [[0.0, 1.0, 0.0], [2.0, 3.0, 4.0]]
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="at least one patch"):
        pad_images(features, torch.zeros(1, 6, dtype=torch.long), n_images=2)


@torch.no_grad()
def test_text_embedding_ignores_padding():
    heads, batch = _micro_heads(), _batch()
    before = heads(**batch)["text_embed"]
    batch["caption_ids"][~batch["caption_mask"]] = 7  # garbage after each caption's EOD
    torch.testing.assert_close(heads(**batch)["text_embed"], before)


def test_coca_loss_terms_and_gradients_reach_scale_and_bias():
    heads, batch = _micro_heads().train(), _batch()
    losses = CoCaLoss(contrastive="sigmoid", caption_weight=2.0)(
        heads(**batch), batch["caption_ids"], batch["caption_mask"]
    )
    assert set(losses) == {"contrastive", "caption", "loss"}
    torch.testing.assert_close(losses["loss"], losses["contrastive"] + 2.0 * losses["caption"])
    losses["loss"].backward()
    for name in ("logit_scale", "logit_bias", "pooler.queries", "embed.weight", "lm_head.weight"):
        grad = heads.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def _loss_and_grads(heads: CoCaHeads, loss: CoCaLoss, batch: dict, chunked: bool, mask: torch.Tensor | None) -> tuple:
    heads.zero_grad()
    ids = batch["caption_ids"]
    caption_loss = loss.caption_head_loss(ids, mask) if chunked else None
    out = heads(**batch, caption_loss=caption_loss)
    assert ("caption_logits" in out) is not chunked and ("caption_loss" in out) is chunked
    terms = loss(out, ids, mask)
    terms["loss"].backward()
    return terms, {name: param.grad.clone() for name, param in heads.named_parameters()}


@pytest.mark.parametrize("chunk_size", [0, 4, 1024])
@pytest.mark.parametrize("masked", [True, False])
def test_chunked_caption_loss_equals_the_logits_path(chunk_size, masked):
    """From the decoder's states and the head weight, chunked or not, the caption loss and the gradients of every CoCa
    parameter equal the whole logits'; padded captions (6 and 3 of 8 tokens) skip the same positions."""
    heads, batch = _micro_heads().train(), _batch()
    loss = CoCaLoss(contrastive="sigmoid", caption_weight=2.0, caption_chunk_size=chunk_size)
    mask = batch["caption_mask"] if masked else None  # None: every token but the pad id counts
    whole, whole_grads = _loss_and_grads(heads, loss, batch, chunked=False, mask=mask)
    chunked, chunked_grads = _loss_and_grads(heads, loss, batch, chunked=True, mask=mask)
    for term in ("contrastive", "caption", "loss"):
        torch.testing.assert_close(chunked[term], whole[term], msg=term)
    assert whole_grads.keys() == chunked_grads.keys() and len(whole_grads) == len(list(heads.parameters()))
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, msg=name)


def test_chunked_caption_loss_counts_only_real_next_tokens():
    """Garbage in the captions' padding, or in the states from each caption's EOD on, changes nothing: those
    positions have no next token to predict and never reach the head."""
    states, weight = torch.randn(3, 8, 32, requires_grad=True), torch.randn(64, 32)
    batch, loss = _batch(), CaptionLoss(chunk_size=5)
    terms = loss.from_hidden(states, weight, batch["caption_ids"], batch["caption_mask"])
    terms["caption"].backward()
    noisy, garbage = states.detach().clone(), batch["caption_ids"].masked_fill(~batch["caption_mask"], 7)
    for row, eod in enumerate((5, 2, 7)):  # captions of 6, 3 and 8 tokens
        noisy[row, eod:] = 1e3
        assert states.grad[row, eod:].abs().sum() == 0 and states.grad[row, :eod].abs().sum() > 0
    torch.testing.assert_close(loss.from_hidden(noisy, weight, garbage, batch["caption_mask"]), terms)


def test_a_state_dict_with_0d_scale_and_bias_still_loads(tmp_path):
    """Checkpoints written before FSDP2 support stored the logit scale and bias 0-d; they load as ``[1]``."""
    old = _micro_heads().state_dict()
    old["logit_scale"], old["logit_bias"] = torch.tensor(2.5), torch.tensor(-7.0)  # 0-d, as they were saved
    heads = build_backbone("coca", "tiny", **MICRO)
    heads.load_state_dict(old)  # strict
    assert heads.logit_scale.shape == heads.logit_bias.shape == (1,)
    assert heads.logit_scale.item() == 2.5 and heads.logit_bias.item() == -7.0
    # and through a stage checkpoint, as the API and later stages read the backbone
    config = dataclasses.asdict(heads.config)
    state = {f"coca.{name}": value for name, value in old.items()}
    torch.save({META_KEY: {"backbones": {"coca": config}}, "state_dict": state}, tmp_path / "old.ckpt")
    loaded = load_backbone(tmp_path / "old.ckpt", "coca")
    for name, value in _micro_heads().state_dict().items():
        expected = old[name].reshape(1) if name in ("logit_scale", "logit_bias") else value
        torch.testing.assert_close(loaded.state_dict()[name], expected, rtol=0, atol=0, msg=name)


def test_every_coca_preset_builds_on_meta():
    assert set(list_backbones()["coca"]) >= {"tiny", "small", "so400m"}
    for name in list_backbones()["coca"]:
        with torch.device("meta"):
            heads = build_backbone("coca", name)
        assert heads.pooler.attn.kv.in_features == heads.config.vision_dim


def test_captions_longer_than_max_text_len_fail():
    batch = _batch()
    batch["caption_ids"] = batch["caption_ids"].repeat(1, 3)
    batch["caption_mask"] = batch["caption_mask"].repeat(1, 3)
    with pytest.raises(ValueError, match="max_text_len=16"):
        _micro_heads()(**batch)


def _readout_heads(**fields) -> CoCaHeads:
    torch.manual_seed(0)
    return build_backbone("coca", "tiny", **{**MICRO, **fields}).eval()


@torch.no_grad()
def test_max_image_pool_is_the_strongest_normalised_patch_of_each_image():
    heads, batch = _readout_heads(image_pool="max"), _batch()
    out = heads(**batch)
    for image, count in enumerate(PATCHES_PER_IMAGE):
        own = batch["image_features"][0, batch["image_seq_ids"][0] == image]  # [count, Dv]
        assert own.shape[0] == count
        expected = F.normalize(heads.image_proj(heads.image_norm(own).amax(dim=0)), dim=-1)
        torch.testing.assert_close(out["image_embed"][image], expected)
    # one image's patches change only that image's embedding, and the decoder still reads the pooler's queries
    second = batch["image_seq_ids"][0] == 1
    batch["image_features"][0, second] = torch.randn(int(second.sum()), MICRO["vision_dim"])
    after = heads(**batch)
    torch.testing.assert_close(after["image_embed"][[0, 2]], out["image_embed"][[0, 2]])
    assert not torch.allclose(after["image_embed"][1], out["image_embed"][1])
    assert out["caption_logits"].shape == (3, 8, MICRO["vocab_size"])


@torch.no_grad()
def test_mean_text_pool_reads_every_caption_token_and_ignores_padding():
    heads, batch = _readout_heads(text_pool="mean"), _batch()
    states, embed = heads.encode_text(batch["caption_ids"], batch["caption_mask"])
    for row, length in enumerate((6, 3, 8)):
        expected = F.normalize(heads.text_proj(heads.text_norm(states[row, :length].mean(dim=0))), dim=-1)
        torch.testing.assert_close(embed[row], expected)
    # the first token matters to the mean readout (with ``last`` only through attention); padding never does
    padded = batch["caption_ids"].clone()
    padded[1, 3:] = 7  # the second caption's padding slots
    torch.testing.assert_close(heads.encode_text(padded, batch["caption_mask"])[1][1], embed[1])


def test_readout_options_are_checked():
    with pytest.raises(ConfigError, match="image_pool"):
        build_backbone("coca", "tiny", **{**MICRO, "image_pool": "mean"})
    with pytest.raises(ConfigError, match="text_pool"):
        build_backbone("coca", "tiny", **{**MICRO, "text_pool": "first"})

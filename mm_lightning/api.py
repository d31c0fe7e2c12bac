"""The Python API for notebooks and scripts: any stage checkpoint as a model object.

    >>> import mm_lightning as mml
    >>> model = mml.load("runs/pipelines/demo/long_context/checkpoints/last.ckpt")
    >>> model.caption("scene.png")                                   # VLM stages: greedy caption
    >>> model.ask("scene.png", "What colour is the background?")     # one question about an image
    >>> model.score("Fellow citizens of the Senate")                 # mean next-token loss (nats)
    >>> vit = mml.load("runs/pipelines/demo/vit/checkpoints/last.ckpt")
    >>> vit.classify("scene.png", ["red apple", "bee", "fish"])     # zero-shot, ViT stage (CoCa heads)

The checkpoint says everything: backbones from the configs it recorded, its tokenizer, how its stage cut images into
patches; nothing is guessed. Fine-tuning on a list of conversations needs no datamodule::

    >>> module = model.finetune_module(lora=mml.LoRAConfig(rank=8))   # an SFTStage (a LightningModule)
    >>> loader = model.chat_loader([(image, [{"role": "user", "content": "What colour is it?"},
    ...                                      {"role": "assistant", "content": "blue"}]), ...])
    >>> lightning.Trainer(max_steps=50).fit(module, train_dataloaders=loader)
    >>> model = model.with_weights(module)                           # the fine-tuned (merged) weights

Images are PIL images or file paths; a conversation is a list of ``{"role", "content"}`` dicts whose content is a
string or a list of strings and images (``{"type": "image", "image": ...}`` and ``{"type": "text", "text": ...}``
parts work too).
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mm_lightning import tokenizer as tokenizer_lib
from mm_lightning.chat import Message, encode_conversation, prompt_ids
from mm_lightning.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    image_preprocessing,
    load_backbone,
    load_checkpoint,
    recorded_tokenizer,
)
from mm_lightning.data.chat import collate_chat
from mm_lightning.demo import demo_tokenizer
from mm_lightning.errors import ConfigError
from mm_lightning.generation.caption import caption_images
from mm_lightning.generation.chat import answer_prompts
from mm_lightning.media.images import image_patches
from mm_lightning.media.interleave import MixSample
from mm_lightning.models.lora import LoRAConfig, find_lora_layers, merge_lora
from mm_lightning.models.vlm import VLM
from mm_lightning.ops.patches import pack_patches
from mm_lightning.stages.sft import SFTStage
from mm_lightning.tokenizer import IMAGE_ID

ImageLike = Image.Image | str | Path
Conversation = Sequence[dict[str, Any]]


class Model:
    """A stage checkpoint loaded for inference (eval mode, no gradients), with what it recorded.

    Attributes:
        path: the checkpoint file.
        stage: the stage class that wrote it (``"JointStage"``, ``"ViTCoCaStage"``, ...).
        tokenizer: the tokenizer its data was tokenized with.
        backbones: ``{"llm": ..., "vit": ..., "projector": ..., "coca": ...}``, those the checkpoint holds.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        meta = checkpoint_meta(load_checkpoint(self.path), self.path)
        self.stage = str(meta.get("stage"))
        self.device = torch.device(device)
        self.backbones = {kind: load_backbone(self.path, kind).to(self.device).eval() for kind in meta["backbones"]}
        self.tokenizer = recorded_tokenizer(meta)
        if self.tokenizer is None:  # written before checkpoints recorded their tokenizer: the demo's was the only one
            self.tokenizer = tokenizer_lib.load_tokenizer(demo_tokenizer())
        self.preprocessing = image_preprocessing(meta) if "vit" in self.backbones else None

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, stage={self.stage}, backbones={sorted(self.backbones)})"

    # --- generation ----------------------------------------------------------------------------------------------

    @property
    def vlm(self) -> VLM:
        """The LLM, ViT and projector as one model (VLM stages only)."""
        missing = [kind for kind in ("llm", "vit", "projector") if kind not in self.backbones]
        if missing:
            raise ConfigError(f"{self.path} ({self.stage}) has no {', '.join(missing)}: it is not a VLM checkpoint")
        return VLM(self.backbones["llm"], self.backbones["vit"], self.backbones["projector"], IMAGE_ID)

    def caption(self, image: ImageLike, max_new_tokens: int = 48) -> str:
        """A greedy caption of one image (the alignment and joint stages' task)."""
        return caption_images(self.vlm, self.tokenizer, [_open(image)], self.preprocessing, max_new_tokens)[0]

    def ask(self, image: ImageLike | None, question: str, max_new_tokens: int = 16) -> str:
        """The greedy answer to one question about an image (or none), in the chat template."""
        content = [question] if image is None else [image, question]
        return self.chat([{"role": "user", "content": content}], max_new_tokens)

    def chat(self, conversation: Conversation, max_new_tokens: int = 16) -> str:
        """The assistant's greedy reply to a conversation (its last turn a user's)."""
        messages, images = to_messages(conversation)
        if not messages or messages[-1].role == "assistant":
            raise ConfigError("chat() continues a conversation whose last turn is the user's")
        ids = prompt_ids(self.tokenizer, messages)
        patches = [self._patches(image) for image in images]
        return answer_prompts(self.vlm, self.tokenizer, [(ids, patches)], max_new_tokens)[0]

    @torch.no_grad()
    def score(self, text: str) -> float:
        """Mean next-token loss (nats per token) of ``text`` as one document: lower is more likely."""
        ids = [tokenizer_lib.eod_id(self.tokenizer), *tokenizer_lib.encode(self.tokenizer, text)]
        if len(ids) < 2:
            raise ConfigError("score() needs a text of at least one token")
        tokens = torch.tensor([ids], device=self.device)
        logits = self._llm()(input_ids=tokens[:, :-1])  # [1, T, V]
        return float(F.cross_entropy(logits[0].float(), tokens[0, 1:]))

    # --- embeddings (ViT stage) ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """L2-normalised image embeddings ``[n, E]`` from the ViT and the CoCa image head (ViT stage checkpoints)."""
        vit, coca = self._vit_and_coca()
        pieces = [self._patches(image) for image in images]
        packed = pack_patches([p for p, _ in pieces], [g for _, g in pieces])
        features = vit(packed["patches"].to(self.device), packed["grid_hw"].to(self.device),
                       packed["seq_ids"].to(self.device))  # fmt: skip
        return coca.encode_image(features, packed["seq_ids"].to(self.device), len(pieces))[1].float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[n, E]`` from the CoCa text tower, captions framed as in training."""
        _, coca = self._vit_and_coca()
        eod = tokenizer_lib.eod_id(self.tokenizer)
        longest = coca.config.max_text_len - 2
        rows = [[eod, *tokenizer_lib.encode(self.tokenizer, text)[:longest], eod] for text in texts]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), tokenizer_lib.PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for index, row in enumerate(rows):
            ids[index, : len(row)], mask[index, : len(row)] = torch.tensor(row), True
        return coca.encode_text(ids.to(self.device), mask.to(self.device))[1].float().cpu()

    def classify(self, image: ImageLike, labels: Sequence[str], template: str = "a {} in the center") -> list[float]:
        """Zero-shot probabilities of ``labels`` for one image: softmax over the label captions' similarities."""
        image_embed = self.encode_image([image])  # [1, E]
        text_embed = self.encode_text([template.format(label) for label in labels])  # [K, E]
        scale = float(self.backbones["coca"].logit_scale.detach().exp().clamp(max=100.0))
        return (scale * image_embed @ text_embed.T).softmax(dim=-1)[0].tolist()

    # --- fine-tuning ----------------------------------------------------------------------------------------------

    def finetune_module(self, lora: LoRAConfig | None = LoRAConfig(), **kwargs: Any) -> SFTStage:  # noqa: B008
        """An :class:`~mm_lightning.stages.SFTStage` from this checkpoint, for a Lightning ``Trainer``.

        Args:
            lora: LoRA adapters (the default: rank 8 on the LLM's projections); ``None`` fine-tunes the LLM in full.
            **kwargs: other :class:`SFTStage` arguments (``optimizer``, ``schedule``, ...).
        """
        self.vlm  # a clear error for a checkpoint without a VLM
        return SFTStage(str(self.path), lora=lora, exact_match_prompts=0, **kwargs)

    def chat_loader(self, examples: Sequence[tuple[ImageLike | None, Conversation]], batch_size: int = 8,
                    seq_len: int = 256, shuffle: bool = True) -> DataLoader:  # fmt: skip
        """A ``DataLoader`` of packed chat batches (loss on the assistant's answers) from ``(image, conversation)``
        pairs: the image (or ``None``) comes before the first user turn's text."""
        samples = []
        for index, (image, conversation) in enumerate(examples):
            turns = list(conversation)
            if image is not None:
                first = next((i for i, turn in enumerate(turns) if turn.get("role") == "user"), None)
                if first is None:
                    raise ConfigError(f"example {index}: an image needs a user turn to go with")
                turns[first] = {**turns[first], "content": [image, *_parts(turns[first].get("content"))]}
            messages, images = to_messages(turns)
            ids, targets = encode_conversation(self.tokenizer, messages)
            if not any(targets):
                raise ConfigError(f"example {index} has no assistant answer to learn")
            samples.append((MixSample(token_ids=ids, images=[self._patches(i) for i in images], loss_mask=targets,
                                      source="examples", eod_ends_document=False), index))  # fmt: skip
        merge = self.backbones["projector"].config.shuffle_factor
        collate = partial(collate_chat, seq_len=seq_len, merge_factor=merge, rows_per_batch=None)
        return DataLoader(samples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)

    def with_weights(self, module: torch.nn.Module) -> Model:
        """This model with the backbones of a trained stage module (LoRA adapters merged into copies)."""
        from_module = {kind: getattr(module, kind) for kind in self.backbones if hasattr(module, kind)}
        copy = object.__new__(Model)
        copy.__dict__.update(self.__dict__)
        copy.backbones = dict(self.backbones)
        for kind, backbone in from_module.items():
            copy.backbones[kind] = _merged_copy(backbone).to(self.device).eval()
        return copy

    # --- helpers ----------------------------------------------------------------------------------------------------

    def _patches(self, image: ImageLike) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.preprocessing is None:
            raise ConfigError(f"{self.path} ({self.stage}) has no ViT: it takes no images")
        return image_patches(_open(image), self.preprocessing.patch_size, self.preprocessing.max_patches)

    def _llm(self) -> torch.nn.Module:
        if "llm" not in self.backbones:
            raise ConfigError(f"{self.path} ({self.stage}) has no LLM")
        return self.backbones["llm"]

    def _vit_and_coca(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        if "coca" not in self.backbones:
            raise ConfigError(
                f"{self.path} ({self.stage}) has no CoCa heads: embeddings come from a ViT stage checkpoint"
            )
        return self.backbones["vit"], self.backbones["coca"]


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Load any stage checkpoint as a :class:`Model`."""
    if not Path(path).is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist (or is a folder: pass the .ckpt file).")
    return Model(path, device)


def to_messages(conversation: Conversation) -> tuple[list[Message], list[Image.Image]]:
    """``[{"role", "content"}]`` dicts as :class:`~mm_lightning.chat.Message` objects and their images in order."""
    messages, images = [], []
    for index, turn in enumerate(conversation):
        if not isinstance(turn, dict) or "role" not in turn:
            raise ConfigError(f"turn {index} of the conversation is not a {{'role', 'content'}} dict: {turn!r}")
        content: list[str | int] = []
        for part in _parts(turn.get("content")):
            if isinstance(part, str):
                content.append(part)
            else:
                images.append(_open(part))
                content.append(len(images) - 1)
        try:
            messages.append(Message(turn["role"], tuple(content)))
        except ValueError as error:
            raise ConfigError(f"turn {index}: {error}") from None
    return messages, images


def _parts(content: Any) -> list[Any]:
    if content is None:
        return []
    if isinstance(content, str | Image.Image | Path):
        return [content]
    parts = []
    for part in content:
        if isinstance(part, dict):
            kind = part.get("type")
            if kind == "text":
                parts.append(str(part.get("text", "")))
            elif kind == "image":
                parts.append(part.get("image"))
            else:
                raise ConfigError(f"a content part of type {kind!r}; use 'text' or 'image'")
        else:
            parts.append(part)
    return parts


def _open(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"image {path} does not exist")
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    raise ConfigError(f"an image must be a PIL image or a file path, got {type(image).__name__}")


def _merged_copy(module: torch.nn.Module) -> torch.nn.Module:
    copy = deepcopy(module)
    if find_lora_layers(copy):
        merge_lora(copy)
    return copy

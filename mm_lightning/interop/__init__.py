"""Weights in and out of other frameworks' layouts: the ``mm-lightning convert`` command (``interop/cli.py``).

* ``llama_layout``: the LLM's config and parameter names in Hugging Face's Llama layout; ``llama``: export and import
  of Llama folders (``tokenizer_files``: their tokenizer files);
* ``siglip_hf`` and ``siglip_open_clip``: SigLIP vision towers from Hugging Face and open_clip as the ViT;
  ``vision``: the ViT import (position table, 2-D RoPE switch) and the ViT + projector export;
* ``files``: config.json and safetensors reading/writing, and the one-line :class:`~.files.ConversionError`;
  ``checkpoints``: converted weights as a checkpoint the stages start from.

Nothing here downloads; ``transformers`` is needed by none of it (the ``hf`` extra installs it for comparing).
"""

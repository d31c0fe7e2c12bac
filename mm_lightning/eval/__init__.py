"""Evaluations that prove a stage's capability, not its loss, each beside its chance or baseline.

``perplexity``: any checkpoint's LLM on the same held-out rows (``mm-lightning evaluate``, ``cli``);
``retrieval``: zero-shot recall@k of the ViT stages; ``emoji_probe``: emoji identity on single-emoji probe
images, where the background cannot help (the ViT stage); ``caption_checks``: the image-use gap and the caption
accuracy of greedy generation (every stage with a VLM); ``passkey``: passkey retrieval in long text and a needle
frame in long video (stage 1 and the long-context stage). The callbacks in :mod:`mm_lightning.callbacks` run them
at every validation. ``predictions``: the records ``mm-lightning predict`` writes for each stage. ``caption_grid``:
images beside their true and generated (or retrieved) captions as one figure, for the pipeline's ``captions.png``
and the checks' TensorBoard images.
"""

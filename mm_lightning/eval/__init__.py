"""Evaluations that prove a stage's capability, not its loss: held-out perplexity, retrieval, passkey.

``perplexity`` scores any checkpoint's LLM on the same held-out rows (``mm-lightning evaluate``, ``cli``);
``retrieval`` is zero-shot recall@k for the ViT stages; ``passkey`` builds and scores passkey-retrieval prompts
(text, and a needle frame in a video) for the long-context stage, run at every validation by
:class:`~mm_lightning.callbacks.PasskeyEvaluation`.
"""

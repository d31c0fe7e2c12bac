"""Text generation: KV-cache decoding (``decode``, no Lightning) and the ``mm-lightning generate`` command (``cli``)."""

"""Offline preparation: raw files into litdata shards, run once before training (``mm-lightning prepare``).

``text_readers`` and ``image_readers`` read raw corpora record by record (counting and skipping bad records);
``text`` (tokenizer + token shards), ``image_text`` (image-caption pairs), ``video`` (sampled frames), ``docs``
(PDF pages with their text) and ``chat`` (conversations for fine-tuning) write the shards the datamodules in
:mod:`mm_lightning.data` stream; ``media`` is the scan-decode-split-write machinery the media preparations share;
``cli`` is the ``prepare`` command. Nothing in this package imports Lightning (a test checks it), so preparing data
needs neither a GPU nor the trainer.
"""

"""The parts of the joint stages' :class:`~mm_lightning.data.mixture_datamodule.MixtureDataModule`.

``plan``: which source each sample comes from, a pure function of the seed and the sample index (the multimodal
share schedule and its quota rule); ``sources`` and ``long_sources``: what a sample of each kind of source is
(text blocks, image-caption pairs, video clips, interleaved documents, long text), built by kind from YAML specs;
``packing``: samples into fixed-length rows with their images' patches; ``filler``: training text that fills the
room the samples leave at the end of a row.
"""

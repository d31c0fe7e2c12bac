"""Sample codecs shared by the offline preparation and the runtime data path: images, video, documents.

``images`` turns an image into the normalised pixels and patches the ViT sees (one function for every path);
``interleave`` puts image spans into token streams (:class:`~mm_lightning.media.interleave.MixSample`) and packs
several images into one shard field; ``video`` samples and decodes frames (PyAV, the ``video`` extra);
``documents`` renders PDF pages with their text (pypdfium2, the ``docs`` extra). No Lightning here.
"""

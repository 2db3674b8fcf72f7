"""Data sources and input pipelines for the harness (grain).

Sources (records of ``{"image", "label"}``): ``fashion_mnist``, ``cifar10`` (uint8 arrays) and
``imagenet`` (encoded JPEG bytes, from a folder tree or TFDS ArrayRecords via ``tf_example``).
Transforms following the official NFNet pipeline: ``preprocess`` (decode/crop/flip/resize,
normalise; bicubic kernels in ``resize``), ``mix`` (MixUp + CutMix) and ``randaugment``.
"""

"""Training of dcnviz's own small models (``dcnviz train``): targets, losses, the seeded resumable loop.

``train(TrainConfig(model, data, ...), out)`` trains a registered model on a VOC-layout folder and writes
its weights to ``out`` (see :mod:`dcnviz.train.loop`).
"""
from dcnviz.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]

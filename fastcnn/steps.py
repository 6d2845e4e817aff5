"""The run order of a list of layers: which layers run as one fused step.

:class:`fastcnn.Sequential` (for training and its blocks) and the inference plan both run layers in
the order :func:`fuse` gives; this module is the one place for the rules.
"""
from __future__ import annotations

from .layers import BatchNorm, BatchNormReLU, Conv2D, ConvMaxPool, ConvReLU, Layer, MaxPool2D, ReLU


def fuse(layers: list[Layer]) -> list[Layer]:
    """The steps that run ``layers``:

    - the layers as given, except that a ReLU directly followed by a MaxPool2D runs after it. ReLU is
      monotone, so it commutes with a maximum: the outputs and every gradient are the same, bit for
      bit, and the ReLU works on the pooled, smaller tensor;
    - then a Conv2D directly followed by a MaxPool2D (with the same ``backend``), and by the ReLU after
      that if there is one, runs as one step, :func:`fastcnn.functional.conv2d_max_pool2d`, which need
      not write the full-size conv output;
    - a Conv2D directly followed by a ReLU (no pool between) runs as one step,
      :func:`fastcnn.functional.conv2d_relu`, which applies the ReLU as it writes the conv's output and
      its gate as it reads the output gradient (no pass of its own, forward or backward);
    - a batch norm directly followed by a ReLU runs as one step, :func:`fastcnn.functional.batch_norm`
      with ``relu=True`` (one pass over the data instead of two, forward and backward).
    """
    order = list(layers)
    for i in range(len(order) - 1):
        if type(order[i]) is ReLU and type(order[i + 1]) is MaxPool2D:
            order[i], order[i + 1] = order[i + 1], order[i]
    steps: list[Layer] = []
    for layer in order:
        last = steps[-1] if steps else None
        if type(layer) is MaxPool2D and type(last) is Conv2D and last.fuses and last.backend == layer.backend:
            steps[-1] = ConvMaxPool(last, layer)
        elif type(layer) is ReLU and type(last) is ConvMaxPool and last.relu is None:
            steps[-1] = ConvMaxPool(last.conv, last.pool, layer)
        elif type(layer) is ReLU and type(last) is Conv2D and last.fuses:
            steps[-1] = ConvReLU(last, layer)
        elif type(layer) is ReLU and isinstance(last, BatchNorm):
            steps[-1] = BatchNormReLU(last, layer)
        else:
            steps.append(layer)
    return steps

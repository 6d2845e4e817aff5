"""What a newcomer reads: the licence, help(fastcnn), the layers' output sizes and examples, schedules."""
import doctest
import math
from pathlib import Path

import pytest

import fastcnn
from fastcnn import layers, optim

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_mit_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text and "the fastcnn authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_package_docstring_orients_a_newcomer():
    doc = fastcnn.__doc__
    for needed in ("Sequential", "fit", "predict", "logits", "fastcnn train", "fastcnn.layers", "fastcnn.callbacks",
                   "fastcnn.images", "help(fastcnn.Conv2D)"):
        assert needed in doc, needed


@pytest.mark.parametrize("module", [layers, optim], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    """The output sizes the layer docstrings show are what the layers compute."""
    result = doctest.testmod(module, extraglobs={"math": math, **vars(module)}, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("layer", [layers.Conv2D, layers.MaxPool2D, layers.AvgPool2D, layers.Dense, layers.Flatten,
                                   layers.Dropout, layers.BatchNorm2D, layers.BatchNorm1D])
def test_every_layer_shows_its_output_size_and_an_example(layer):
    doc = layer.__doc__
    assert "Examples" in doc and ">>> " in doc and "output" in doc.lower()
    if layer in (layers.Conv2D, layers.MaxPool2D, layers.AvgPool2D):
        assert "H_out = floor(" in doc


def test_schedules_say_they_count_optimizer_steps():
    for schedule in (optim.StepLR, optim.CosineLR, optim.OneCycleLR):
        assert "optimizer steps" in " ".join(schedule.__doc__.split()), schedule.__name__
    assert "ceil(N / batch_size)" in optim.__doc__

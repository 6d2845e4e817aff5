"""The pictures of a training run: the confusion matrix counts every test image; epoch axes read well."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the `plot` extra, part of `dev`
from fastcnn import plots  # noqa: E402


def test_confusion_matrix_counts_every_pair():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 10, 10_000), rng.integers(0, 10, 10_000)
    matrix = plots.confusion_matrix(labels, predicted)
    expected = np.zeros((10, 10), int)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == 10_000
    with pytest.raises(ValueError, match="two 1-D arrays of one length"):
        plots.confusion_matrix(labels, predicted[:5])


def test_confusion_matrix_picture_is_of_the_whole_test_set(tmp_path, monkeypatch):
    labels = np.repeat(np.arange(10), 1000)
    predicted = labels.copy()
    predicted[:161] = 8  # 161 mistakes, like a 98.4% model
    titles, panels = [], []
    real_suptitle = plots.pyplot().Figure.suptitle

    def suptitle(fig, text, *args, **kwargs):
        titles.append(text)
        panels.extend(ax.get_title() for ax in fig.axes)
        return real_suptitle(fig, text, *args, **kwargs)

    monkeypatch.setattr(plots.pyplot().Figure, "suptitle", suptitle)
    path = plots.plot_confusion_matrix(labels, predicted, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles == ["confusion matrix, test set: 10,000 images, 161 wrong"]
    assert panels == ["counts", "% of each true class (row)"]


@pytest.mark.parametrize("epochs", [1, 2, 7, 30, 100])
def test_epoch_ticks_are_integers_and_few(epochs):
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot(np.arange(1, epochs + 1), np.linspace(1, 0, epochs), "o-")
    plots._epoch_axis(ax, epochs)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert (lo, hi) == (0.5, epochs + 0.5)  # one epoch is a point in the middle, not on an edge
    assert 1 <= len(ticks) <= 11
    assert all(float(t).is_integer() and 1 <= t <= epochs for t in ticks)
    assert epochs in ticks or epochs > 10  # short runs show their last epoch


def test_save_all_writes_the_three_pictures(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((100, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 100)
    history = {"loss": [1.0], "accuracy": [0.5], "val_loss": [1.1], "val_accuracy": [0.45]}
    paths = plots.save_all(tmp_path / "out", history, images, labels, labels)
    assert [p.name for p in paths] == ["training_curves.png", "test_digits.png", "confusion_matrix.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temporary files
    with pytest.raises(FileNotFoundError):
        plots.save_all(tmp_path / "missing" / "out", history, images, labels, labels)

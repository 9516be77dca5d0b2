"""helpers/probe.py: a network's first pass at every image size the recipe feeds it, before any training.
A network that cannot take the small images of progressive resizing trains without them, saying why; any
other failure, or an output that cannot be trained on, is one line naming the layer and the shapes."""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import SMALL_FAST
from helpers.probe import NetworkError
from helpers.run import Trial


class Student(nn.Module):
    """Conv blocks and three max-pools, as students write them; `head` decides the end of the network."""

    def __init__(self, head="avgpool4"):
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16))
        self.pool1 = nn.MaxPool2d(2, 2)
        self.convblock2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(), nn.BatchNorm2d(16))
        self.pool2 = nn.MaxPool2d(2, 2)
        self.convblock3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1),
                                        nn.ReLU(), nn.BatchNorm2d(32))
        self.pool3 = nn.MaxPool2d(2, 2)
        self.head = head
        self.gap = nn.AvgPool2d(4)          # sized for 32 px images: 4x4 maps after three pools
        self.fc = nn.Linear(32 * 4 * 4, 10)  # likewise
        self.out = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = self.pool3(self.convblock3(self.pool2(self.convblock2(self.pool1(self.convblock1(x))))))
        if self.head == "avgpool4":
            return F.log_softmax(self.out(self.gap(x)).flatten(1), dim=1)
        if self.head == "linear":
            return self.fc(x.flatten(1))                       # logits
        if self.head == "softmax":
            return F.softmax(self.out(self.gap(x)).flatten(1), dim=1)
        if self.head == "unflattened":
            return self.out(self.gap(x))                       # (N, 10, 1, 1)
        if self.head == "nan":
            return self.out(self.gap(x)).flatten(1) * float("nan")
        raise ValueError(self.head)


def trial(head, **kw):
    lines = []
    t = Trial(**dict(SMALL_FAST, model=lambda: Student(head), enforce_rules=False, log=lines.append, **kw))
    return t, lines


@pytest.mark.parametrize("head, layer", [("avgpool4", "gap (AvgPool2d) (input 8x32x2x2)"),
                                         ("linear", "fc (Linear) (input 8x128)")])
def test_a_network_sized_for_32px_trains_without_progressive_resizing(head, layer, tmp_path):
    t, lines = trial(head, out_dir=tmp_path / "run")
    assert t.recipe.resize_start == 16  # fast trains epoch 1 on 16 px images
    t.setup().fit(stop_after=1)
    note = next(line for line in lines if "progressive resizing is off" in line)
    assert f"cannot take 16 px images ({layer}: RuntimeError" in note
    assert "first epoch trains at 32 px instead, about 1.6x the training time" in note
    assert t.recipe.resize_start == 0 and t.trainer.recipe.resize_start == 0
    # a resume builds the same recipe (resizing off again), so it continues instead of refusing
    again, _ = trial(head, out_dir=tmp_path / "run")
    record = again.run(resume=True)
    assert record.config["recipe"]["resize_start"] == 0 and len(record.history) == SMALL_FAST["epochs"]


def test_logits_and_log_probabilities_are_recorded_as_such():
    assert trial("linear")[0].setup().run_info["output"] == "logits"
    assert trial("avgpool4", resize_start=0, resize_epochs=0)[0].setup().run_info["output"] == "log-probabilities"


@pytest.mark.parametrize("head, words", [
    ("softmax", "returns probabilities (a softmax at the end)"),
    ("unflattened", "returns shape 8x10x1x1 for 8 images; training needs (8, 10)"),
    ("nan", "returns NaN or infinite scores before any training"),
])
def test_an_output_that_cannot_be_trained_on_is_one_line_before_any_training(head, words, tmp_path):
    t, _ = trial(head, out_dir=tmp_path / "run", resize_start=0, resize_epochs=0)
    with pytest.raises(NetworkError, match=re.escape(words)) as e:
        t.run()
    assert len(e.value._render_traceback_()) == 1 and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_network_that_fails_at_full_size_names_the_layer_and_its_input():
    class Wrong(Student):
        def __init__(self):
            super().__init__("linear")
            self.fc = nn.Linear(99, 10)  # the wrong in_features

    t = Trial(**dict(SMALL_FAST, model=Wrong, enforce_rules=False))
    with pytest.raises(NetworkError, match=r"fails on 32x32 px images, before any training: fc \(Linear\) "
                                           r"\(input 8x512\): RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        t.setup()

"""helpers/augment.py: the batch operations, a recipe's augmentations as one ordered list, and random
erasing as torchvision's RandomErasing defines it (probability, area, aspect ratio), vectorised."""
import math

import pytest
import torch

from conftest import SMALL_FAST, outcome
from helpers import augment as A
from helpers.data import DataError, channel_stats, load_split
from helpers.loader import Loader
from helpers.recipes import Recipe, get_recipe
from helpers.run import Trial, train


# --------------------------------------------------------------------------- the operations

def test_translate_and_flip():
    img = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).view(2, 3, 32, 32).to(torch.uint8)
    moved = A.translate(img, 2, *A.draw_translate(2, 2, torch.Generator().manual_seed(0)))
    assert moved.shape == img.shape and moved.dtype == torch.uint8
    # a shifted image keeps its interior: some 28x28 window of the original appears in it
    inner = moved[0, :, 2:30, 2:30]
    assert any(torch.equal(inner, img[0, :, y:y + 28, x:x + 28]) for y in range(5) for x in range(5))
    assert torch.equal(A.translate(img, 2, torch.tensor([2, 2]), torch.tensor([2, 2])), img)  # pad: no shift
    batch = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    flipped = A.flip_where(batch, A.draw_flip(64, torch.Generator().manual_seed(0)))
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, batch)]
    assert all(m or torch.equal(a, b) for m, a, b in zip(mirrored, flipped, batch))
    assert 16 <= sum(mirrored) <= 48  # about half mirrored: neither a no-op nor a flip of everything


def test_cutout_blanks_one_square_inside_each_image():
    x = torch.ones(16, 3, 32, 32)
    out = A.cutout(x, 8, *A.draw_cutout(16, 8, (32, 32), torch.Generator().manual_seed(0)))
    blank = out[:, 0] == 0                                               # (N, H, W)
    assert (blank.sum((1, 2)) == 64).all() and torch.equal(blank, (out == 0).all(1))
    rows, cols = blank.any(2), blank.any(1)                              # one 8-row, 8-column band each
    assert (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all()
    with pytest.raises(DataError, match="larger than"):
        A.draw_cutout(16, 33, (32, 32))


# --------------------------------------------------------------------------- a recipe's list

def test_a_recipes_list_holds_its_augmentations_in_the_order_they_apply():
    kinds = lambda recipe: [type(a).__name__ for a in A.from_recipe(recipe)]  # noqa: E731
    assert A.from_recipe(get_recipe("seed")) == [A.Translate(4), A.Flip()]
    assert kinds(get_recipe("fast")) == kinds(get_recipe("best")) == ["Translate", "AlternateFlip"]
    assert A.from_recipe(Recipe(translate=0, flip=False)) == []
    assert A.from_recipe(Recipe(flip=False, alternate_flip=True)) == [A.Translate(4)]  # alternate what? nothing
    every = get_recipe("fast", cutout=8, erase=0.25, erase_scale_min=0.1, erase_ratio_max=2.0)
    assert kinds(every) == ["Translate", "AlternateFlip", "Cutout", "RandomErasing"]
    assert A.from_recipe(every)[-1] == A.RandomErasing(0.25, (0.1, 0.33), (0.3, 2.0))
    assert [a.normalized for a in A.from_recipe(every)] == [False, False, True, True]
    assert [a.describe() for a in A.from_recipe(every)] == [
        "shift up to 2 px (reflect padding)", "mirror each image on alternate epochs", "cutout 8x8",
        "random erasing (p 0.25: a box of 10%-33% of the image, aspect 0.3-2)"]
    assert A.from_recipe(every) is not A.from_recipe(every)  # fresh entries: each Loader its own state


# --------------------------------------------------------------------------- random erasing

def boxes(n=20_000, h=32, w=32, p=0.3, seed=0, **kwargs):
    return A.draw_erase(n, h, w, p, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_random_erasing_draws_boxes_as_torchvision_does():
    top, left, height, width = boxes()
    erased = height > 0
    assert all(t.dtype == torch.int64 and t.shape == (20_000,) for t in (top, left, height, width))
    assert abs(erased.float().mean().item() - 0.3) < 0.015              # an image is erased with probability p
    assert ((height == 0) == (width == 0)).all() and (top[~erased] == 0).all() and (left[~erased] == 0).all()
    # inside the image, and smaller than it on both sides (torchvision's condition for a box that fits)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 32).all()
    assert (height < 32).all() and (width < 32).all()
    h, w = height[erased].double(), width[erased].double()
    # the area drawn in 2 %-33 % of the image and the aspect in 0.3-3.3, each side then rounded to whole pixels
    assert ((h - 0.5) * (w - 0.5) <= 0.33 * 1024).all() and ((h + 0.5) * (w + 0.5) >= 0.02 * 1024).all()
    assert ((h - 0.5) / (w + 0.5) <= 3.3).all() and ((h + 0.5) / (w - 0.5) >= 0.3).all()
    # both ends of both ranges are reached: uniform area, log-uniform aspect (as likely tall as wide)
    area = h * w / 1024
    assert area.min() < 0.03 and area.max() > 0.3 and abs(area.mean().item() - 0.175) < 0.01
    assert abs(((h > w).double().mean() - (h < w).double().mean()).item()) < 0.03
    # corners spread over every place a box fits
    assert top[erased].min() == 0 and (top + height)[erased].max() == 32 and left[erased].min() == 0


def test_random_erasing_matches_torchvision_in_distribution():
    tv = pytest.importorskip("torchvision.transforms")
    torch.manual_seed(0)
    erase = tv.RandomErasing(p=0.5)
    theirs = [(erase(torch.ones(1, 32, 32)) == 0).sum().item() / 1024 for _ in range(4000)]
    theirs = torch.tensor(theirs, dtype=torch.float64)
    _, _, height, width = boxes(n=4000, p=0.5, seed=1)
    ours = (height * width).double() / 1024
    assert abs((ours > 0).double().mean() - (theirs > 0).double().mean()) < 0.04
    assert abs(ours[ours > 0].mean() - theirs[theirs > 0].mean()) < 0.01       # ~0.17 of the image
    assert abs(ours[ours > 0].median() - theirs[theirs > 0].median()) < 0.015


def test_random_erasing_zeros_its_box_in_every_channel_and_nothing_else():
    top, left, height, width = boxes(n=64, p=0.5, seed=2)
    out = A.erase(torch.ones(64, 3, 32, 32), top, left, height, width)
    zero = (out == 0)
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    for i in range(64):
        box = torch.zeros(32, 32, dtype=torch.bool)
        box[top[i]:top[i] + height[i], left[i]:left[i] + width[i]] = True
        assert torch.equal(zero[i, 0], box), i
    assert zero.any() and not zero.all((1, 2, 3)).any()


def test_random_erasing_off_on_and_boxes_that_never_fit():
    assert (boxes(p=0.0)[2] == 0).all() and (boxes(p=1.0)[2] > 0).all()
    # an area of 90 %+ with an aspect of 3: never smaller than the image on both sides, so never erased
    assert (boxes(p=1.0, scale=(0.9, 0.95), ratio=(3.0, 3.3))[2] == 0).all()


def test_random_erasing_is_drawn_from_the_seed_alone():
    assert all(torch.equal(a, b) for a, b in zip(boxes(seed=4), boxes(seed=4)))
    assert not torch.equal(boxes(seed=4)[0], boxes(seed=5)[0])
    ds = load_split("synthetic", "train", limit=100)
    mean, std = channel_stats(ds.images)

    def epoch(seed):
        loader = Loader(ds, 50, True, mean, std, augmentations=[A.Flip(), A.RandomErasing(0.5)], seed=seed)
        loader.set_epoch(1, seed)
        return torch.cat([x for x, _ in loader])

    first = epoch(3)
    assert torch.equal(first, epoch(3)) and not torch.equal(first, epoch(4))
    blanked = (first == 0).all(1).flatten(1).sum(1)                      # erased pixels per image
    assert 0.3 < (blanked > 0).float().mean() < 0.7


def test_a_run_with_random_erasing_trains_and_resumes_to_the_same_history(tmp_path):
    small = dict(SMALL_FAST, erase=0.5)  # after fast's shifts and alternating flips
    full = train(out_dir=tmp_path / "full", **small)
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    trial = Trial(out_dir=tmp_path / "split", **small)
    assert [type(a) for a in trial.setup().train_loader.augmentations] == [A.Translate, A.AlternateFlip,
                                                                            A.RandomErasing]
    first = trial.run(stop_after=1)  # "interrupted" after epoch 1
    assert len(first.history) == 1
    resumed = Trial(out_dir=tmp_path / "split", **small).run(resume=True)
    assert outcome(resumed.history) == outcome(full.history)
    assert math.isfinite(resumed.history[-1]["test_loss"])

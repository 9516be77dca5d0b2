"""helpers/loader.py: batches on the device, whole-batch augmentation drawn from the seed alone."""
import pytest
import torch

from helpers import data as D
from helpers import loader as L
from helpers.data import DataError, load_split
from helpers.loader import Loader


def test_loader_yields_normalized_batches():
    train = load_split("synthetic", "train", limit=100)
    mean, std = D.channel_stats(train.images)
    loader = Loader(train, 32, train=False, mean=mean, std=std)
    batches = list(loader)
    assert len(batches) == len(loader) == 4 and batches[-1][0].shape == (4, 3, 32, 32)
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    assert torch.equal(torch.cat([b[1] for b in batches]), train.labels)


def test_augmentation_ops():
    img = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).view(2, 3, 32, 32).to(torch.uint8)
    assert torch.equal(L.random_translate(img, 0), img)
    moved = L.random_translate(img, 2, torch.Generator().manual_seed(0))
    assert moved.shape == img.shape and moved.dtype == torch.uint8
    # a shifted image keeps its interior: some 28x28 window of the original appears in it
    inner = moved[0, :, 2:30, 2:30]
    assert any(torch.equal(inner, img[0, :, y:y + 28, x:x + 28]) for y in range(5) for x in range(5))
    batch = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    flipped = L.random_flip(batch, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, batch)]
    assert all(m or torch.equal(a, b) for m, a, b in zip(mirrored, flipped, batch))
    assert 16 <= sum(mirrored) <= 48  # about half mirrored: neither a no-op nor a flip of everything


def test_resize_averages_areas_and_keeps_the_aspect():
    x = torch.arange(4 * 4, dtype=torch.float32).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    half = L.resize(x, 2)
    assert half.shape == (2, 3, 2, 2) and half[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4  # each pixel: a 2x2 mean
    assert L.resize(torch.zeros(1, 3, 32, 16), 16).shape == (1, 3, 16, 8)
    assert L.resize(x, 4) is x and L.resize(x, 8) is x                           # never enlarged


def test_loader_resizes_its_batches_when_given_a_size():
    train = load_split("synthetic", "train", limit=64)
    loader = Loader(train, 32, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, translate=2, flip=True,
                    channels_last=True)
    full, _ = next(iter(loader))
    loader.size = 16
    small, _ = next(iter(loader))
    assert full.shape == (32, 3, 32, 32) and small.shape == (32, 3, 16, 16)
    assert small.is_contiguous(memory_format=torch.channels_last)


def test_cutout_blanks_one_square_inside_each_image():
    x = torch.ones(16, 3, 32, 32)
    assert torch.equal(L.random_cutout(x, 0), x)
    out = L.random_cutout(x, 8, torch.Generator().manual_seed(0))
    blank = out[:, 0] == 0                                               # (N, H, W)
    assert (blank.sum((1, 2)) == 64).all() and torch.equal(blank, (out == 0).all(1))
    rows, cols = blank.any(2), blank.any(1)                              # one 8-row, 8-column band each
    assert (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all()
    with pytest.raises(DataError, match="larger than"):
        L.random_cutout(x, 33)


def test_training_loader_shuffles_and_augments_repeatably():
    train = load_split("synthetic", "train", limit=100)
    make = lambda: Loader(train, 32, train=True, mean=[0.5] * 3, std=[0.25] * 3, translate=2, flip=True)  # noqa: E731
    a, b = make(), make()
    a.set_epoch(3), b.set_epoch(3)
    assert len(a) == 3  # drop_last for training
    batches = list(a)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(batches, b))
    # shuffled: not the dataset's order, and another order the next epoch
    labels = torch.cat([y for _, y in batches])
    assert not torch.equal(labels, train.labels[:96])
    a.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in a]), labels)
    # augmented: the same batches without augmentation (the shuffle is drawn first, so the
    # order is the same) differ from the augmented ones, image by image for most of them
    plain = Loader(train, 32, train=True, mean=[0.5] * 3, std=[0.25] * 3)
    plain.set_epoch(3)
    plain_batches = list(plain)
    assert torch.equal(torch.cat([y for _, y in plain_batches]), labels)
    changed = torch.cat([(x1 != x2).flatten(1).any(1) for (x1, _), (x2, _) in zip(batches, plain_batches)])
    assert changed.float().mean() > 0.5


def test_alternating_flip_shows_each_image_both_ways_over_two_epochs():
    train = load_split("synthetic", "train", limit=64)
    loader = Loader(train, 64, train=True, mean=[0.5] * 3, std=[0.25] * 3, flip=True, alternate_flip=True)
    views = []
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        x, y = next(iter(loader))
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))  # the loader's shuffle
        views.append(x[order.argsort()])  # back to dataset order
    plain = loader.normalize(train.images)
    for i in range(64):
        a, b, c = (torch.equal(v[i], plain[i]) for v in views)
        assert a != b and a == c  # flipped in exactly one of two consecutive epochs


def test_loader_draws_an_epoch_of_augmentation_in_one_copy():
    """The batches are the ones per-batch draws give (same generator, same order), but the randomness
    reaches the device in one copy per epoch, not 2-4 blocking copies per step."""
    from torch.overrides import TorchFunctionMode

    ds = D.load_split("synthetic", "train", limit=230)
    loader = Loader(ds, 50, True, [0.5] * 3, [0.25] * 3, translate=2, flip=True, cutout=8, seed=3)
    loader.set_epoch(4, seed=3)

    class CountMoves(TorchFunctionMode):
        moves = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                CountMoves.moves += 1
            return func(*args, **(kwargs or {}))

    with CountMoves():
        batches = list(loader)
    assert len(batches) == 4 and CountMoves.moves <= 2  # the shuffled order and the draws: whatever the batches
    g = torch.Generator().manual_seed(3 * 100_003 + 4)  # what set_epoch seeds
    order = torch.randperm(230, generator=g)
    for i, (x, y) in enumerate(batches):
        idx = order[i * 50:(i + 1) * 50]
        want = L.random_flip(L.random_translate(ds.images[idx], 2, g), g)
        want = L.random_cutout(loader.normalize(want), 8, g)
        assert torch.equal(x, want) and torch.equal(y, ds.labels[idx])


# --------------------------------------------------------------------------- caches

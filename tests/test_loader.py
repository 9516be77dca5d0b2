"""helpers/loader.py: batches on the device, augmented by a list of augmentations whose randomness is
drawn from the seed alone, batch for batch the same as before the list existed."""
import hashlib

import pytest
import torch

from helpers import augment as A
from helpers import data as D
from helpers import loader as L
from helpers.data import load_split
from helpers.loader import Augmentation, Loader
from helpers.recipes import get_recipe

SHIFT_AND_FLIP = [A.Translate(2), A.Flip()]


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


def test_resize_averages_areas_and_keeps_the_aspect():
    x = torch.arange(4 * 4, dtype=torch.float32).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    half = L.resize(x, 2)
    assert half.shape == (2, 3, 2, 2) and half[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4  # each pixel: a 2x2 mean
    assert L.resize(torch.zeros(1, 3, 32, 16), 16).shape == (1, 3, 16, 8)
    assert L.resize(x, 4) is x and L.resize(x, 8) is x                           # never enlarged


def test_loader_resizes_its_batches_when_given_a_size():
    train = load_split("synthetic", "train", limit=64)
    loader = Loader(train, 32, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, augmentations=SHIFT_AND_FLIP,
                    channels_last=True)
    full, _ = next(iter(loader))
    loader.size = 16
    small, _ = next(iter(loader))
    assert full.shape == (32, 3, 32, 32) and small.shape == (32, 3, 16, 16)
    assert small.is_contiguous(memory_format=torch.channels_last)


def test_training_loader_shuffles_and_augments_repeatably():
    train = load_split("synthetic", "train", limit=100)
    make = lambda: Loader(train, 32, train=True, mean=[0.5] * 3, std=[0.25] * 3,  # noqa: E731
                          augmentations=[A.Translate(2), A.Flip()])
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
    loader = Loader(train, 64, train=True, mean=[0.5] * 3, std=[0.25] * 3, augmentations=[A.AlternateFlip()])
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
    loader = Loader(ds, 50, True, [0.5] * 3, [0.25] * 3, augmentations=[A.Translate(2), A.Flip(), A.Cutout(8)], seed=3)
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
        want = A.flip_where(A.translate(ds.images[idx], 2, *A.draw_translate(50, 2, g)), A.draw_flip(50, g))
        want = A.cutout(loader.normalize(want), 8, *A.draw_cutout(50, 8, (32, 32), g))
        assert torch.equal(x, want) and torch.equal(y, ds.labels[idx])


# SHA-256 (first 16 hex digits) of the first 3 training batches of epochs 1 and 2 (images and labels), 200
# synthetic images in batches of 32, seed 3, as the Loader gave them when it took translate / flip /
# alternate_flip / cutout keywords: a recipe's list of augmentations must give the same bits
RECORDED = {"seed": "466c47b1f5353639", "fast": "b7840d2885e23b02", "best": "b7840d2885e23b02",
            "seed cutout=8": "a5901449814a6fd9", "fast cutout=8": "fc67940e7c692c01"}


@pytest.mark.parametrize("name", RECORDED)
def test_a_recipes_list_gives_the_recorded_batches(name):
    base, *changes = name.split()
    recipe = get_recipe(base, **{k: int(v) for k, v in (c.split("=") for c in changes)})
    ds = load_split("synthetic", "train", limit=200)
    mean, std = D.channel_stats(ds.images)
    loader = Loader(ds, 32, True, mean, std, augmentations=A.from_recipe(recipe), seed=3)  # as Trial builds it
    digest = hashlib.sha256()
    for epoch in (1, 2):
        loader.set_epoch(epoch, 3)
        for _, (x, y) in zip(range(3), loader):
            digest.update(x.contiguous().numpy().tobytes())
            digest.update(y.numpy().tobytes())
    assert digest.hexdigest()[:16] == RECORDED[name]


def test_each_augmentation_gets_its_draws_its_batch_and_its_stage():
    """The Loader's one contract with an entry: setup once with the split's size and the seed; per batch,
    `draw` with the batch's size from the loader's generator, then `apply` with those draws, the batch's
    indices and epoch, on uint8 pixels or (normalized=True) on normalized floats, in list order."""
    seen = []

    class Probe(Augmentation):
        def __init__(self, name, normalized):
            self.name, self.normalized = name, normalized

        def setup(self, n_images, seed, device):
            seen.append((self.name, "setup", n_images, seed, str(device)))

        def draw(self, n, h, w, generator):
            return (torch.full((n,), h * w), torch.randint(0, 1000, (n,), generator=generator))

        def apply(self, images, drawn, batch):
            seen.append((self.name, images.dtype, len(images), drawn, batch))
            return images

    ds = load_split("synthetic", "train", limit=100)
    loader = Loader(ds, 40, True, [0.5] * 3, [0.25] * 3, augmentations=[Probe("pixels", False), Probe("floats", True)],
                    seed=5)
    assert seen == [("pixels", "setup", 100, 5, "cpu"), ("floats", "setup", 100, 5, "cpu")]
    loader.set_epoch(2, 5)
    list(loader)
    g = torch.Generator().manual_seed(5 * 100_003 + 2)
    order = torch.randperm(100, generator=g)
    applied = seen[2:]
    assert [(a[0], a[1], a[2]) for a in applied] == [("pixels", torch.uint8, 40), ("floats", torch.float32, 40)] * 2
    for i in range(2):  # drawn batch by batch, entry by entry, after the shuffle
        for name, _, _, drawn, batch in applied[2 * i:2 * i + 2]:
            assert torch.equal(drawn[0], torch.full((40,), 32 * 32))
            assert torch.equal(drawn[1], torch.randint(0, 1000, (40,), generator=g)), name
            assert torch.equal(batch.indices, order[40 * i:40 * (i + 1)]) and batch.epoch == 2


def test_an_evaluation_loader_leaves_its_images_alone_and_a_misordered_list_is_refused():
    ds = load_split("synthetic", "train", limit=64)
    plain = Loader(ds, 64, False, [0.5] * 3, [0.25] * 3)
    loader = Loader(ds, 64, False, [0.5] * 3, [0.25] * 3, augmentations=[A.Translate(2), A.Flip(), A.Cutout(8)])
    assert loader.augmentations == [] and torch.equal(next(iter(loader))[0], next(iter(plain))[0])
    with pytest.raises(ValueError, match="must come before"):
        Loader(ds, 32, True, [0.5] * 3, [0.25] * 3, augmentations=[A.Cutout(8), A.Flip()])


# --------------------------------------------------------------------------- caches

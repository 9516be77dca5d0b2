"""How the images reach the model: a Loader that holds a whole split on the device and draws
normalized, augmented batches from it, each augmentation a tensor operation on a whole batch on
whatever device the data lives on.

    loader = Loader(train_set, batch_size=256, train=True, mean=mean, std=std,
                    augmentations=augment.from_recipe(recipe), seed=seed)

The augmentations are one ordered list (helpers/augment.py builds a recipe's). Each entry is an
`Augmentation`: `draw` takes its random numbers for a batch on the CPU, from the loader's generator
(so a run's batches depend only on its seed, whatever the device), `apply` uses them on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import DataError, ImageSet


@dataclass(frozen=True)
class Batch:
    """What an augmentation may know of the batch it applies to, besides its pixels and its draws."""
    indices: torch.Tensor  # each image's index in the split, on the device
    epoch: int


class Augmentation:
    """One entry of a Loader's list of augmentations; a new augmentation subclasses it.

    `normalized`: False applies to the uint8 pixels, True to the normalized floats (where 0 is the
    dataset's mean colour). The Loader applies the entries in list order and normalizes between the
    two kinds, so a list puts every pixel entry first.
    """
    normalized = False

    def setup(self, n_images: int, seed: int, device) -> None:
        """Per-run state, made once when the Loader is built (an entry serves one Loader): none here."""

    def draw(self, n: int, h: int, w: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random numbers for a batch of n images of h x w pixels: 1-d int64 tensors of length n,
        drawn on the CPU from `generator`, in a fixed order (none here)."""
        return ()

    def apply(self, images: torch.Tensor, drawn: tuple[torch.Tensor, ...], batch: Batch) -> torch.Tensor:
        """The batch augmented, with `draw`'s tensors (for these images, on the device)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the recipe table, e.g. "cutout 8x8"."""
        raise NotImplementedError


def reflect_pad(images, pad):
    # F.pad's reflect mode rejects uint8, so index with reflected coordinates (any dtype)
    h, w = images.shape[-2:]
    def reflect(n):
        i = torch.arange(-pad, n + pad, device=images.device).abs()
        return torch.where(i >= n, 2 * (n - 1) - i, i)
    return images[..., reflect(h)[:, None], reflect(w)[None, :]]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink a float batch to `size` px high (the width in proportion) by averaging areas: a box filter,
    so no aliasing, and the same on every device. Progressive resizing's smaller early images."""
    h, w = images.shape[-2:]
    if size >= h:
        return images
    return F.interpolate(images, size=(size, round(w * size / h)), mode="area")


class Loader:
    """Batches of normalized float images on `device`, with optional batch augmentation.

    Holds the whole uint8 dataset on the device (150 MB for 50k images), so an epoch
    does no decoding and no host-to-device copies. `augmentations` apply to training loaders only.
    """

    def __init__(self, ds: ImageSet, batch_size: int, train: bool, mean, std, device="cpu",
                 augmentations=(), drop_last: bool | None = None, channels_last: bool = False, seed: int = 0):
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.images = ds.images.to(device)
        self.labels = ds.labels.to(device)
        self.classes = ds.classes
        self.batch_size, self.train, self.device = batch_size, train, torch.device(device)
        self.augmentations = list(augmentations) if train else []
        kinds = [a.normalized for a in self.augmentations]
        if kinds != sorted(kinds):
            raise ValueError(f"augmentations {self.augmentations}: those on uint8 pixels (normalized=False) "
                             "must come before those on normalized images")
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(ds) < batch_size:  # 0 batches: nothing would train, and OneCycleLR fails
            raise DataError(f"the split has {len(ds)} images, fewer than one batch (batch_size {batch_size}): "
                            "use more images (a larger --limit / limit=, or more files) "
                            "or a smaller --batch-size / batch_size=")
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.size = None  # None: the images' own size; else `resize` each batch to this height (set per epoch)
        for aug in self.augmentations:
            aug.setup(len(self.labels), seed, self.device)

    def set_epoch(self, epoch: int, seed: int = 0):
        """Reseed shuffling/augmentation per epoch, so a resumed run sees the same batches."""
        self.epoch = epoch
        self.generator.manual_seed(seed * 100_003 + epoch)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)).to(self.device)
        draws = self._draws()
        for i in range(len(self)):
            span = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[span]
            batch, x = Batch(idx, self.epoch), self.images[idx]
            for aug, drawn in zip(self.augmentations, draws):
                if aug.normalized and not x.is_floating_point():
                    x = self.normalize(x)
                x = aug.apply(x, tuple(drawn[:, span]), batch)
            if not x.is_floating_point():
                x = self.normalize(x)
            if self.size:  # resize leaves images of this size or smaller alone
                x = resize(x, self.size)
                x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            yield x, self.labels[idx]

    def _draws(self) -> list[torch.Tensor]:
        """The epoch's augmentation randomness, drawn on the CPU batch by batch and entry by entry, in
        list order, then moved to the device in one copy: per-batch draws would each block on a
        host-to-device copy, and the CPU could never queue steps ahead of the GPU. One (k, N) tensor
        per entry, k the number of tensors its `draw` returns."""
        h, w = self.images.shape[-2:]
        counts, columns = [0] * len(self.augmentations), []
        for i in range(len(self)):
            m = min(self.batch_size, len(self.labels) - i * self.batch_size)
            drawn = [aug.draw(m, h, w, self.generator) for aug in self.augmentations]
            counts = [len(d) for d in drawn]
            columns.append([t for d in drawn for t in d])
        if sum(counts):
            table = torch.cat([torch.stack(c) for c in columns], dim=1).to(self.device)
        else:  # nothing random to copy (no augmentation, or the alternating flip alone)
            table = torch.empty(0, len(self.labels), dtype=torch.long, device=self.device)
        return list(table.split(counts))

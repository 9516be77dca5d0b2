"""How the images reach the model: a Loader that holds a whole split on the device and draws
normalized, augmented batches from it, and the augmentations themselves, each a tensor operation on
a whole batch (shift with reflect padding, mirror, cutout) on whatever device the data lives on.

    loader = Loader(train_set, batch_size=256, train=True, mean=mean, std=std, translate=2, flip=True)

Each augmentation is split in two: `draw_*` draws the random numbers on the CPU (so a run's batches
depend only on its seed, whatever the device), the function of the same name applies them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import DataError, ImageSet


def random_translate(images: torch.Tensor, pad: int, generator=None) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflect padding), the whole batch in one gather."""
    if pad <= 0:
        return images
    dy, dx = draw_translate(len(images), pad, generator)
    return translate(images, pad, dy.to(images.device), dx.to(images.device))


def draw_translate(n: int, pad: int, generator=None):
    """Per-image shifts for `translate`, 0 .. 2 * pad (pad means no shift), on the CPU."""
    return (torch.randint(0, 2 * pad + 1, (n,), generator=generator),
            torch.randint(0, 2 * pad + 1, (n,), generator=generator))


def translate(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Crop each reflect-padded image at (dy, dx): a shift by (dy - pad, dx - pad) pixels."""
    n, _, h, w = images.shape
    padded = reflect_pad(images, pad)                                                  # (N, C, H+2p, W+2p)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]   # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]   # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]                                            # (N, C, H, W)


def reflect_pad(images, pad):
    # F.pad's reflect mode rejects uint8, so index with reflected coordinates (any dtype)
    h, w = images.shape[-2:]
    def reflect(n):
        i = torch.arange(-pad, n + pad, device=images.device).abs()
        return torch.where(i >= n, 2 * (n - 1) - i, i)
    return images[..., reflect(h)[:, None], reflect(w)[None, :]]


def random_flip(images: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return flip_where(images, draw_flip(len(images), generator).to(images.device))


def draw_flip(n: int, generator=None) -> torch.Tensor:
    """Which images `flip_where` mirrors (a fair coin each), on the CPU."""
    return torch.rand(n, generator=generator) < 0.5


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def random_cutout(images: torch.Tensor, size: int, generator=None) -> torch.Tensor:
    """Zero a random size x size square (inside the image) of each image, as one masked fill.

    Applied after normalization, so zero means "the dataset's mean colour".
    """
    if size <= 0:
        return images
    top, left = draw_cutout(len(images), size, images.shape[-2:], generator)
    return cutout(images, size, top.to(images.device), left.to(images.device))


def draw_cutout(n: int, size: int, hw, generator=None):
    """Top-left corners for `cutout`, each square inside its image, on the CPU."""
    h, w = hw
    if size > min(h, w):
        raise DataError(f"cutout size {size} is larger than the {h}x{w} images")
    return (torch.randint(0, h - size + 1, (n,), generator=generator),
            torch.randint(0, w - size + 1, (n,), generator=generator))


def cutout(images: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)[None, :] - top[:, None]     # (N, H)
    cols = torch.arange(w, device=images.device)[None, :] - left[:, None]    # (N, W)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (N, H, W)
    return images.masked_fill(inside[:, None], 0)


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
    does no decoding and no host-to-device copies.
    """

    def __init__(self, ds: ImageSet, batch_size: int, train: bool, mean, std, device="cpu",
                 translate: int = 0, flip: bool = False, drop_last: bool | None = None,
                 channels_last: bool = False, seed: int = 0, alternate_flip: bool = False, cutout: int = 0):
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.images = ds.images.to(device)
        self.labels = ds.labels.to(device)
        self.classes = ds.classes
        self.batch_size, self.train, self.device = batch_size, train, torch.device(device)
        self.translate, self.flip, self.cutout = (translate, flip, cutout) if train else (0, False, 0)
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
        # alternating flip: each image gets a random side once, then the other side every
        # other epoch, so two consecutive epochs always show both views (instead of a coin toss)
        self.flip_base = None
        if alternate_flip:  # drawn once per run: which side each image shows on even epochs
            g = torch.Generator().manual_seed(seed)
            self.flip_base = (torch.rand(len(self.labels), generator=g) < 0.5).to(self.device)

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
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            d = {k: v[i * self.batch_size:(i + 1) * self.batch_size] for k, v in draws.items()}
            x = self.images[idx]
            if self.translate:
                x = translate(x, self.translate, d["dy"], d["dx"])
            if self.flip and self.flip_base is not None:
                x = flip_where(x, self.flip_base[idx] ^ bool(self.epoch % 2))
            elif self.flip:
                x = flip_where(x, d["flip"].bool())
            x = self.normalize(x)
            if self.cutout:
                x = cutout(x, self.cutout, d["top"], d["left"])
            if self.size:  # resize leaves images of this size or smaller alone
                x = resize(x, self.size)
                x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            yield x, self.labels[idx]

    def _draws(self) -> dict:
        """The epoch's augmentation randomness, drawn on the CPU batch by batch in the order the
        augmentations use it, then moved to the device in one copy: per-batch draws would each
        block on a host-to-device copy, and the CPU could never queue steps ahead of the GPU."""
        names = (["dy", "dx"] if self.translate else []) + (["flip"] if self.flip and self.flip_base is None else []) \
            + (["top", "left"] if self.cutout else [])
        if not names:
            return {}
        columns = []
        for i in range(len(self)):
            m = min(self.batch_size, len(self.labels) - i * self.batch_size)
            drawn = []
            if self.translate:
                drawn += draw_translate(m, self.translate, self.generator)
            if self.flip and self.flip_base is None:
                drawn.append(draw_flip(m, self.generator).long())
            if self.cutout:
                drawn += draw_cutout(m, self.cutout, self.images.shape[-2:], self.generator)
            columns.append(torch.stack(drawn))
        return dict(zip(names, torch.cat(columns, dim=1).to(self.device)))

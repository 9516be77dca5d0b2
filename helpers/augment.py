"""The training augmentations, each a tensor operation on a whole batch (shift with reflect padding,
mirror, cutout, random erasing), and a recipe's as one ordered list, what a training Loader takes.

    augmentations = from_recipe(recipe)   # e.g. [Translate(pad=2), AlternateFlip(), Cutout(size=8)]
    loader = Loader(train_set, 256, True, mean, std, augmentations=augmentations, seed=seed)

Each entry is a `loader.Augmentation`: `draw` takes its random numbers on the CPU, `apply` uses them on
the device. A new augmentation is one class here and one line in `from_recipe`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .data import DataError
from .loader import Augmentation, Batch, reflect_pad


# --------------------------------------------------------------------------- the operations

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


def draw_flip(n: int, generator=None) -> torch.Tensor:
    """Which images `flip_where` mirrors (a fair coin each), on the CPU."""
    return torch.rand(n, generator=generator) < 0.5


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def draw_cutout(n: int, size: int, hw, generator=None):
    """Top-left corners for `cutout`, each square inside its image, on the CPU."""
    h, w = hw
    if size > min(h, w):
        raise DataError(f"cutout size {size} is larger than the {h}x{w} images")
    return (torch.randint(0, h - size + 1, (n,), generator=generator),
            torch.randint(0, w - size + 1, (n,), generator=generator))


def cutout(images: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero a size x size square of each image (after normalization: the dataset's mean colour)."""
    return erase(images, top, left, size, size)


def draw_erase(n: int, h: int, w: int, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3), generator=None,
               attempts: int = 10):
    """Boxes for `erase` as torchvision's RandomErasing picks them, on the CPU: with probability p an
    image gets a box of area scale (uniform) x h x w and aspect ratio height / width `ratio` (log-uniform),
    placed uniformly inside the image. Like torchvision, a box must be smaller than the image on both
    sides, and `attempts` boxes are tried: vectorised, each image draws all of them at once and keeps the
    first that fits; an image where none fits is left alone, as torchvision leaves it. Returns (top, left,
    height, width), int64; height and width are 0 where nothing is erased."""
    erased = torch.rand(n, generator=generator) < p
    area = h * w * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    heights = torch.sqrt(area * aspect).round().long()     # round half to even, as torchvision's round()
    widths = torch.sqrt(area / aspect).round().long()
    fits = (heights < h) & (widths < w)
    first = fits.long().argmax(1, keepdim=True)            # the first attempt that fits (0 where none does)
    erased &= fits.any(1)
    height = heights.gather(1, first)[:, 0] * erased
    width = widths.gather(1, first)[:, 0] * erased
    # uniform in 0 .. h - height: torchvision's randint(0, h - height + 1), one number per image
    top = (torch.rand(n, generator=generator) * (h - height + 1)).long() * erased
    left = (torch.rand(n, generator=generator) * (w - width + 1)).long() * erased
    return top, left, height, width


def erase(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height, width) -> torch.Tensor:
    """Zero the box rows top .. top + height - 1, columns left .. left + width - 1 of each image (all
    channels), as one masked fill; height and width are per image, or one number for the batch."""
    _, _, h, w = images.shape
    if torch.is_tensor(height):  # one per image (a number broadcasts as it is: no copy to the device)
        height, width = height[:, None], width[:, None]
    rows = torch.arange(h, device=images.device)[None, :] - top[:, None]     # (N, H)
    cols = torch.arange(w, device=images.device)[None, :] - left[:, None]    # (N, W)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (N, H, W)
    return images.masked_fill(inside[:, None], 0)


# --------------------------------------------------------------------------- the entries

@dataclass
class Translate(Augmentation):
    """Shift each image by up to `pad` pixels each way (reflect padding), on the uint8 pixels."""
    pad: int

    def draw(self, n, h, w, generator):
        return draw_translate(n, self.pad, generator)

    def apply(self, images, drawn, batch):
        return translate(images, self.pad, *drawn)

    def describe(self):
        return f"shift up to {self.pad} px (reflect padding)"


@dataclass
class Flip(Augmentation):
    """Mirror a random half of the batch left-right (a fair coin per image and epoch)."""

    def draw(self, n, h, w, generator):
        return (draw_flip(n, generator).long(),)

    def apply(self, images, drawn, batch):
        return flip_where(images, drawn[0].bool())

    def describe(self):
        return "mirror a random half"


@dataclass(eq=False)
class AlternateFlip(Augmentation):
    """Mirror each image on alternate epochs: its side on even epochs is drawn once per run from the
    seed, so two consecutive epochs always show both views (instead of a coin toss each epoch)."""
    base: torch.Tensor | None = field(default=None, repr=False)  # per image: mirrored on even epochs

    def setup(self, n_images, seed, device):
        # its own generator: the loader's draws are the same with or without alternating flips
        self.base = (torch.rand(n_images, generator=torch.Generator().manual_seed(seed)) < 0.5).to(device)

    def apply(self, images, drawn, batch: Batch):
        return flip_where(images, self.base[batch.indices] ^ bool(batch.epoch % 2))

    def describe(self):
        return "mirror each image on alternate epochs"


@dataclass
class Cutout(Augmentation):
    """Blank a random size x size square inside each image, after normalization (the mean colour)."""
    size: int
    normalized = True

    def draw(self, n, h, w, generator):
        return draw_cutout(n, self.size, (h, w), generator)

    def apply(self, images, drawn, batch):
        return cutout(images, self.size, *drawn)

    def describe(self):
        return f"cutout {self.size}x{self.size}"


@dataclass
class RandomErasing(Augmentation):
    """torchvision's RandomErasing (value 0), vectorised over the batch (see `draw_erase`), after
    normalization like torchvision users place it: 0 is the dataset's mean colour."""
    p: float = 0.5
    scale: tuple = (0.02, 0.33)
    ratio: tuple = (0.3, 3.3)
    normalized = True

    def draw(self, n, h, w, generator):
        return draw_erase(n, h, w, self.p, self.scale, self.ratio, generator)

    def apply(self, images, drawn, batch):
        return erase(images, *drawn)

    def describe(self):
        return (f"random erasing (p {self.p:g}: a box of {self.scale[0]:.0%}-{self.scale[1]:.0%} of the image, "
                f"aspect {self.ratio[0]:g}-{self.ratio[1]:g})")


def from_recipe(recipe) -> list[Augmentation]:
    """A recipe's augmentations in the order the Loader applies them: shift and mirror on the uint8
    pixels, then, after normalization, cutout and random erasing. Fresh entries each call (an entry
    keeps per-run state for one Loader)."""
    entries = []
    if recipe.translate:
        entries.append(Translate(recipe.translate))
    if recipe.flip:
        entries.append(AlternateFlip() if recipe.alternate_flip else Flip())
    if recipe.cutout:
        entries.append(Cutout(recipe.cutout))
    if recipe.erase:
        entries.append(RandomErasing(recipe.erase, (recipe.erase_scale_min, recipe.erase_scale_max),
                                     (recipe.erase_ratio_min, recipe.erase_ratio_max)))
    return entries

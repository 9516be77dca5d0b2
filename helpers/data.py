"""Three data sources behind one interface, decoded once into uint8 tensors.

    train, test = load_splits("folder", data_dir="../shared/data/cifar10-jpeg-dev")
    loader = Loader(train, batch_size=128, train=True, mean=..., std=...)

- "cifar10":   torchvision's CIFAR10, downloaded into the cache folder (the Colab path).
- "folder":    an ImageFolder root holding train/ and test/ (class folders of images).
- "synthetic": small generated images with learnable class structure (tests, smoke runs).

Each split becomes an `ImageSet`: images as one uint8 tensor (N, 3, 32, 32) plus int64
labels. Decoding is the slow part (about 10 s for 50k JPEGs), so the result is cached on
disk keyed by source, path and file listing; the second run starts in about a second.
Augmentation works on whole batches as tensor ops, on whatever device the data lives on.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

SOURCES = ("cifar10", "folder", "synthetic")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
SIZE = 32


class DataError(ValueError):
    """Bad data input: the message says what is wrong and how to fix it."""


@dataclass
class ImageSet:
    images: torch.Tensor          # (N, 3, 32, 32) uint8
    labels: torch.Tensor          # (N,) int64
    classes: list
    source: str = ""
    problems: dict = field(default_factory=dict)   # e.g. {"converted to RGB": 3, "skipped (corrupt)": 1}

    def __len__(self):
        return len(self.labels)

    def counts(self) -> dict:
        """Images per class name."""
        return {c: int(n) for c, n in zip(self.classes, torch.bincount(self.labels, minlength=len(self.classes)))}


def default_cache_dir() -> Path:
    return Path(os.environ.get("CIFAR_CACHE", Path.home() / ".cache" / "cifar-helpers"))


# --------------------------------------------------------------------------- sources

def _cifar10(split: str, cache_dir: Path, download: bool = True) -> ImageSet:
    import torchvision

    root = cache_dir / "cifar10"
    try:
        ds = torchvision.datasets.CIFAR10(root=str(root), train=(split == "train"), download=download)
    except Exception as e:  # URLError, socket timeouts, RuntimeError("Dataset not found") ...
        raise DataError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"If this machine is offline, copy the extracted 'cifar-10-batches-py' folder into {root}, "
            "or use data='folder' with data_dir pointing at an ImageFolder copy that has train/ and test/."
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes), "cifar10")


def _list_folder(root: Path, split: str):
    """Validate the layout and return (classes, [(path, label), ...]) for one split."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass data_dir=<folder holding train/ and test/>")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is missing: a folder dataset needs {root}/train/<class>/*.jpg "
                        f"and {root}/test/<class>/*.jpg")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    other = split_dir.parent / ("test" if split == "train" else "train")
    if other.is_dir():
        other_classes = sorted(d.name for d in other.iterdir() if d.is_dir() and not d.name.startswith("."))
        if other_classes != classes:
            diff = sorted(set(classes) ^ set(other_classes))
            raise DataError(f"class folders differ between {split_dir} and {other}: {diff}; "
                            "both splits need the same class folders")
    files = []
    for label, c in enumerate(classes):
        imgs = sorted(f for f in (split_dir / c).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not imgs:
            raise DataError(f"class folder {split_dir / c} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += [(f, label) for f in imgs]
    return classes, files


def _decode(path: Path, problems: dict):
    """One image as a (32, 32, 3) uint8 array, or None if it cannot be read. Counts fixes."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                problems["converted to RGB"] = problems.get("converted to RGB", 0) + 1
                im = im.convert("RGB")
            if im.size != (SIZE, SIZE):
                problems["resized to 32x32"] = problems.get("resized to 32x32", 0) + 1
                im = im.resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception:  # truncated / not an image: skip it, never crash mid-epoch
        problems["skipped (unreadable)"] = problems.get("skipped (unreadable)", 0) + 1
        problems.setdefault("unreadable files", []).append(str(path))
        return None


def _folder(root: Path, split: str) -> ImageSet:
    import numpy as np

    classes, files = _list_folder(root, split)
    problems, arrays, labels = {}, [], []
    for path, label in files:
        a = _decode(path, problems)
        if a is not None:
            arrays.append(a)
            labels.append(label)
    if not arrays:
        raise DataError(f"no readable images under {root / split}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    problems["unreadable files"] = problems.get("unreadable files", [])[:20]  # keep the report short
    if not problems["unreadable files"]:
        del problems["unreadable files"]
    return ImageSet(images, torch.tensor(labels), classes, f"folder:{root}", problems)


def synthetic(split: str, n: int | None = None, num_classes: int = 10, seed: int = 0) -> ImageSet:
    """Generated 32x32 images: each class is a smooth colour blob at its own place, plus noise.

    Easy enough that a model's loss visibly drops in a few steps, hard enough not to be trivial.
    """
    n = n or (1000 if split == "train" else 200)
    g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    proto = torch.Generator().manual_seed(1234)  # class prototypes shared by both splits
    colours = torch.rand(num_classes, 3, 1, 1, generator=proto)
    centres = torch.rand(num_classes, 2, generator=proto) * 20 + 6
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    c = centres[labels] + torch.randn(n, 2, generator=g) * 2             # (N, 2) jittered centres
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / 40)[:, None]                                   # (N, 1, 32, 32)
    img = 0.2 + 0.7 * blob * colours[labels] + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [f"class{i}" for i in range(num_classes)], "synthetic")


# --------------------------------------------------------------------------- loading + cache

def _cache_key(source: str, data_dir, split: str) -> str:
    """Changes when the folder's file listing changes (names, sizes, mtimes)."""
    h = hashlib.sha1(f"{source}|{Path(data_dir).resolve() if data_dir else ''}|{split}|v1".encode())
    if source == "folder":
        for dirpath, dirnames, filenames in os.walk(Path(data_dir) / split):
            dirnames.sort()
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                h.update(f"{dirpath}/{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{source}-{split}-{h.hexdigest()[:12]}.pt"


def balanced_subset(ds: ImageSet, limit: int | None) -> ImageSet:
    """The first images of each class, limit in total, as even across classes as possible."""
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise DataError(f"limit must be a positive number of images (or None for all), got {limit}")
    k = len(ds.classes)
    keep = []
    for c in range(k):
        idx = (ds.labels == c).nonzero().flatten()
        keep.append(idx[: limit // k + (c < limit % k)])
    idx = torch.cat(keep).sort().values
    return ImageSet(ds.images[idx], ds.labels[idx], ds.classes, ds.source, ds.problems)


def load_split(source: str, split: str, data_dir=None, limit: int | None = None,
               cache_dir=None, verbose: bool = True) -> ImageSet:
    """One split of one source as an ImageSet, decoded once and cached on disk."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose train or test")
    if source == "synthetic":
        return balanced_subset(synthetic(split), limit)
    if source == "folder" and not data_dir:
        raise DataError("data='folder' needs data_dir: a folder holding train/<class>/ and test/<class>/")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if source == "folder":
        _list_folder(Path(data_dir), split)  # fail fast with a clear message before hashing
    path = cache_dir / _cache_key(source, data_dir, split)
    if path.exists():
        d = torch.load(path, weights_only=True)
        ds = ImageSet(d["images"], d["labels"], list(d["classes"]), d["source"], dict(d["problems"]))
    else:
        ds = _cifar10(split, cache_dir) if source == "cifar10" else _folder(Path(data_dir), split)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(dict(images=ds.images, labels=ds.labels, classes=ds.classes, source=ds.source,
                        problems=ds.problems), tmp)
        os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written cache
    if verbose and ds.problems:
        counts = {k: v for k, v in ds.problems.items() if isinstance(v, int)}
        print(f"note: {source}/{split}: {counts}")
    return balanced_subset(ds, limit)


def load_splits(source: str, data_dir=None, limit: int | None = None, cache_dir=None, verbose=True):
    """(train, test) ImageSets; `limit` caps each split (class-balanced)."""
    return tuple(load_split(source, s, data_dir, limit, cache_dir, verbose) for s in SPLITS)


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.float().div_(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


# --------------------------------------------------------------------------- augmentation

def random_translate(images: torch.Tensor, pad: int, generator=None) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflect padding), the whole batch in one gather."""
    if pad <= 0:
        return images
    n, _, h, w = images.shape
    padded = reflect_pad(images, pad)                                                  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
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
    mask = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def random_cutout(images: torch.Tensor, size: int, generator=None) -> torch.Tensor:
    """Zero a random size x size square (inside the image) of each image, as one masked fill.

    Applied after normalization, so zero means "the dataset's mean colour".
    """
    if size <= 0:
        return images
    n, _, h, w = images.shape
    if size > min(h, w):
        raise DataError(f"cutout size {size} is larger than the {h}x{w} images")
    top = torch.randint(0, h - size + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device)[None, :] - top[:, None]     # (N, H)
    cols = torch.arange(w, device=images.device)[None, :] - left[:, None]    # (N, W)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (N, H, W)
    return images.masked_fill(inside[:, None], 0)


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
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
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
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.translate:
                x = random_translate(x, self.translate, self.generator)
            if self.flip and self.flip_base is not None:
                mask = self.flip_base[idx] ^ bool(self.epoch % 2)
                x = torch.where(mask[:, None, None, None], x.flip(-1), x)
            elif self.flip:
                x = random_flip(x, self.generator)
            x = self.normalize(x)
            if self.cutout:
                x = random_cutout(x, self.cutout, self.generator)
            yield x, self.labels[idx]

"""Three data sources behind one interface, decoded once into uint8 tensors.

    train, test = load_splits("folder", data_dir="../shared/data/cifar10-jpeg-dev")
    loader = Loader(train, batch_size=128, train=True, mean=..., std=...)

- "cifar10":   torchvision's CIFAR10, downloaded into the cache folder (the Colab path).
- "folder":    an ImageFolder root holding train/ and test/ (class folders of images).
- "synthetic": small generated images with learnable class structure (tests, smoke runs).

Each split becomes an `ImageSet`: images as one uint8 tensor (N, 3, 32, 32) plus int64
labels. Decoding is the slow part (about 10 s for 50k JPEGs), so the result is cached on
disk keyed by source, path and the listing of the files that are decoded (symlinks followed);
the second run starts in about a second. One cache file is kept per source, folder and split.
How the images then reach the model, augmented a whole batch at a time: helpers/loader.py.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .rundir import atomic_write

SOURCES = ("cifar10", "folder", "synthetic")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
SIZE = 32


class DataError(UserError):
    """Bad data input: the message says what is wrong and how to fix it (one line in a notebook, as every
    UserError; still a ValueError, which the commands catch)."""


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

    def fingerprint(self) -> str:
        """A hash of every image byte and label: equal fingerprints mean the same split, in the same order.

        About 0.1 s for 50k images; a resumed run compares it to refuse training on other data.
        """
        h = hashlib.sha1(self.images.cpu().contiguous().numpy().data.cast("B"))
        h.update(self.labels.cpu().to(torch.int64).contiguous().numpy().data.cast("B"))
        h.update("|".join(self.classes).encode())
        return h.hexdigest()[:16]

    def skipped_files(self) -> list:
        """Paths of the images that could not be read (and so are not in the set)."""
        return list(self.problems.get("unreadable files", []))


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
            "or use an ImageFolder copy that has train/ and test/: --data folder --data-dir DIR "
            "(in Python: data='folder', data_dir=DIR)."
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes), "cifar10")


def data_dir_problem(data_dir) -> str | None:
    """What is wrong with a data folder's path, as the end of a sentence naming it (None: a folder)."""
    path = Path(data_dir)
    if path.is_dir():
        return None
    return "is a file, not a folder: give the folder holding train/ and test/" if path.exists() else "does not exist"


def _list_folder(root: Path, split: str):
    """Validate the layout and return (classes, [(path, label), ...]) for one split."""
    if data_dir_problem(root):
        raise DataError(f"data folder {root} {data_dir_problem(root)}; pass --data-dir DIR (in Python: "
                        "data_dir=DIR), a folder holding train/ and test/")
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
        # class folders may be symlinks (iterdir follows them); only their direct children are
        # read, so a link loop cannot recurse. Broken image links stay in: _decode skips and counts them
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
            if im.mode.startswith("I"):  # 16/32-bit grayscale: convert("RGB") would clip it to white
                problems["converted to RGB"] = problems.get("converted to RGB", 0) + 1
                im = Image.fromarray(_to_uint8(np.asarray(im), im.mode)).convert("RGB")
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


def _to_uint8(a, mode: str):
    """A 16-bit (or 32-bit integer) grayscale array on the 0..255 scale."""
    import numpy as np

    a = a.astype(np.float64)
    # "I;16*" is 16-bit by definition; "I" holds whatever the file had: 16-bit when above 255
    if mode.startswith("I;16") or a.max() > 255:
        a = a / 257  # 65535 -> 255
    return a.round().clip(0, 255).astype(np.uint8)


def _folder(root: Path, split: str, listing=None) -> ImageSet:
    import numpy as np

    classes, files = listing or _list_folder(root, split)
    problems, arrays, labels = {}, [], []
    for path, label in files:
        a = _decode(path, problems)
        if a is not None:
            arrays.append(a)
            labels.append(label)
    if not arrays:
        raise DataError(f"no readable images under {root / split}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    # the full list of unreadable files stays in `problems`: the note names the first few,
    # the run's config (checkpoint, history.json) keeps them all
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

def _cache_key(source: str, data_dir, split: str, files=()) -> str:
    """The cache file name of one split: `{source}-{split}-{slot}-{content}.pt`.

    `slot` names the source, resolved folder and split (one cache file is kept per slot);
    `content` hashes the listing of the files that are decoded (`_list_folder`'s), each file
    stat'ed through its symlinks: a replaced, added, removed or chmod'ed image changes the key even
    inside a symlinked class folder, and so does a link pointed elsewhere (the inode changes).
    Only class folders' direct children are listed, so a link loop cannot make this recurse.
    """
    where = str(Path(data_dir).resolve()) if data_dir else ""
    slot = hashlib.sha1(f"{source}|{where}|{split}".encode()).hexdigest()[:8]
    h = hashlib.sha1(f"{slot}|v3".encode())
    for f, label in files:
        try:
            # follows symlinks: the target's size, mtime, inode, and permissions (an image skipped
            # as unreadable is decoded once chmod has made it readable)
            st = os.stat(f)
            h.update(f"{f}:{label}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_mode:o}\n".encode())
        except OSError as e:  # a dangling link or a link loop: _decode skips and counts it
            h.update(f"{f}:{label}:errno {e.errno}\n".encode())
    return f"{source}-{split}-{slot}-{h.hexdigest()[:12]}.pt"


def _read_cache(path: Path, log=print):
    """The cached ImageSet, or None (with a one-line note) when the file is damaged."""
    try:
        d = torch.load(path, weights_only=True)
        ds = ImageSet(d["images"], d["labels"], list(d["classes"]), d["source"], dict(d["problems"]))
        if ds.images.dtype != torch.uint8 or ds.images.shape[1:] != (3, SIZE, SIZE) or len(ds.images) != len(ds.labels):
            raise ValueError(f"unexpected contents {tuple(ds.images.shape)} {ds.images.dtype}")
        return ds
    except Exception as e:  # truncated, overwritten, or removed meanwhile: decoding again is always safe
        log(f"note: dataset cache {path} is unreadable ({type(e).__name__}); decoding the images again")
        return None


def _write_cache(path: Path, ds: ImageSet):
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic, through a temporary file of this process's own: an interrupted or failed save leaves
    # neither a half-written cache nor a stray temporary
    atomic_write(path, lambda f: torch.save(dict(images=ds.images, labels=ds.labels, classes=ds.classes,
                                                 source=ds.source, problems=ds.problems), f))
    # one file per slot: older versions of this split (~140 MB each for 45k images) are removed,
    # and so are files named by the old key scheme (source-split-<12 hex>.pt), never read again
    source, split, slot = path.name.split("-")[:3]
    for old in path.parent.glob(f"{source}-{split}-*.pt"):
        parts = old.stem.split("-")
        if old != path and (parts[2] == slot or len(parts) == 3):
            old.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- the validation split

# The validation split is drawn with this seed, never the run's: every seed of a benchmark and every trial of a
# sweep holds out the same images, so their validation accuracies compare the training, not the draw.
VAL_SEED = 20261201
VAL_FLAG = "validation split (--val / val=)"   # how messages name it, as checkpoint.DATA_IDENTITY does


def check_val(val):
    """The validation split's setting, normalised: None (no validation split) for None or 0; a number of
    images (an int >= 1) or a fraction of the training split (a float, 0 < val < 1) as given. Anything
    else is one DataError naming the fix."""
    if val is None or (type(val) in (int, float) and val == 0):
        return None
    hint = "give a number of images (5000) or a fraction of the training split (0.1); 0 or None: no validation split"
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise DataError(f"{VAL_FLAG} {val!r}: {hint}")
    if val != val or val < 0:   # NaN or negative
        raise DataError(f"{VAL_FLAG} {val!r} is negative or not a number: {hint}")
    if isinstance(val, float) and val >= 1:
        count = f" (--val {int(val)} / val={int(val)})" if val.is_integer() and val > 1 else ""
        raise DataError(f"{VAL_FLAG} {val!r}: a fraction must lie below 1 (0.1 is 10 % of the training split); "
                        f"a number of images is a whole number{count}")
    return val


def val_size(val, n_train: int, min_train: int = 1) -> int:
    """How many of `n_train` training images the validation split `val` takes (0 without one): a count as
    given, a fraction rounded (at least one image). A split that leaves fewer than `min_train` images to
    train on (one batch: the loader drops a partial one) is one DataError naming the fixes."""
    val = check_val(val)
    if val is None:
        return 0
    n = int(val) if isinstance(val, int) else max(1, round(val * n_train))
    if n_train - n < min_train:
        share = f" ({val:.0%})" if isinstance(val, float) else ""
        most = f" (at most {n_train - min_train} images)" if n_train > min_train else ""
        raise DataError(f"{VAL_FLAG} {val!r} takes {n} of the {n_train} training images{share}, leaving "
                        f"{max(0, n_train - n)}, fewer than one batch of {min_train}: lower --val / val={most}, "
                        "raise --limit / limit=, or lower --batch-size / batch_size=")
    return n


def split_validation(train: ImageSet, val, min_train: int = 1) -> tuple[ImageSet, ImageSet | None]:
    """(train, val): the training split without its validation split, and the validation split (None
    without one: `train` comes back as it is, the very same object).

    Class-balanced: the validation images are spread as evenly across classes as the count allows
    (balanced_subset's rule), each class's drawn at random with VAL_SEED, so the split is the same for
    every run seed, and a function of the training split and `val` only. Both parts keep the split's order.
    Apply `limit` first: the validation split is carved from what it leaves.
    """
    n = val_size(val, len(train), min_train)
    if n == 0:
        return train, None
    k = len(train.classes)
    g = torch.Generator().manual_seed(VAL_SEED)
    held = []
    for c in range(k):
        idx = (train.labels == c).nonzero().flatten()
        share = n // k + (c < n % k)
        if share >= len(idx) and share > 0:
            raise DataError(f"{VAL_FLAG} {val!r}: {share} validation images of class {train.classes[c]!r}, which "
                            f"has {len(idx)} training images, would leave none of it to train on: lower --val / "
                            "val=, or raise --limit / limit=")
        held.append(idx[torch.randperm(len(idx), generator=g)[:share]])
    val_idx = torch.cat(held).sort().values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().flatten()
    return (ImageSet(train.images[train_idx], train.labels[train_idx], train.classes, train.source, train.problems),
            ImageSet(train.images[val_idx], train.labels[val_idx], train.classes, train.source))


def load_split(source: str, split: str, data_dir=None, limit: int | None = None,
               cache_dir=None, log=print) -> ImageSet:
    """One split of one source as an ImageSet, decoded once and cached on disk.

    `log`: where its one-line notes go (a damaged cache, images fixed or skipped); None: nowhere."""
    log = log or (lambda msg: None)
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose train or test")
    if source == "synthetic":
        return balanced_subset(synthetic(split), limit)
    if source == "folder" and not data_dir:
        raise DataError("data='folder' needs data_dir (--data-dir DIR on the command line): "
                        "a folder holding train/<class>/ and test/<class>/")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    # the listing fails fast with a clear message, and is both the cache key and what gets decoded
    listing = _list_folder(Path(data_dir), split) if source == "folder" else None
    path = cache_dir / _cache_key(source, data_dir, split, listing[1] if listing else ())
    ds = _read_cache(path, log) if path.exists() else None
    if ds is None:
        ds = _cifar10(split, cache_dir) if source == "cifar10" else _folder(Path(data_dir), split, listing)
        try:
            _write_cache(path, ds)
        except OSError as e:  # the cache is a speed-up only: a read-only or full disk must not stop a run
            log(f"note: the dataset cache {cache_dir} cannot be written ({e.strerror or e}): continuing from "
                  "memory (the images are decoded again next run); set CIFAR_CACHE to a writable folder")
    if ds.problems:
        log(f"note: {source}/{split}: {problem_summary(ds)}")
    return balanced_subset(ds, limit)


def problem_summary(ds: ImageSet, names: int = 3) -> str:
    """One line: the counts of fixed and skipped images, and the first skipped files' names."""
    counts = ", ".join(f"{k}: {v}" for k, v in ds.problems.items() if isinstance(v, int))
    skipped = ds.skipped_files()
    if skipped:
        more = f" and {len(skipped) - names} more" if len(skipped) > names else ""
        counts += f"; unreadable: {', '.join(skipped[:names])}{more} (all listed in the run's history.json)"
    return counts


def load_splits(source: str, data_dir=None, limit: int | None = None, cache_dir=None, log=print):
    """(train, test) ImageSets; `limit` caps each split (class-balanced)."""
    return tuple(load_split(source, s, data_dir, limit, cache_dir, log) for s in SPLITS)


def channel_stats(images: torch.Tensor):
    """Per-channel mean and std of uint8 images, on the 0..1 scale."""
    x = images.float().div_(255)
    # a constant channel (e.g. grey-scale images stored as RGB with one flat channel) has std 0:
    # floor it, or normalising divides by zero and the whitening init fails on NaNs
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1 / 255).tolist()

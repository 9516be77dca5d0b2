import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_FAST, make_folder
from helpers import data as D
from helpers.checkpoint import HISTORY
from helpers.data import DataError, channel_stats, load_split, load_splits
from helpers.loader import Loader
from helpers.registry import build_model
from helpers.run import Trial, train
from helpers.train import main as train_main

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_synthetic_shapes_and_balance():
    train, test = load_splits("synthetic")
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert len(train) > len(test) > 0
    assert len(set(train.counts().values())) == 1


def test_folder_source_reads_images_and_labels(tmp_path):
    root = make_folder(tmp_path / "ds", solid=True)
    train, test = load_splits("folder", root)
    assert train.classes == ["cat", "dog"] and len(train) == 8
    assert train.images.shape == (8, 3, 32, 32) and train.labels.tolist() == [0] * 4 + [1] * 4
    assert train.images[4, 0, 0, 0] == 40  # red channel of the first dog image


def test_non_rgb_converted_and_corrupt_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "ds", solid=True)
    Image.new("L", (32, 32), 7).save(root / "train" / "cat" / "gray.png")
    Image.new("RGB", (64, 48)).save(root / "train" / "cat" / "big.png")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    train = load_split("folder", "train", root)
    assert len(train) == 10
    assert train.problems["converted to RGB"] == 1
    assert train.problems["resized to 32x32"] == 1
    assert train.problems["skipped (unreadable)"] == 1
    assert train.problems["unreadable files"][0].endswith("broken.jpg")


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds", solid=True)
    first = load_split("folder", "train", root)
    calls = []
    monkeypatch.setattr(D, "_folder", lambda *a: calls.append(a) or first)
    again = load_split("folder", "train", root)
    assert calls == [] and torch.equal(again.images, first.images)
    Image.new("RGB", (32, 32)).save(root / "train" / "cat" / "new.png")
    load_split("folder", "train", root)
    assert len(calls) == 1  # a changed listing is decoded anew


@pytest.mark.parametrize("breakage, message", [
    ("no_root", "does not exist"),
    ("no_test", "test is missing"),
    ("class_mismatch", "class folders differ"),
    ("empty_class", "holds no images"),
])
def test_folder_errors_name_the_path(tmp_path, breakage, message):
    root = tmp_path / "ds"
    if breakage != "no_root":
        make_folder(root, splits=("train",) if breakage == "no_test" else ("train", "test"), solid=True)
    if breakage == "class_mismatch":
        (root / "test" / "bird").mkdir()
        Image.new("RGB", (32, 32)).save(root / "test" / "bird" / "0.png")
    if breakage == "empty_class":
        (root / "train" / "bird").mkdir()
        (root / "test" / "bird").mkdir()
    with pytest.raises(DataError, match=message) as e:
        load_splits("folder", root)
    assert str(root) in str(e.value)


def test_folder_without_dir_and_unknown_source():
    with pytest.raises(DataError, match="needs data_dir"):
        load_split("folder", "train")
    with pytest.raises(DataError, match="cifar10, folder, synthetic"):
        load_split("imagenet", "train")


def test_cifar10_offline_error_says_how_to_fix(monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="cifar-10-batches-py.*data='folder'"):
        load_split("cifar10", "train")


def test_cifar10_reads_a_local_copy(monkeypatch):
    import numpy as np
    import torchvision

    class Local:  # what torchvision gives for an already-extracted copy
        def __init__(self, root, train, download):
            n = 6 if train else 2
            self.data = np.full((n, 32, 32, 3), 9, np.uint8)
            self.targets = list(range(n))
            self.classes = CIFAR10_CLASSES
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Local)
    train, test = load_splits("cifar10")
    assert train.images.shape == (6, 3, 32, 32) and len(test) == 2 and train.classes[0] == "airplane"


def test_limit_is_class_balanced():
    train = load_split("synthetic", "train", limit=25)
    assert len(train) == 25
    assert sorted(train.counts().values()) == [2] * 5 + [3] * 5
    with pytest.raises(DataError, match="limit"):
        load_split("synthetic", "train", limit=-1)


def test_jpeg_dev_slice(jpeg_dev_slice):
    train, test = load_splits("folder", jpeg_dev_slice)
    assert train.classes == CIFAR10_CLASSES
    assert len(train) == len(test) == 100 and train.problems == {}
    mean, _ = D.channel_stats(train.images)
    assert all(0.3 < m < 0.6 for m in mean)


def test_corrupt_cache_is_rebuilt_with_a_note(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    first = D.load_split("folder", "train", root)
    (cache,) = D.default_cache_dir().glob("folder-train-*.pt")
    os.truncate(cache, cache.stat().st_size // 2)
    capsys.readouterr()
    again = D.load_split("folder", "train", root)
    assert torch.equal(again.images, first.images)
    out = capsys.readouterr().out
    assert "unreadable" in out and "decoding the images again" in out and out.count("\n") == 1
    assert D._read_cache(cache) is not None             # rewritten whole


def test_cache_follows_symlinked_class_folders_and_keeps_one_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    elsewhere = tmp_path / "elsewhere" / "cat"
    elsewhere.parent.mkdir()
    (root / "train" / "cat").rename(elsewhere)
    (root / "train" / "cat").symlink_to(elsewhere, target_is_directory=True)
    first = D.load_split("folder", "train", root)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(elsewhere / "0.png")   # replaced behind the link
    replaced = D.load_split("folder", "train", root)
    assert not torch.equal(replaced.images, first.images) and replaced.images[0].min() == 255
    Image.new("RGB", (32, 32)).save(elsewhere / "new.png")                  # added behind the link
    assert len(D.load_split("folder", "train", root)) == len(first) + 1
    assert len(list(D.default_cache_dir().glob("folder-train-*.pt"))) == 1  # older versions removed
    D.load_split("folder", "train", make_folder(tmp_path / "other"))        # another folder: its own slot
    assert len(list(D.default_cache_dir().glob("folder-train-*.pt"))) == 2


@pytest.mark.parametrize("how", ["parent is a file", "disk full mid-write"])
def test_an_unwritable_dataset_cache_falls_back_to_memory(tmp_path, monkeypatch, capsys, how):
    import errno
    folder = make_folder(tmp_path / "imgs")
    if how == "parent is a file":
        (tmp_path / "blocked").write_text("")
        cache = tmp_path / "blocked" / "cache"
    else:
        cache = tmp_path / "cache"

        def full(obj, f, *a, **k):
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", full)
    ds = D.load_split("folder", "train", data_dir=folder, cache_dir=cache)
    assert len(ds) == 8 and "cannot be written" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tmp"))  # no partial file left in the cache


def test_a_chmod_changes_the_cache_key(tmp_path):
    """An image skipped for a permission error is decoded again once it is readable."""
    folder = make_folder(tmp_path / "imgs")
    files = D._list_folder(folder, "train")[1]
    before = D._cache_key("folder", folder, "train", files)
    os.chmod(files[0][0], 0o000)
    try:
        assert D._cache_key("folder", folder, "train", files) != before
    finally:
        os.chmod(files[0][0], 0o644)


# --------------------------------------------------------------------------- bad images and inputs


def test_broken_symlinks_are_skipped_counted_and_named(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "cat" / "loop.jpg").symlink_to(root / "train" / "cat" / "loop.jpg")   # ELOOP
    (root / "train" / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")              # dangling
    split = D.load_split("folder", "train", root)
    assert len(split) == 8 and split.problems["skipped (unreadable)"] == 2
    assert sorted(os.path.basename(f) for f in split.skipped_files()) == ["gone.jpg", "loop.jpg"]
    out = capsys.readouterr().out
    assert "loop.jpg" in out and "gone.jpg" in out
    record = train(out_dir=tmp_path / "r", **dict(SMALL_FAST, data="folder", data_dir=root, limit=None,
                                                     batch_size=4, epochs=1))
    assert len(record.config["skipped_files"]["train"]) == 2
    saved = json.loads((tmp_path / "r" / HISTORY).read_text())["config"]["skipped_files"]
    assert sorted(os.path.basename(f) for f in saved["train"]) == ["gone.jpg", "loop.jpg"]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    root = make_folder(tmp_path / "ds")
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(root / "train" / "cat" / "deep.png")
    train = D.load_split("folder", "train", root)
    deep = train.images[train.labels == 0][-1]
    assert deep.unique().tolist() == [128]               # 32768 / 257, not 255


def test_split_smaller_than_one_batch_says_so(tmp_path, capsys):
    with pytest.raises(D.DataError, match=r"20 images, fewer than one batch \(batch_size 40\).*--limit.*--batch-size"):
        Trial(**{**SMALL_FAST, "limit": 20}).setup()
    assert train_main(["--data", "synthetic", "--limit", "20", "--batch-size", "40", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewer than one batch" in err


def test_data_errors_name_the_cli_flag_and_the_python_argument(tmp_path):
    for call in (lambda: D.load_split("folder", "train"), lambda: D.load_split("folder", "train", tmp_path / "no"),
                 lambda: Trial(data="folder")):
        with pytest.raises(ValueError) as e:
            call()
        assert "--data-dir" in str(e.value) and "data_dir" in str(e.value).replace("--data-dir", "")


def test_a_constant_colour_channel_still_trains():
    # std 0 in one channel would divide by zero when normalising and break the whitening init
    ds = load_split("synthetic", "train", limit=120)
    ds.images[:, 2] = 128
    mean, std = channel_stats(ds.images)
    assert min(std) > 0
    x, _ = next(iter(Loader(ds, 40, train=False, mean=mean, std=std)))
    net = build_model("fast")
    net.prep.init_whitening(x)
    assert torch.isfinite(net(x)).all()


# --------------------------------------------------------------------------- the validation split

def numbered(n=200, classes=10):
    """An ImageSet whose image i carries i in its first pixel (so each image's origin can be read back),
    labels shuffled as a real split's are."""
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = torch.arange(n) % 256, torch.arange(n) // 256
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=torch.Generator().manual_seed(5))]
    return D.ImageSet(images, labels, [f"c{i}" for i in range(classes)], "numbered")


def origin(ds):
    return (ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 1, 0, 0].long()).tolist()


@pytest.mark.parametrize("val, held", [(50, 50), (0.1, 20), (7, 7)])
def test_the_validation_split_is_balanced_disjoint_and_independent_of_any_seed(val, held):
    ds = numbered()
    torch.manual_seed(0)
    train, v = D.split_validation(ds, val, min_train=50)
    torch.manual_seed(123)   # the global seed (a run's) plays no part: the split has a seed of its own
    again_train, again_v = D.split_validation(numbered(), val, min_train=50)
    assert origin(v) == origin(again_v) and origin(train) == origin(again_train)
    assert len(v) == held and len(train) == 200 - held
    assert not set(origin(v)) & set(origin(train)) and sorted(origin(v) + origin(train)) == list(range(200))
    assert origin(train) == sorted(origin(train)) and origin(v) == sorted(origin(v))   # the split's order kept
    assert max(v.counts().values()) - min(v.counts().values()) <= 1                   # class-balanced
    assert [(v.labels == c).sum() for c in range(10)] == [(ds.labels[origin(v)] == c).sum() for c in range(10)]


def test_no_validation_split_is_the_split_itself():
    ds = numbered()
    for none in (None, 0, 0.0):
        train, v = D.split_validation(ds, none)
        assert train is ds and v is None


@pytest.mark.parametrize("val, message", [
    (-5, "-5 is negative"),
    (1.0, "a fraction must lie below 1"),
    (5000.0, r"a number of images is a whole number \(--val 5000 / val=5000\)"),
    ("10%", "give a number of images"),
    (True, "give a number of images"),
    (200, r"takes 200 of the 200 training images, leaving 0, fewer than one batch of 50: lower --val / val= "
          r"\(at most 150 images\), raise --limit / limit=, or lower --batch-size / batch_size="),
    (0.9, r"takes 180 of the 200 training images \(90%\), leaving 20, fewer than one batch of 50"),
])
def test_a_bad_validation_split_is_one_error_naming_the_fix(val, message):
    with pytest.raises(DataError, match=r"^validation split \(--val / val=\) .*" + message):
        D.split_validation(numbered(), val, min_train=50)

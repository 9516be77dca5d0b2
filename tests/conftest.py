import os
from pathlib import Path

import pytest
import torch

# keep tests quiet and repeatable whatever the machine
os.environ.setdefault("CI", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

JPEG_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg-dev"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # every test gets its own dataset cache, so no test sees another's decoded files
    monkeypatch.setenv("CIFAR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def jpeg_dev_slice(tmp_path):
    """A 10-per-class ImageFolder of symlinks into the JPEG dev split; skipped when absent."""
    if not JPEG_DEV.is_dir():
        pytest.skip(f"{JPEG_DEV} not present")
    root = tmp_path / "slice"
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (JPEG_DEV / split).iterdir()):
            d = root / split / cls
            d.mkdir(parents=True)
            for f in sorted((JPEG_DEV / split / cls).iterdir())[:10]:
                (d / f.name).symlink_to(f)
    return root


# --------------------------------------------------------------------------- the sweep's tests share these
# (tests/test_sweep_*.py: `from conftest import TINY, ...`); Optuna is imported only in them

PROJECT = Path(__file__).resolve().parents[1]
# tiny synthetic trials: 200 images per split, batches of 50, one thread per worker
TINY = ["--data", "synthetic", "--limit", "200", "--batch-size", "50", "--threads", "1"]
SPACE = {"lr": {"log": [0.1, 1.0]}, "label_smoothing": [0.0, 0.3]}


def sweep_cli(*args, root, check=True, timeout=300):
    """The sweep CLI in its own process, as a user (or a second machine) would start it."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    result = subprocess.run([sys.executable, "-m", "helpers.sweep", *args, "--root", str(root)], cwd=PROJECT,
                            env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def space_file(tmp_path, space=SPACE):
    import json

    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    return str(path)


def trials_of(root, study, storage=None):
    from helpers.sweep.study import load_study

    return load_study(study, storage, root).get_trials(deepcopy=False)


def study_of(settings: dict):
    """An in-memory study made with these settings, holding two finished trials: val acc 0.6 and 0.7, test acc
    0.55 and 0.5."""
    import optuna

    from helpers.recipes import get_recipe

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("settings", settings)
    dist = {"lr": optuna.distributions.FloatDistribution(0.1, 1.0)}
    for value, test in ((0.6, 0.55), (0.7, 0.5)):
        history = [dict(epoch=1, test_acc=test, val_acc=value)]
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.5}, distributions=dist, value=value,
                                                  intermediate_values={1: value},
                                                  user_attrs=dict(history=history, test_acc=test,
                                                                  recipe=get_recipe("fast").to_dict())))
    return study


# --------------------------------------------------------------------------- the training tests share these
# (test_run, test_checkpoint, test_loop, test_data, test_device, test_registry ...: `from conftest import SMALL, ...`)

# two epochs on 120 synthetic images in batches of 40: a whole run in about a second on a CPU
SMALL = dict(data="synthetic", limit=120, device="cpu", progress=False, batch_size=40, epochs=2)
SMALL_FAST = dict(SMALL, recipe="fast")


def outcome(history):
    """A history (or a Record's) without its timings and memory, which differ between identical runs."""
    history = getattr(history, "history", history)
    return [{k: v for k, v in e.items() if "seconds" not in k and k != "peak_rss_mb"} for e in history]


def noise(seed):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def make_folder(root, n=4, classes=("cat", "dog"), splits=("train", "test"), solid=False):
    """An ImageFolder root of n PNGs per class and split. Random noise: every channel varies, so normalization
    and whitening are well defined; solid=True: one colour per image, (40 * class, 10 * index, 100)."""
    from PIL import Image

    for split in splits:
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                image = (Image.new("RGB", (32, 32), (40 * i, 10 * k, 100)) if solid
                         else noise(100 + 1000 * (split == "test") + 10 * i + k))
                image.save(d / f"{k}.png")
    return root

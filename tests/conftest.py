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

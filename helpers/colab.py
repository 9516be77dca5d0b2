"""Google Colab as it behaves: every notebook runs in a runtime (a machine) of its own, and Google Drive
is the one thing runtimes share. Drive is mounted once per runtime (Colab asks for permission) and
written back asynchronously: another runtime sees this one's files only once they are pushed, which
`drive.flush_and_unmount()` forces.

    my_drive()                   # /content/drive/MyDrive, mounted first (Colab asks once per runtime)
    project_folder()             # My Drive/cifar10-small-cnn: runs, sweeps, your model file
    on_drive(path)               # does this path lie on the Drive mount?
    flush_drive(log)             # push this runtime's writes, so the next notebook's runtime sees them

`CIFAR_DRIVE_MOUNT` moves the mount point (the tests' stand-in Drive). Nothing here runs at import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import UserError

# the project's folder in "My Drive"
DRIVE_FOLDER = "cifar10-small-cnn"
# how long another runtime may take to show files this one wrote, as Colab users report it
DRIVE_DELAY = "a minute or more"


def in_colab() -> bool:
    """Is this a Colab kernel? (Colab's kernels start with google.colab imported.)"""
    return "google.colab" in sys.modules


def drive_mount() -> Path:
    """Where Google Drive is mounted: Colab's /content/drive (CIFAR_DRIVE_MOUNT moves it)."""
    return Path(os.environ.get("CIFAR_DRIVE_MOUNT", "/content/drive"))


def on_drive(path) -> bool:
    """True when `path` lies under the Drive mount point. Compared as written, without following links
    (Drive's own folders are what the mount shows, wherever a stand-in links them)."""
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(drive_mount()))
        return True
    except ValueError:
        return False


def _drive_module():
    try:
        from google.colab import drive  # type: ignore
    except ImportError:
        return None
    return drive


def my_drive() -> Path:
    """The mounted "My Drive" folder, mounting it first when this runtime has not (Colab asks for
    permission once per runtime). Outside Colab, one line saying where Drive is available."""
    folder = drive_mount() / "MyDrive"
    if not folder.is_dir():
        drive = _drive_module()
        if drive is None:
            raise UserError(f"Google Drive is mounted in Colab only, and {folder} is not here: outside Colab, "
                            "give a path on this machine instead")
        drive.mount(str(drive_mount()))
    return folder


def project_folder() -> Path:
    """The project's folder in My Drive (mounted first): My Drive/cifar10-small-cnn."""
    return my_drive() / DRIVE_FOLDER


def flush_drive(log=print) -> bool:
    """Push this runtime's writes to Google Drive and unmount it (Colab's `drive.flush_and_unmount()`), so
    that a notebook opened next, in a runtime of its own, finds them. A later cell that needs Drive mounts
    it again (`my_drive`). Returns whether there was a mounted Drive to flush."""
    drive = _drive_module()
    if drive is None or not (drive_mount() / "MyDrive").is_dir():
        return False
    drive.flush_and_unmount()
    log("Google Drive flushed and unmounted: this runtime's files are pushed, so the next notebook (in a runtime "
        "of its own) can read them; a later cell that needs Drive mounts it again")
    return True

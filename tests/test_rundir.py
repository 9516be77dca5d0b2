"""helpers/rundir.py, a run folder's safety: one writer at a time, and a folder that cannot be used is one
line before any training."""
import json
import os

import pytest

from conftest import SMALL_FAST
from helpers.checkpoint import CHECKPOINT
from helpers.run import Trial
from helpers.train import main as train_main


def test_a_run_folder_in_use_is_refused_in_one_line_and_freed_when_done(tmp_path):
    import subprocess
    import sys
    from helpers import rundir
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "training"
    try:
        (run / rundir.LOCK).write_text(json.dumps(dict(pid=other.pid, host=rundir.socket.gethostname(),
                                                       started="2026-11-30 10:00:00")))
        with pytest.raises(rundir.RunFolderError, match=f"in use by another run \\(process {other.pid} on") as e:
            Trial(out_dir=run, **SMALL_FAST).setup()
        assert "\n" not in str(e.value) and "choose another folder (--out / out_dir=)" in str(e.value)
        assert not (run / CHECKPOINT).exists()
    finally:
        other.kill()
        other.wait()
    # its process has ended: the lock is stale, taken over with a note; the finished run frees it
    record = Trial(out_dir=run, **SMALL_FAST).run()
    assert len(record.history) == 2 and not (run / rundir.LOCK).exists()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path, capsys):
    from helpers import rundir
    (tmp_path / rundir.LOCK).write_text(json.dumps(dict(pid=1, host="colab-vm-a", started="then")))
    with pytest.raises(rundir.RunFolderError, match="colab-vm-a"):
        rundir.RunLock(tmp_path).acquire()            # touched just now: that runtime may still train
    old = os.path.getmtime(tmp_path / rundir.LOCK) - rundir.STALE - 1
    os.utime(tmp_path / rundir.LOCK, (old, old))       # a disconnected Colab runtime: no heartbeat since
    lock = rundir.RunLock(tmp_path).acquire()
    assert "taking over" in capsys.readouterr().out and lock.owner()["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / rundir.LOCK).exists()


@pytest.mark.parametrize("layout, message", [("file", "is a file, not a folder"),
                                             ("parent-file", "is a file; choose another folder")])
def test_an_unusable_out_folder_is_one_line_before_any_training(tmp_path, layout, message, capsys):
    (tmp_path / "x").write_text("not a folder")
    out = tmp_path / "x" if layout == "file" else tmp_path / "x" / "run"
    assert train_main(["--data", "synthetic", "--limit", "120", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert message in err.err and len(err.err.strip().splitlines()) == 1 and "epoch" not in err.out


def test_an_unwritable_out_folder_is_one_line_before_any_training(tmp_path, monkeypatch):
    from pathlib import Path
    from helpers import rundir

    def read_only(self, data):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(rundir.RunFolderError, match=r"cannot be written \(Read-only file system\)"):
        Trial(out_dir=tmp_path / "run", **SMALL_FAST).setup()


@pytest.mark.parametrize("on_drive", [True, False])
def test_a_lock_on_drive_says_it_is_best_effort(tmp_path, monkeypatch, capsys, on_drive):
    """On Google Drive another runtime's lock and heartbeat can show late: the messages say the lock is
    best-effort there, and say nothing of Drive elsewhere."""
    from helpers import rundir
    monkeypatch.setenv("CIFAR_DRIVE_MOUNT", str(tmp_path / "drive"))
    run = (tmp_path / "drive" / "MyDrive" if on_drive else tmp_path / "disk") / "run"
    run.mkdir(parents=True)
    lock = run / rundir.LOCK
    lock.write_text(json.dumps(dict(pid=1, host="colab-vm-a", started="then")))
    with pytest.raises(rundir.RunFolderError, match="in use by another run") as e:
        Trial(out_dir=run, **SMALL_FAST).setup()   # the lock as training takes it
    best_effort = ("on Google Drive this lock is best-effort: another runtime's lock and heartbeat may reach Drive "
                   "late, so it cannot promise that only one run uses the folder")
    assert (best_effort in str(e.value)) == on_drive and "\n" not in str(e.value)
    old = os.path.getmtime(lock) - rundir.STALE - 1
    os.utime(lock, (old, old))                     # that runtime's heartbeat stopped (or has not reached Drive)
    trial = Trial(out_dir=run, **SMALL_FAST)
    trial.setup()
    note = next(line for line in capsys.readouterr().out.splitlines() if "taking over" in line)
    assert (best_effort in note) == on_drive and ("stop one of the two" in note) == on_drive
    trial.lock.release()

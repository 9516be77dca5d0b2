"""A run folder's safety: writable before any training, one writer at a time, whole files or none.

    folder = check_writable(out_dir)      # creates it; a file, a read-only disk ... is one line, up front
    lock = RunLock(folder).acquire()      # a second training on the same folder is refused in one line
    atomic_write(folder / "x.json", lambda f: f.write(b"..."))  # readers never see half a file
    lock.release()                        # also at exit; a lock whose process is gone is taken over

The lock is a file, `run.lock`, holding its owner's process id and host. While held, a background
thread touches it every HEARTBEAT seconds. A lock is stale, and taken over with a note, when its
process is gone (same host), or when it has not been touched for STALE seconds (another host: a Colab
runtime that disconnected with the run folder on Google Drive). The same process may take its own lock
again (a notebook cell run twice).

On Google Drive (`RunLock(folder, drive=True)`) the lock is best-effort and its messages say so: Drive
shows one runtime's files to another late, so another runtime's lock or heartbeat may not be visible
yet, and two runtimes can both take a lock there.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path

from .errors import UserError

LOCK = "run.lock"
# said with the lock's messages for a folder on Google Drive: there it cannot promise one writer
DRIVE_NOTE = ("on Google Drive this lock is best-effort: another runtime's lock and heartbeat may reach Drive late, "
              "so it cannot promise that only one run uses the folder")
HEARTBEAT = 30.0   # seconds between touches of a held lock
STALE = 150.0      # a lock from another host untouched this long belongs to a run that is gone


class RunFolderError(UserError):
    """A run folder that cannot be used: not writable, a file, or in use by another run."""


class RunExistsError(RunFolderError, FileExistsError):
    """A run folder that already holds a run, asked to start one anew: resume it or choose another folder."""


def check_writable(out_dir, create: bool = True) -> Path:
    """Prove a file can be written in `out_dir` (created if `create`, else its nearest existing parent
    is tried), before any data is read or any epoch trained; one line naming the folder and the fix
    otherwise."""
    path = Path(out_dir)
    fix = "choose another folder (--out / out_dir=)"
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"the run folder {path} is a file, not a folder: {fix}")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunFolderError(f"the run folder {path} cannot be created: {blocker} is a file; {fix}")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"the run folder {path} cannot be created ({e.strerror}): {fix}") from None
    where = path if path.is_dir() else next(p for p in path.parents if p.is_dir())
    probe = where / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as e:
        raise RunFolderError(f"the run folder {path} cannot be written ({e.strerror}): "
                             f"free some space, make it writable, or {fix}") from None
    finally:
        probe.unlink(missing_ok=True)
    return path


def atomic_write(path, write):
    """Write `path` through a temporary file of this process's own, then rename it over `path`: a crash,
    a full disk or a second writer never leaves half a file, and a failed write leaves no temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """The run folder's one-writer lock (see the module docstring)."""

    def __init__(self, out_dir, drive: bool = False):
        self.path = Path(out_dir) / LOCK
        self.drive = drive   # the folder is on Google Drive (colab.on_drive): the lock is best-effort there
        self.held = False
        self._stop = threading.Event()

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict | None) -> str | None:
        """Why the existing lock may be taken over (None: it may not)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "gone"
        if owner is None:  # being written this instant, or left empty by a crash
            return "unreadable and old" if age > 10 else None
        if owner.get("host") == socket.gethostname():
            if owner.get("pid") == os.getpid():
                return "ours"
            return None if _alive(int(owner.get("pid", -1))) else f"process {owner.get('pid')} has ended"
        return f"not touched for {age:.0f} s by host {owner.get('host')}" if age > STALE else None

    def acquire(self, log=print) -> "RunLock":
        if self.held:
            return self
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                why = self._stale(owner)
                if why is None:
                    who = (f"process {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
                           if owner else "a process that is starting")
                    raise RunFolderError(
                        f"the run folder {self.path.parent} is in use by another run ({who}): wait for it to "
                        f"finish, or choose another folder (--out / out_dir=). If no run is using it (a "
                        f"notebook kernel that was stopped mid-run, say), restart that kernel or delete "
                        f"{self.path}" + (f" ({DRIVE_NOTE})" if self.drive else "")) from None
                if why not in ("ours", "gone"):
                    log(f"note: taking over {self.path}: {why}" + (
                        f"; {DRIVE_NOTE}: if another runtime may still be training into this folder, stop one "
                        "of the two" if self.drive else ""))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._stop.clear()
            threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat").start()
            atexit.register(self.release)
            return self
        raise RunFolderError(f"could not take {self.path}: other processes keep taking it; choose another "
                             "folder (--out / out_dir=)")

    def _beat(self):
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self):
        """Give the folder back (only if this process still owns the lock)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

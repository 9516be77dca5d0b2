"""Colab as students use it: every notebook in a runtime of its own, nothing shared but Google Drive.

Each "runtime" is a fresh copy of the project, a fresh kernel that starts with a stand-in
`google.colab` imported (as Colab's kernels do) and that does not show a child process's output (as
Colab's does not), and a dataset cache of its own. The stand-in's `drive.mount` links one shared folder
as My Drive; its `flush_and_unmount` records the call and unmounts. The notebooks run with papermill, in
order: 02 -> 03 -> 04 with a student's model file (which 04's runtime does not have); 02 -> 03 -> 04 with
the model file on Drive (02 puts the example there); a 04 that finds no run; 05 with its defaults; and the
setup cell itself, in a runtime with no project yet, with a git that fails and one that pulls.
"""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a fresh clone holds: everything but what .gitignore keeps out of the repository
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.pyc", ".pytest_cache", "executed",
                                        "build", "*.egg-info")

DRIVE_STAND_IN = '''
"""Stand-in for google.colab.drive: mount() links the test's shared folder as MyDrive."""
import os
from pathlib import Path

mounted = []


def mount(mountpoint, force_remount=False):
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    link = Path(mountpoint) / "MyDrive"
    if not link.exists():
        link.symlink_to(os.environ["FAKE_MY_DRIVE"], target_is_directory=True)
    mounted.append(mountpoint)
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
    """Records the call in the shared log (every runtime is a process of its own), then unmounts."""
    with open(os.environ["FAKE_DRIVE_LOG"], "a") as log:
        print("flush", os.environ["CIFAR_DRIVE_MOUNT"], file=log)
    (Path(os.environ["CIFAR_DRIVE_MOUNT"]) / "MyDrive").unlink()
'''

STUDENT_NET = '''
import torch.nn as nn
from helpers.model import ConvBlock, ConvBNReLU, DepthwiseSeparableConv, Head, TransitionBlock


class Pool(TransitionBlock):
    """The student's own transition: a subclass."""


class TinyNet(nn.Sequential):
    def __init__(self, num_classes=10):
        super().__init__(ConvBlock([3, 16], unit=ConvBNReLU), Pool(16),
                         ConvBlock([16, 16], unit=ConvBNReLU, dilation=2), Pool(16),
                         ConvBlock([16, 32], unit=ConvBNReLU, conv=DepthwiseSeparableConv), Pool(32),
                         Head(32, num_classes))
'''

SMALL = dict(data="synthetic", recipe="fast", limit=200, epochs=1, batch_size=50, progress=False)


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    base = tmp_path_factory.mktemp("colab")
    (base / "my-drive").mkdir()                       # Google Drive: the one thing runtimes share
    package = base / "stand-in" / "google" / "colab"  # `google` stays a namespace package
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from . import drive  # noqa: F401\n")
    (package / "drive.py").write_text(DRIVE_STAND_IN)
    startup = base / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # noqa: F401  (Colab's kernels start with it)\n")
    # Colab's kernel does not forward what a child process writes to its stdout and stderr (local Jupyter does)
    (base / "ipython" / "profile_default" / "ipython_kernel_config.py").write_text(
        "c.IPKernelApp.capture_fd_output = False\n")
    return base


def runtime(colab, name: str, notebook: str, parameters: dict, files: dict | None = None, drop=(), cwd=None,
            env=None):
    """Run one notebook in a runtime of its own; returns (executed notebook, its project copy, error or None).
    `cwd`: where the kernel starts (default: the project copy, as if the setup cell had cloned it)."""
    import papermill as pm

    machine = colab / name
    project = machine / "project"
    shutil.copytree(ROOT, project, ignore=NOT_IN_A_CLONE)
    for rel, text in (files or {}).items():
        (project / rel).write_text(text)
    for rel in drop:
        (project / rel).unlink()
    saved = dict(os.environ)
    os.environ.update(PYTHONPATH=str(colab / "stand-in"), IPYTHONDIR=str(colab / "ipython"),
                      FAKE_MY_DRIVE=str(colab / "my-drive"), CIFAR_DRIVE_MOUNT=str(machine / "content" / "drive"),
                      FAKE_DRIVE_LOG=str(colab / "drive.log"), CIFAR_CACHE=str(machine / "cache"), **(env or {}))
    executed = machine / notebook
    error = None
    try:
        pm.execute_notebook(str(project / "notebooks" / notebook), str(executed), parameters=parameters,
                            cwd=str(cwd or project), kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as e:
        error = e
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return json.loads(executed.read_text()), project, error


def text_of(nb) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def figures_of(nb) -> int:
    return sum(o["output_type"] == "display_data" for c in nb["cells"] for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def student_run(colab):
    """02 -> 03 -> 04, each in its own runtime, with the student's file in 02's and 03's copies only."""
    params = dict(SMALL, model="tinynet.py:TinyNet", use_drive=True)
    student = {"tinynet.py": STUDENT_NET}
    nb02, _, err02 = runtime(colab, "runtime-02", "02_model_summary.ipynb", params, files=student)
    nb03, _, err03 = runtime(colab, "runtime-03", "03_train.ipynb", params, files=student)
    nb04, project04, err04 = runtime(colab, "runtime-04", "04_analyze_errors.ipynb",
                                     dict(recipe="fast", model="tinynet.py:TinyNet", seed=0, use_drive=True))
    assert not (project04 / "tinynet.py").exists()
    return dict(nb02=nb02, nb03=nb03, nb04=nb04, errors=(err02, err03, err04), machines=colab,
                drive_log=colab / "drive.log", run=colab / "my-drive" / "cifar10-small-cnn" / "runs" / "fast-TinyNet-s0")


def test_each_notebook_runs_in_its_own_runtime_with_a_student_model(student_run):
    assert student_run["errors"] == (None, None, None), [str(e)[:2000] for e in student_run["errors"] if e]


def test_02_checks_summarises_and_draws_the_student_model_without_touching_drive(student_run):
    text = text_of(student_run["nb02"])
    assert "Mounted at" not in text and "[FAIL]" not in text  # its model file is in this runtime: no Drive needed
    assert ("[PASS] ConvBlock -> TransitionBlock structure: stages C1 [model[0][0].conv: 32x32] -> "
            "T1 [model[1].pool: 16x16] -> C2 [model[2][0].conv: 16x16] -> T2 [model[3].pool: 8x8]") in text
    assert "Trainable params:" in text and "final receptive field" in text and "Map sizes: 32 -> 16" in text
    assert "network: TinyNet from tinynet.py (SHA-1" in text and "unchanged" not in text


def test_03_trains_it_onto_drive_with_a_copy_of_the_file(student_run):
    run = student_run["run"]
    assert (run / "checkpoint.pt").is_file() and (run / "history.json").is_file()
    assert (run / "tinynet.py").read_text() == STUDENT_NET
    text = text_of(student_run["nb03"])
    assert "lr schedule" in text and "label smoothing" in text and "epoch   1/1" in text
    history = json.loads((run / "history.json").read_text())
    assert history["config"]["recipe"]["model"] == "tinynet.py:TinyNet"
    # the last cell pushed the run to Drive, once, for notebook 04's runtime
    assert "Google Drive flushed and unmounted" in text
    flushed = (student_run["drive_log"]).read_text().splitlines()
    assert flushed.count(f"flush {student_run['machines'] / 'runtime-03' / 'content' / 'drive'}") == 1


def test_04_in_a_runtime_without_the_file_rebuilds_it_from_drive(student_run):
    text = text_of(student_run["nb04"])
    assert "tinynet.py is not here: the network is rebuilt from the run folder's copy" in text
    headline = re.search(r"test accuracy \(plain, single view\): ([\d.]+)% of (\d+) images", text)
    diagonal = re.search(r"diagonal: (\d+) of (\d+) test images = ([\d.]+)%", text)
    assert headline and diagonal and headline.group(1) == diagonal.group(3) and headline.group(2) == diagonal.group(2)
    assert int(diagonal.group(1)) / int(diagonal.group(2)) == pytest.approx(float(headline.group(1)) / 100, abs=5e-5)
    recorded = json.loads((student_run["run"] / "history.json").read_text())["history"][-1]["test_acc"]
    assert f"recorded after the last epoch (cpu): {recorded:.2%} plain" in text
    assert f"{headline.group(1)}%" == f"{recorded:.2%}"  # the same network and weights as trained
    assert "Grad-CAM at " in text and figures_of(student_run["nb04"]) >= 6


def test_04_without_a_run_lists_the_runs_there_and_drives_delay_in_one_line(colab, student_run):
    nb, _, error = runtime(colab, "runtime-04-alone", "04_analyze_errors.ipynb", dict(recipe="fast", seed=7))
    assert error is not None and error.ename == "RunNotFoundError"
    shown = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(shown) == 1 and len(shown[0]["traceback"]) == 1  # one line, no traceback
    line = shown[0]["traceback"][0]
    assert "no run in" in line and "fast-s7" in line
    assert "fast-TinyNet-s0 (recipe fast, model tinynet.py:TinyNet, seed 0, 1 epoch saved)" in line  # what is there
    assert "set recipe, model and seed as notebook 03 had them" in line
    assert "Google Drive can take a minute or more to show files written by another runtime" in line


@pytest.fixture(scope="module")
def drive_run(colab):
    """The Colab path that needs no fork: model = "drive:mynet.py:MyNet". 02 finds no such file on Drive and
    puts the shipped example there; 03 and 04, each in a runtime of its own, build it from Drive."""
    params = dict(SMALL, model="drive:mynet.py:MyNet", use_drive=True)
    nb02, _, err02 = runtime(colab, "runtime-02-drive", "02_model_summary.ipynb", params)
    nb03, _, err03 = runtime(colab, "runtime-03-drive", "03_train.ipynb", params)
    nb04, _, err04 = runtime(colab, "runtime-04-drive", "04_analyze_errors.ipynb",
                             dict(recipe="fast", model="drive:mynet.py:MyNet", seed=0, use_drive=True))
    return dict(nbs=(nb02, nb03, nb04), errors=(err02, err03, err04),
                file=colab / "my-drive" / "cifar10-small-cnn" / "mynet.py",
                run=colab / "my-drive" / "cifar10-small-cnn" / "runs" / "fast-MyNet-s0")


def test_a_model_file_on_drive_goes_from_02_to_04_and_each_says_which_file(drive_run):
    assert drive_run["errors"] == (None, None, None), [str(e)[:2000] for e in drive_run["errors"] if e]
    assert drive_run["file"].read_bytes() == (ROOT / "mynet.py").read_bytes()  # 02 put the example there
    nb02, nb03, nb04 = map(text_of, drive_run["nbs"])
    assert "was missing: the example network (mynet.py, class MyNet) is copied there" in nb02
    assert "drive > MyDrive > cifar10-small-cnn > mynet.py" in nb02
    for text in (nb02, nb03, nb04):  # every notebook names the file, its hash, and that it is the example
        assert f"network: MyNet from {drive_run['file'].name}" not in text  # the path, not a bare name
        assert re.search(r"network: MyNet from \S*/MyDrive/cifar10-small-cnn/mynet.py \(SHA-1 [0-9a-f]{12}", text)
        assert "this is the example shipped with the project, unchanged" in text
    assert (drive_run["run"] / "checkpoint.pt").is_file()
    assert "as this run trained it" in nb04


def setup_cell(nb) -> dict:
    return next(c for c in nb["cells"] if "google.colab" in "".join(c["source"]))


def fake_git(folder, script: str) -> dict:
    """A `git` first on PATH (the setup cell's only way out of the runtime), logging its arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    git = folder / "git"
    git.write_text("#!/bin/sh\necho \"$@\" >> \"$FAKE_GIT_LOG\"\n" + script)
    git.chmod(0o755)
    return dict(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", FAKE_GIT_LOG=str(folder / "calls"))


def test_the_setup_cell_shows_why_a_clone_failed(colab, tmp_path):
    """Colab's kernel shows nothing of what git says: the cell prints git's own message and the likely cause."""
    env = fake_git(tmp_path / "bin", "echo \"fatal: repository 'https://github.com/no/such/' not found\" >&2\nexit 128\n")
    nb, _, error = runtime(colab, "runtime-setup-fails", "01_explore_data.ipynb", dict(data="synthetic", limit=200),
                           cwd=tmp_path, env=dict(env, CIFAR_CLONE=str(tmp_path / "project")))
    assert error is not None and error.ename == "SetupError"
    shown = "".join("".join(o.get("text", "")) + "".join(o.get("traceback", [])) + o.get("evalue", "")
                    for o in setup_cell(nb)["outputs"])
    assert "fatal: repository 'https://github.com/no/such/' not found" in shown  # git's own words
    assert "public and spelt right" in shown and "online" in shown
    assert "Traceback" not in shown and "To exit" not in shown  # git's words and one line, nothing else


def test_the_setup_cell_run_again_pulls_and_reloads(colab, tmp_path):
    """A runtime that already cloned the project: the cell pulls (fast-forward only), then imports the code."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
    env = fake_git(tmp_path / "bin", "case \"$*\" in *log*) echo 'abc1234 (2026-12-01)';; esac\nexit 0\n")
    nb, _, error = runtime(colab, "runtime-setup-again", "01_explore_data.ipynb", dict(data="synthetic", limit=200),
                           cwd=tmp_path, env=dict(env, CIFAR_CLONE=str(clone)))
    assert error is None, str(error)[:2000]
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert f"-C {clone} pull -q --ff-only" in calls and not any("clone" in c.split()[:1] for c in calls)
    assert "project: github.com/small-cnn-team/cifar10-small-cnn at abc1234 (2026-12-01)" in text_of(nb)


def test_05_with_its_defaults_shows_the_published_study(colab):
    nb, _, error = runtime(colab, "runtime-05", "05_sweep.ipynb", {})
    assert error is None, str(error)[:2000]
    text = text_of(nb)
    assert "showing the published one shipped with the project" in text and "test acc" in text
    figure_cells = [c for c in nb["cells"] if "H.sweep.figures.study_figure(" in "".join(c["source"])]
    assert len(figure_cells) == 4
    assert all(any(o["output_type"] == "display_data" for o in c["outputs"]) for c in figure_cells)

"""Colab as students use it: every notebook in a runtime of its own, nothing shared but Google Drive.

Each "runtime" is a fresh copy of the project, a fresh kernel that starts with a stand-in
`google.colab` imported (as Colab's kernels do), and a dataset cache of its own. The stand-in's
`drive.mount` links one shared folder as My Drive. The notebooks run with papermill, in order:
02 -> 03 -> 04 with a student's model file (which 04's runtime does not have), a 04 that finds no
run, and 05 with its defaults.
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
    return base


def runtime(colab, name: str, notebook: str, parameters: dict, files: dict | None = None, drop=()):
    """Run one notebook in a runtime of its own; returns (executed notebook, its project copy, error or None)."""
    import papermill as pm

    machine = colab / name
    project = machine / "project"
    shutil.copytree(ROOT, project, ignore=NOT_IN_A_CLONE)
    for rel, text in (files or {}).items():
        (project / rel).write_text(text)
    for rel in drop:
        (project / rel).unlink()
    env = dict(os.environ)
    os.environ.update(PYTHONPATH=str(colab / "stand-in"), IPYTHONDIR=str(colab / "ipython"),
                      FAKE_MY_DRIVE=str(colab / "my-drive"), CIFAR_DRIVE_MOUNT=str(machine / "content" / "drive"),
                      CIFAR_CACHE=str(machine / "cache"))
    executed = machine / notebook
    error = None
    try:
        pm.execute_notebook(str(project / "notebooks" / notebook), str(executed), parameters=parameters,
                            cwd=str(project), kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as e:
        error = e
    finally:
        os.environ.clear()
        os.environ.update(env)
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
    return dict(nb02=nb02, nb03=nb03, nb04=nb04, errors=(err02, err03, err04),
                run=colab / "my-drive" / "cifar10-small-cnn" / "runs" / "fast-TinyNet-s0")


def test_each_notebook_runs_in_its_own_runtime_with_a_student_model(student_run):
    assert student_run["errors"] == (None, None, None), [str(e)[:2000] for e in student_run["errors"] if e]


def test_02_checks_summarises_and_draws_the_student_model(student_run):
    text = text_of(student_run["nb02"])
    assert "Mounted at" in text and "[FAIL]" not in text
    assert ("[PASS] ConvBlock -> TransitionBlock structure: stages C1 [model[0][0].conv: 32x32] -> "
            "T1 [model[1].pool: 16x16] -> C2 [model[2][0].conv: 16x16] -> T2 [model[3].pool: 8x8]") in text
    assert "Trainable params:" in text and "final receptive field" in text
    assert (student_run["run"] / "images" / "model_architecture_TinyNet.png").is_file()  # on Drive


def test_03_trains_it_onto_drive_with_a_copy_of_the_file(student_run):
    run = student_run["run"]
    assert (run / "checkpoint.pt").is_file() and (run / "history.json").is_file()
    assert (run / "tinynet.py").read_text() == STUDENT_NET
    text = text_of(student_run["nb03"])
    assert "lr schedule" in text and "label smoothing" in text and "epoch   1/1" in text
    history = json.loads((run / "history.json").read_text())
    assert history["config"]["recipe"]["model"] == "tinynet.py:TinyNet"


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


def test_04_without_a_run_says_what_to_do_in_one_line(colab):
    nb, _, error = runtime(colab, "runtime-04-alone", "04_analyze_errors.ipynb", dict(recipe="fast", seed=7))
    assert error is not None and error.ename == "RunNotFoundError"
    shown = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(shown) == 1 and len(shown[0]["traceback"]) == 1  # one line, no traceback
    assert "train it first, with notebook 03" in shown[0]["traceback"][0] and "use_drive" in shown[0]["traceback"][0]


def test_05_with_its_defaults_shows_the_published_study(colab):
    nb, _, error = runtime(colab, "runtime-05", "05_sweep.ipynb", {})
    assert error is None, str(error)[:2000]
    text = text_of(nb)
    assert "showing the published one shipped with the project" in text and "test acc" in text
    figure_cells = [c for c in nb["cells"] if "H.plots.study_figure(" in "".join(c["source"])]
    assert len(figure_cells) == 4
    assert all(any(o["output_type"] == "display_data" for o in c["outputs"]) for c in figure_cells)

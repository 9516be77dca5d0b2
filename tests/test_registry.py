"""Your own network as FILE.py:NAME or a Python factory: checked, trained, resumed, rebuilt elsewhere;
every mistake one line."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_FAST, outcome
from helpers import registry
from helpers.checkpoint import CheckpointError
from helpers.record import load_run
from helpers.run import Trial, train
from helpers.train import main as train_main
from helpers.constraints import RuleError
from helpers.errors import UserError
from helpers.registry import ModelError, build_model

ROOT = Path(__file__).resolve().parents[1]

NET = '''
import torch.nn as nn
from helpers.model import ConvBlock, ConvBNReLU, DepthwiseSeparableConv, Head, TransitionBlock


class Stage(ConvBlock):
    """A student's own stage: a subclass of helpers' ConvBlock."""


class Net(nn.Module):
    def __init__(self, num_classes=10, width=WIDTH):
        super().__init__()
        w = width
        self.block1 = Stage([3, w], unit=ConvBNReLU)
        self.trans1 = TransitionBlock(w)
        self.block2 = Stage([w, w], unit=ConvBNReLU, dilation=2)
        self.trans2 = TransitionBlock(w)
        self.block3 = Stage([w, w], unit=ConvBNReLU, conv=DepthwiseSeparableConv)
        self.trans3 = TransitionBlock(w)
        self.head = Head(w, num_classes)

    def forward(self, x):
        return self.head(self.trans3(self.block3(self.trans2(self.block2(self.trans1(self.block1(x)))))))


def make(num_classes=10):
    return Net(num_classes, width=8)
'''


def write_net(folder, width=16, name="studentnet.py") -> Path:
    path = Path(folder) / name
    path.write_text(NET.replace("WIDTH", str(width)))
    return path


def test_a_file_model_trains_and_its_run_folder_keeps_a_copy(tmp_path):
    path = write_net(tmp_path)
    record = train(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST)
    assert len(record.history) == 2 and record.config["recipe"]["model"] == f"{path}:Net"
    assert record.config["recipe"]["model_kwargs"] == {}  # fast's GELU is the fast model's, not yours
    identity = record.config["model_identity"]
    assert identity["copy"] == "studentnet.py"
    assert (tmp_path / "run" / "studentnet.py").read_bytes() == path.read_bytes()
    assert registry.build_model(f"{path}:make").block1[0].conv.out_channels == 8  # a factory function too


def test_resume_refuses_a_changed_file_and_accepts_the_same(tmp_path):
    path = write_net(tmp_path)
    Trial(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST).run(stop_after=1)
    write_net(tmp_path, width=24)  # the student edited the network between sessions
    with pytest.raises(CheckpointError, match=r"model file .*studentnet.py: changed since the checkpoint"):
        Trial(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST).run(resume=True)
    write_net(tmp_path, width=16)  # and put it back as it was
    resumed = Trial(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST).run(resume=True)
    full = train(model=f"{path}:Net", **SMALL_FAST)
    assert outcome(resumed.history) == outcome(full.history)


def test_another_architecture_under_the_same_name_is_refused(tmp_path):
    Trial(model=lambda: build_model("fast"), out_dir=tmp_path / "run", **SMALL_FAST).run(stop_after=1)
    with pytest.raises(CheckpointError, match="model architecture"):
        Trial(model=lambda: build_model("fast", widths=(16, 32, 64)), out_dir=tmp_path / "run",
                **SMALL_FAST).run(resume=True)


def rebuild_elsewhere(run_dir, cwd):
    """load_run in a fresh Python process (another runtime), evaluated on the run's test split."""
    code = ("import json, sys\nfrom helpers.loop import evaluate\n"
            "from helpers.record import load_run, test_loader_for\n"
            f"model, config, history = load_run({str(run_dir)!r})\n"
            "acc = evaluate(model, test_loader_for(config), config['settings']['precision'])['test_acc']\n"
            "print(json.dumps(dict(acc=acc, recorded=history[-1]['test_acc'])))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "CIFAR_CACHE": str(cwd / "cache")})


@pytest.mark.parametrize("change", ["deleted", "edited"])
def test_another_runtime_rebuilds_the_network_from_the_run_folders_copy(tmp_path, change):
    path = write_net(tmp_path)
    train(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST)
    if change == "deleted":
        path.unlink()
    else:
        write_net(tmp_path, width=24)
    result = rebuild_elsewhere(tmp_path / "run", tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["acc"] == pytest.approx(out["recorded"], abs=1e-6)  # the trained network, with its own weights
    why = "is not here" if change == "deleted" else "has changed since"
    assert f"{why}: the network is rebuilt from the run folder's copy" in result.stdout


def test_no_file_and_no_copy_is_one_line(tmp_path):
    path = write_net(tmp_path)
    train(model=f"{path}:Net", out_dir=tmp_path / "run", **SMALL_FAST)
    path.unlink()
    (tmp_path / "run" / "studentnet.py").unlink()
    with pytest.raises(ModelError, match="is not here and the run folder has no intact copy"):
        load_run(tmp_path / "run")


def test_a_factory_from_python_trains_and_is_passed_again_to_rebuild(tmp_path):
    def my_net():
        return build_model("fast", widths=(16, 32, 32))

    record = train(model=my_net, out_dir=tmp_path / "run", **SMALL_FAST)
    assert record.config["recipe"]["model"].startswith("factory:") and record.config["params"] < 100_000
    with pytest.raises(ModelError, match="pass the same function again"):
        load_run(tmp_path / "run")
    model, _, history = load_run(tmp_path / "run", model=my_net)
    assert history == record.history and sum(p.numel() for p in model.parameters()) == record.config["params"]


FOUR_POOLS = NET.replace("        self.head = Head(w, num_classes)",
                         "        self.extra = Stage([w, w])\n        self.trans4 = TransitionBlock(w)\n"
                         "        self.head = Head(w, num_classes)").replace(
    "return self.head(self.trans3(", "return self.head(self.trans4(self.extra(self.trans3(").replace(
    "self.block1(x)))))))", "self.block1(x)))))))))")


@pytest.mark.parametrize("spec, source, error, message", [
    ("missing.py:Net", None, UserError, "invalid recipe: model 'missing.py:Net': there is no file missing.py"),
    ("studentnet.py", None, UserError, "name the class or function to use, as studentnet.py:NAME"),
    ("studentnet.py:Nope", NET.replace("WIDTH", "16"), ModelError, "defines no 'Nope'; it defines Net, Stage, make"),
    ("studentnet.py:Net", "import torch\nclass Net(:\n", ModelError,
     "studentnet.py, line 2 fails to import: SyntaxError"),
    ("studentnet.py:Net", "import torch\nfrom helpers.model import Nothing\n", ModelError,
     "line 2 fails to import: ImportError"),
    ("studentnet.py:Net", "def Net():\n    return 3\n", ModelError, "returned '3' (int), not an nn.Module"),
    ("studentnet.py:Net", FOUR_POOLS.replace("WIDTH", "8"), RuleError,
     "breaks the assignment's rules: exactly 3 max-pools"),
])
def test_bad_models_are_one_line_before_any_data(tmp_path, monkeypatch, spec, source, error, message):
    """Each is the UserError of its kind: a spec the recipe refuses (UserError), a file that gives no network
    (ModelError), a network that breaks a rule (RuleError)."""
    monkeypatch.chdir(tmp_path)
    if source:
        (tmp_path / "studentnet.py").write_text(source)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        Trial(model=spec, out_dir=tmp_path / "run", **SMALL_FAST).setup()
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    (tmp_path / "studentnet.py").write_text("def Net():\n    return 3\n")
    argv = ["--data", "synthetic", "--model", f"{tmp_path}/studentnet.py:Net", "--out", str(tmp_path / "r")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model ") and "not an nn.Module" in err[0]
    with pytest.raises(SystemExit):
        train_main(["--data", "synthetic", "--model", "nowhere.py:Net", "--out", str(tmp_path / "r")])
    assert "argument --model: model 'nowhere.py:Net': there is no file nowhere.py" in capsys.readouterr().err


def test_the_shipped_example_passes_the_rules_and_trains_a_step():
    from helpers.constraints import check

    model = build_model(f"{ROOT / 'mynet.py'}:MyNet")
    assert check(model).passed
    record = train(model=f"{ROOT / 'mynet.py'}:MyNet", **dict(SMALL_FAST, epochs=1))
    assert record.history[0]["train_loss"] > 0


def test_rules_can_be_waived_only_on_request(tmp_path):
    broken = '{"separable": false}'
    with pytest.raises(RuleError, match="depthwise-separable conv"):
        Trial(model_kwargs=json.loads(broken), **dict(SMALL_FAST, epochs=1)).setup()
    Trial(model_kwargs=json.loads(broken), enforce_rules=False, **dict(SMALL_FAST, epochs=1)).setup()


def test_a_copy_is_written_once_and_atomically(tmp_path):
    path = write_net(tmp_path)
    source = path.read_bytes()
    identity = registry.model_identity(f"{path}:Net", build_model(f"{path}:Net"), source)
    registry.keep_copy(tmp_path / "run", identity, source)
    registry.keep_copy(tmp_path / "run", identity, b"something else")  # never overwrites
    assert (tmp_path / "run" / "studentnet.py").read_bytes() == source
    assert not list((tmp_path / "run").glob("*.tmp"))
    shutil.rmtree(tmp_path / "run")


# --------------------------------------------------------------------------- which network, from which file

def test_the_example_hash_is_the_shipped_files():
    """network_source recognises the example by this hash: it must follow every edit of mynet.py."""
    import hashlib

    assert registry.EXAMPLE_SHA1 == hashlib.sha1((ROOT / "mynet.py").read_bytes()).hexdigest()
    assert registry.example_file() == ROOT / "mynet.py"


def test_the_source_line_names_the_file_its_hash_and_the_unchanged_example(tmp_path):
    import hashlib

    example = registry.network_source(f"{ROOT / 'mynet.py'}:MyNet")
    assert f"from {ROOT / 'mynet.py'} (SHA-1 {registry.EXAMPLE_SHA1[:12]}, as it is now)" in example
    assert "the example shipped with the project, unchanged" in example
    mine = write_net(tmp_path)
    line = registry.network_source(f"{mine}:make")
    assert hashlib.sha1(mine.read_bytes()).hexdigest()[:12] in line and "unchanged" not in line
    assert registry.network_source("fast") == "network: fast, registered in helpers/model.py (fast_net)"
    identity = dict(spec=f"{mine}:make", file="/elsewhere/studentnet.py", sha1="f" * 40)
    assert "from /elsewhere/studentnet.py (SHA-1 ffffffffffff, as this run trained it)" in \
        registry.network_source(identity["spec"], identity)


def test_a_drive_model_lives_in_the_projects_drive_folder(tmp_path, monkeypatch):
    """drive:FILE.py:NAME is FILE in My Drive/cifar10-small-cnn, whichever runtime asks; outside Colab with no
    Drive there, one line says where Drive is."""
    monkeypatch.setenv("CIFAR_DRIVE_MOUNT", str(tmp_path / "drive"))
    with pytest.raises(UserError, match="Google Drive is mounted in Colab only"):
        registry.parse_file_spec("drive:mynet.py:MyNet")
    assert "mounted in Colab only" in registry.model_problem("drive:mynet.py:MyNet")
    folder = tmp_path / "drive" / "MyDrive" / "cifar10-small-cnn"
    folder.mkdir(parents=True)
    assert registry.parse_file_spec("drive:mynet.py:MyNet") == (folder / "mynet.py", "MyNet")
    assert "notebook 02 puts the example network there" in registry.model_problem("drive:mynet.py:MyNet")
    shutil.copyfile(ROOT / "mynet.py", folder / "mynet.py")
    assert registry.model_problem("drive:mynet.py:MyNet") is None
    assert type(build_model("drive:mynet.py:MyNet")).__name__ == "MyNet"
    with pytest.raises(ModelError, match="drive:FILE.py:NAME"):
        registry.parse_file_spec("drive:/abs/mynet.py:MyNet")
# --------------------------------------------------------------------------- a notebook is a submission too

NOTEBOOK = ROOT / "tests" / "student_nets" / "colab_notebook.ipynb"


def notebook(path, *cells) -> Path:
    """A notebook of code cells, each given as one string."""
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                                           "source": c.splitlines(keepends=True)} for c in cells],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_a_notebook_builds_from_its_definitions_and_runs_no_other_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its training cell would write TRAINING_RAN here, then raise
    model = build_model(f"{NOTEBOOK}:Net")
    assert not (tmp_path / "TRAINING_RAN").exists()
    module = sys.modules[type(model).__module__]
    # literals bound (the network reads dropout_value and channels), nothing computed
    assert (module.dropout_value, module.EPOCHS, module.channels) == (0.1, 20, (8, 16))
    assert not hasattr(module, "model") and not hasattr(module, "device") and callable(module.train)
    assert model.convblock1[3].p == 0.1 and model.convblock1[0].out_channels == 8
    err = capsys.readouterr().err
    assert "code cell 2, line 1: `from google.colab import drive` skipped (ModuleNotFoundError" in err


def test_a_notebook_travels_like_a_file(tmp_path):
    """Its spec, its copy in the run folder and the rebuild from that copy work as for FILE.py."""
    path = tmp_path / "student.ipynb"
    path.write_bytes(NOTEBOOK.read_bytes())
    spec = f"{path}:Net"
    assert registry.model_problem(spec) is None and registry.is_file_spec(spec)
    source = registry.file_source(spec)
    identity = registry.model_identity(spec, build_model(spec), source)
    assert identity["copy"] == "student.ipynb"
    registry.keep_copy(tmp_path / "run", identity, source)
    path.unlink()
    rebuilt = registry.rebuild_spec(identity, tmp_path / "run", log=lambda *a: None)
    assert rebuilt == f"{tmp_path / 'run' / 'student.ipynb'}:Net"
    assert registry.architecture_fingerprint(build_model(rebuilt)) == identity["architecture"]


NET_USING_DRIVE = "import torch.nn as nn\nfrom google.colab import drive\n\nclass Net(nn.Module):\n" \
                  "    def __init__(self):\n        super().__init__()\n        drive.mount('/content/drive')\n"


@pytest.mark.parametrize("spec, cells, message", [
    ("nb.ipynb", None, "name the class or function to use, as nb.ipynb:NAME"),
    ("nb.ipynb:Nope", ("import torch.nn as nn\nclass Net(nn.Module):\n    pass", "def train():\n    pass",
                       "x = nn.Linear(2, 2)"),
     "nb.ipynb defines no 'Nope'; it defines Net, train"),
    ("nb.ipynb:Net", ("model?\n", "import torch.nn as nn\nclass Nett(nn.Module):\n    pass"),
     "defines no 'Net'; it defines Nett; code cell 1 is not Python (line 1: invalid syntax), skipped"),
    ("nb.ipynb:Net", (NET_USING_DRIVE,),
     "the network uses drive, but `from google.colab import drive` failed (ModuleNotFoundError: No module named "
     "'google'): install what it imports, or use something else"),
    ("nb.ipynb:Net", ("from not_installed_anywhere import make_net", "def Net():\n    return make_net()"),
     "the network uses make_net, but `from not_installed_anywhere import make_net` failed (ModuleNotFoundError"),
    ("nb.ipynb:Net", ("from not_installed_anywhere import Base", "class Net(Base):\n    pass"),
     "the network uses Base, but `from not_installed_anywhere import Base` failed"),
    ("nb.ipynb:Net", ("import torch.nn as nn", "class Net(nn.Module):\n    size = 1 / 0"),
     "nb.ipynb, code cell 2, line 2 fails: ZeroDivisionError: division by zero"),
    ("nb.ipynb:Net", "not json", "nb.ipynb is not a Jupyter notebook (JSON with cells): JSONDecodeError"),
])
def test_bad_notebooks_are_one_line(tmp_path, monkeypatch, spec, cells, message):
    monkeypatch.chdir(tmp_path)
    if isinstance(cells, tuple):
        notebook(tmp_path / "nb.ipynb", *cells)
    elif cells:
        (tmp_path / "nb.ipynb").write_text(cells)
    with pytest.raises(ModelError) as e:
        build_model(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_one_network_of_a_notebook_is_found_as_in_a_python_file():
    """The grader takes a notebook as a submission: its one network, built from its definitions only."""
    notebook = ROOT / "tests" / "student_nets" / "colab_notebook.ipynb"
    assert registry.find_network(notebook) == f"{notebook}:Net"
    assert registry.find_network(ROOT / "mynet.py") == f"{ROOT / 'mynet.py'}:MyNet"
    with pytest.raises(ModelError, match="not a Python file or notebook"):
        registry.find_network(ROOT / "README.md")


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="seed"):
        build_model("resnet9000")


def test_bad_override_is_a_value_error():
    with pytest.raises(ValueError, match="bad override"):
        build_model("seed", widht=3)

"""helpers/notebook.py: run folders every notebook finds the same way, Google Drive, parameter checks, summary."""
import sys
import types

import pytest

from helpers import notebook as N
from helpers.notebook import check_params
from helpers.recipes import RECIPES
from helpers.registry import build_model


def test_run_names_follow_recipe_model_and_seed():
    assert N.run_name("fast", 0) == N.run_name("fast", 0, model="fast") == "fast-s0"
    assert N.run_name("fast", 2, model="wide") == "fast-wide-s2"
    assert N.run_name("seed", 0, model="notebooks/mynet.py:MyNet") == "seed-MyNet-s0"
    assert N.run_name("nope", 0) == "nope-s0"  # a bad recipe is check_params' to report, not a crash here


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """google.colab in sys.modules, as in a Colab kernel; drive.mount links tmp_path/drive-contents."""
    contents = tmp_path / "drive-contents"
    contents.mkdir()
    mounts = []

    def mount(mountpoint):
        mounts.append(mountpoint)
        (tmp_path / "content" / "drive").mkdir(parents=True)
        (tmp_path / "content" / "drive" / "MyDrive").symlink_to(contents)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setenv("CIFAR_DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    return dict(contents=contents, mounts=mounts)


def test_outside_colab_paths_stay_as_they_are(capsys):
    assert N.drive_path("runs/fast-s0", use_drive=True) == "runs/fast-s0"
    assert N.run_folder(recipe="fast", seed=1, use_drive=True) == "runs/fast-s1"
    assert "run folder: runs/fast-s1" in capsys.readouterr().out


def test_in_colab_runs_live_on_drive(fake_colab, tmp_path):
    folder = N.run_folder(recipe="fast", seed=0, model="mynet.py:MyNet", use_drive=True)
    assert folder == str(tmp_path / "content" / "drive" / "MyDrive" / "cifar10-small-cnn" / "runs" / "fast-MyNet-s0")
    N.drive_path("runs/other", use_drive=True)
    assert len(fake_colab["mounts"]) == 1  # mounted once per runtime
    assert N.drive_path("/abs/where", use_drive=True) == "/abs/where"


def test_in_colab_without_drive_says_what_is_lost(fake_colab, capsys):
    assert N.drive_path("runs/fast-s0", use_drive=False) == "runs/fast-s0"
    assert "stays on this runtime's disk" in capsys.readouterr().out and not fake_colab["mounts"]


def test_check_params_takes_a_model_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(N.ParameterError, match=r"model='mine.py:Net': model 'mine.py:Net': there is no file mine.py"):
        N.check_params(data="synthetic", recipe="fast", model="mine.py:Net")
    (tmp_path / "mine.py").write_text("import helpers.registry as R\ndef Net():\n    return R.build_model('fast')\n")
    r = N.check_params(data="synthetic", recipe="fast", model="mine.py:Net")
    assert r.model == "mine.py:Net" and r.model_kwargs == {} and r.epochs == RECIPES["fast"].epochs
    (tmp_path / "mine.py").write_text("def Net(width):\n    pass\n")
    with pytest.raises(N.ParameterError, match="missing a required argument: 'width'"):
        N.check_params(data="synthetic", recipe="fast", model="mine.py:Net")


def test_parameter_errors_show_as_one_message_in_a_notebook():
    with pytest.raises(N.ParameterError) as e:
        N.check_params(data="folder", recipe="turbo")
    shown = e.value._render_traceback_()  # what IPython shows instead of a traceback
    assert len(shown) == 1 and "data='folder' needs data_dir" in shown[0] and "recipe='turbo'" in shown[0]


def test_summary_counts_trainable_parameters_one_by_one(capsys):
    model = build_model("air")  # frozen BatchNorm scales and whitening filters, trained biases beside them
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < total
    N.summary(model)
    out = capsys.readouterr().out
    assert f"Total params: {total:,}" in out and f"Trainable params: {trainable:,}" in out
    assert f"Non-trainable params: {total - trainable:,}" in out


def test_the_device_note_says_where_training_runs(capsys):
    import torch
    N.warn_if_no_gpu(torch.device("mps"))
    out = capsys.readouterr().out
    assert "Apple MPS" in out and "on the CPU" not in out
    N.warn_if_no_gpu(torch.device("cpu"))
    assert "training runs on the CPU" in capsys.readouterr().out
    N.warn_if_no_gpu(torch.device("cuda"))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("params, message", [
    (dict(seed="abc"), "seed='abc': must be a whole number"),
    (dict(seed=True), "seed=True: must be a whole number"),
    (dict(out_dir=5), "out_dir=5: must be a folder path"),
    (dict(use_drive="yes"), "use_drive='yes': must be True or False"),
])
def test_run_folder_names_a_bad_parameter_in_one_message(params, message):
    """papermill -p seed abc: the parameters cell's message, not a TypeError deep inside."""
    with pytest.raises(N.ParameterError, match=message.replace("(", r"\(")):
        N.run_folder(**{**dict(recipe="fast", seed=0), **params})


@pytest.mark.parametrize("data_dir, message", [(5, "data_dir=5: must be a folder path"),
                                               ("FILE", "is a file, not a folder")])
def test_check_params_names_a_data_dir_that_is_no_folder(data_dir, message, tmp_path):
    if data_dir == "FILE":
        data_dir = tmp_path / "train.zip"
        data_dir.write_text("")
        data_dir = str(data_dir)
    with pytest.raises(N.ParameterError, match=message):
        N.check_params(data="folder", data_dir=data_dir, recipe="fast")


def test_run_folder_says_when_the_folder_holds_another_run(tmp_path, capsys):
    """Notebook 04 with recipe='seed' on a fast run folder analysed the fast run without a word."""
    import json
    from helpers.recipes import RECIPES
    config = dict(recipe=RECIPES["fast"].to_dict(), seed=0, settings=dict(precision="bf16", compile="off"))
    (tmp_path / "history.json").write_text(json.dumps(dict(config=config, history=[])))
    N.run_folder(recipe="fast", seed=0, out_dir=str(tmp_path))
    assert "note:" not in capsys.readouterr().out
    N.run_folder(recipe="seed", seed=0, out_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "holds another run (recipe='fast' there, 'seed' here; model='fast' there, 'seed' here)" in out
    N.run_folder(recipe="fast", seed=0, model="wide", out_dir=str(tmp_path))
    assert "model='fast' there, 'wide' here" in capsys.readouterr().out


def test_changing_only_the_recipe_changes_model_and_epochs():
    # what a Colab user does: recipe = "fast" and nothing else (model, epochs, ... stay None)
    for name, recipe in RECIPES.items():
        r = check_params(data="synthetic", model=None, epochs=None, recipe=name)
        assert (r.model, r.epochs, r.batch_size) == (recipe.model, recipe.epochs, recipe.batch_size)


def test_check_params_takes_a_validation_split(capsys):
    """What notebook 03 passes as `val` (Trial's val=): checked with the other parameters, before any work."""
    check_params(data="synthetic", recipe="fast", limit=200, batch_size=50, val=0.1)
    assert "limit=200 val=0.1" in capsys.readouterr().out
    with pytest.raises(N.ParameterError) as e:
        check_params(data="synthetic", recipe="fast", limit=200, batch_size=50, val=0.9)
    assert "validation split (--val / val=) 0.9 takes 180 of the 200 training images" in str(e.value)
    with pytest.raises(N.ParameterError, match=r"bad notebook parameters:\n  validation split .* '10%': give a number"):
        check_params(data="synthetic", recipe="fast", val="10%")

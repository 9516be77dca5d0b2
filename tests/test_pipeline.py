"""The main job's command line, without running notebooks (tests/test_notebooks.py runs them):
option checks, parameter resolution for every recipe, run folders, --publish, --set-repo, provenance."""
import json
import os
import re
import shutil
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import helpers  # noqa: E402
from helpers import pipeline  # noqa: E402
from helpers.notebook import ParameterError, check_params  # noqa: E402
from helpers.recipes import PRECISIONS, RECIPES, get_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def resolve(*argv):
    return pipeline.resolve(pipeline.get_parser().parse_args(list(argv)))


def no_notebooks(monkeypatch):
    """Make any attempt to execute a notebook fail the test: these checks must stop before."""
    def run(*a, **k):
        raise AssertionError("a notebook ran")
    monkeypatch.setattr(pipeline, "run", run)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("option", ["--epochs", "--limit", "--threads", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_zero_and_negative_counts_are_rejected(option, value, capsys):
    with pytest.raises(SystemExit) as e:
        pipeline.main([option, value])
    assert e.value.code == 2
    assert f"argument {option}: must be a positive integer, got {value}" in capsys.readouterr().err


def test_precision_choices_are_the_recipes():
    action = next(a for a in pipeline.get_parser()._actions if a.dest == "precision")
    assert tuple(action.choices) == PRECISIONS
    for p in PRECISIONS:
        assert check_params(data="synthetic", precision=p)  # accepted: a setting, not a recipe field
    with pytest.raises(ParameterError, match="precision='fp64'"):
        check_params(data="synthetic", precision="fp64")


def test_data_dir_with_another_source_is_one_clear_error(monkeypatch, capsys):
    no_notebooks(monkeypatch)
    with pytest.raises(SystemExit):
        pipeline.main(["--data", "synthetic", "--data-dir", "somewhere"])
    assert "--data-dir is for --data folder" in capsys.readouterr().err


def test_missing_data_dir_names_the_option(monkeypatch, capsys):
    no_notebooks(monkeypatch)
    with pytest.raises(SystemExit) as e:  # the shared CLI layer's check (helpers/cli.py), before any work
        pipeline.main(["--data", "folder", "--out", "runs/test-never"])
    assert e.value.code == 2 and "--data folder needs --data-dir" in capsys.readouterr().err


# --------------------------------------------------------------------------- smoke and batch size

@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_smoke_parameters_train_at_least_one_step_with_every_recipe(recipe):
    params, _ = resolve("--smoke", "--recipe", recipe)
    r = check_params(**params)  # what every notebook's first cell resolves
    assert params["limit"] // r.batch_size >= 2  # full batches per epoch (the loader drops the last partial)
    assert r.epochs == 1 and params["data"] == "synthetic"


def test_smoke_keeps_the_data_it_is_given():
    params, _ = resolve("--smoke", "--data", "folder", "--data-dir", "../shared/data/cifar10-jpeg-dev")
    assert params["data"] == "folder" and params["data_dir"] == "../shared/data/cifar10-jpeg-dev"
    assert params["limit"] == pipeline.SMOKE["limit"]
    params, _ = resolve("--smoke", "--epochs", "2", "--batch-size", "20")
    assert (params["epochs"], params["batch_size"]) == (2, 20)


def test_a_split_smaller_than_a_batch_is_one_clear_error(monkeypatch, capsys):
    no_notebooks(monkeypatch)
    assert pipeline.main(["--recipe", "fast", "--data", "synthetic", "--limit", "100"]) == 1
    err = capsys.readouterr().err
    assert "--limit 100 keeps fewer training images than one batch of 256" in err
    assert "--batch-size" in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"limit=100 keeps fewer training images .* set batch_size"):
        check_params(data="synthetic", recipe="fast", limit=100)


# --------------------------------------------------------------------------- run folders

def test_each_recipe_and_seed_has_its_own_run_folder():
    folders = {resolve("--recipe", r, "--seed", s)[0]["out_dir"] for r in RECIPES for s in ("0", "1")}
    assert len(folders) == 2 * len(RECIPES)
    params, out = resolve("--recipe", "fast", "--seed", "1")
    assert params["out_dir"] == str(out) == "runs/pipeline/fast-s1"
    assert params["images_dir"] == "runs/pipeline/fast-s1/images"  # never the committed images/
    assert resolve("--smoke")[0]["out_dir"] == "runs/smoke/seed-s0"


def test_paths_are_given_to_the_notebooks_relative_to_the_project_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # started from elsewhere: the notebooks still run in the project root
    params, out = resolve("--run-dir", "r", "--data-dir", str(ROOT / "data"), "--data", "folder")
    assert Path(ROOT / params["out_dir"]).resolve() == (tmp_path / "r").resolve()
    assert params["data_dir"] == "data" and not Path(params["out_dir"]).is_absolute()


def write_history(run_dir, recipe, seed=0, data="synthetic", limit=None, **overrides):
    """history.json as a finished training run leaves it (precision stored resolved for the device)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    r = get_recipe(recipe, **overrides).to_dict()
    config = dict(format=2, recipe=r, settings=dict(precision="bf16", compile="off"), seed=seed, data=data,
                  data_dir=None, limit=limit, name=run_dir.name)
    (run_dir / "history.json").write_text(json.dumps(dict(config=config, history=[])))


def test_a_run_folder_with_other_settings_stops_before_any_notebook(tmp_path, monkeypatch, capsys):
    no_notebooks(monkeypatch)
    run_dir = tmp_path / "run"
    write_history(run_dir, "fast")
    rc = pipeline.main(["--recipe", "seed", "--data", "synthetic", "--run-dir", str(run_dir), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "holds a run with other settings" in err and "--run-dir" in err
    assert "recipe: checkpoint 'fast', now 'seed'" in err


def test_the_same_settings_resume(tmp_path):
    write_history(tmp_path / "a", "fast", limit=200, epochs=1)
    params, _ = resolve("--recipe", "fast", "--data", "synthetic", "--limit", "200", "--epochs", "1",
                        "--run-dir", str(tmp_path / "a"))
    pipeline.check_run_dir(params)  # precision "auto" stored resolved as bf16: no difference
    for changed in (["--seed", "1"], ["--epochs", "2"], ["--limit", "256"]):
        params, _ = resolve("--recipe", "fast", "--data", "synthetic", "--limit", "200", "--epochs", "1",
                            "--run-dir", str(tmp_path / "a"), *changed)
        with pytest.raises(pipeline.PipelineError, match="--run-dir NEW_FOLDER"):
            pipeline.check_run_dir(params)


def test_a_run_folder_of_another_run_is_refused_naming_each_difference(tmp_path):
    """Compared as notebook 03's resume compares (checkpoint.resume_differences), on what the command knows
    before any data is read: the images' counts and fingerprints are not among it."""
    from helpers.errors import UserError
    from helpers.run import train
    run = tmp_path / "run"
    train(recipe="fast", data="synthetic", limit=120, batch_size=40, epochs=1, val=40, progress=False, out_dir=run)
    params = dict(out_dir=str(run), recipe="fast", model=None, epochs=1, batch_size=40, precision=None,
                  seed=0, data="synthetic", limit=120, val=40, data_dir=None, overrides={})
    pipeline.check_run_dir(params)  # the same run: resumed by notebook 03
    for change, message in ((dict(seed=1), "seed (--seed / seed=): checkpoint 0, now 1"),
                            (dict(recipe="seed"), "recipe: checkpoint 'fast (epochs=1, batch_size=40)', "
                                                  "now 'seed (epochs=1, batch_size=40)'"),
                            (dict(overrides=dict(lr=0.5)), "recipe field lr: checkpoint 0.89, now 0.5"),
                            (dict(val=None), "validation split (--val / val=): checkpoint 40, now None"),
                            (dict(limit=160), "images per split (--limit / limit=): checkpoint 120, now 160")):
        with pytest.raises(pipeline.PipelineError) as e:
            pipeline.check_run_dir(params | change)
        assert f"holds a run with other settings ({message}): pass --run-dir NEW_FOLDER" in str(e.value)
        assert isinstance(e.value, UserError)  # one line in a notebook; the command prints it and exits 1


def test_a_data_folder_is_compared_resolved(tmp_path):
    """--data-dir as the notebooks get it (relative to the project root) names the folder the run trained on."""
    from conftest import make_folder
    from helpers.run import train
    data, run = make_folder(tmp_path / "data", n=20), tmp_path / "run"
    train(recipe="seed", data="folder", data_dir=str(data), batch_size=10, epochs=1, progress=False, out_dir=run)
    params = dict(out_dir=str(run), recipe="seed", model=None, epochs=1, batch_size=10, precision=None, seed=0,
                  data="folder", limit=None, data_dir=os.path.relpath(data, ROOT), overrides={})
    pipeline.check_run_dir(params)
    other = make_folder(tmp_path / "other", n=20)
    with pytest.raises(pipeline.PipelineError, match=r"data folder \(--data-dir / data_dir=, resolved\): checkpoint "
                                                     f"'{data}', now '{other}'"):
        pipeline.check_run_dir(params | dict(data_dir=os.path.relpath(other, ROOT)))


# --------------------------------------------------------------------------- publish

NOTE = "> **Outputs below** come from a real run on TEST; command: `python -m helpers.pipeline --recipe fast`."


def fake_project(tmp_path):
    """A copy of what --publish and --set-repo touch: notebooks/, images/, README.md, helpers/__init__.py."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("executed"))
    shutil.copytree(ROOT / "images", root / "images")
    (root / "helpers").mkdir()
    shutil.copy(ROOT / "helpers" / "__init__.py", root / "helpers" / "__init__.py")
    shutil.copy(ROOT / "README.md", root / "README.md")
    return root


def test_publish_replaces_notebooks_figures_and_notes_together(tmp_path):
    root = fake_project(tmp_path)
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    (run / "images").mkdir()
    executed = []
    for p in pipeline.notebook_paths():
        nb = json.loads(p.read_text())
        nb["metadata"]["papermill"] = {"duration": 1.0}
        nb["cells"].insert(3, {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
                               "source": "# Parameters\nseed = 1\n", "outputs": [], "execution_count": None})
        nb["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": f"{ROOT}/runs/x\n"}]
        (run / "notebooks" / p.name).write_text(json.dumps(nb))
        executed.append(run / "notebooks" / p.name)
    (run / "images" / "curves.png").write_bytes(b"new curves")
    (run / "images" / "model_architecture_fast.png").write_bytes(b"drawn by the notebook")
    before = (root / "images" / "model_architecture_fast.png").read_bytes()

    pipeline.publish(executed, run / "images", NOTE, root=root, log=lambda *a: None)

    for p in executed:
        text = (root / "notebooks" / p.name).read_text()
        assert '"papermill"' not in text and str(ROOT) not in text
        assert pipeline.shown_parameters(json.loads(text)) == {"seed": 1}  # shown, as comments
        first = "".join(json.loads(text)["cells"][0]["source"])
        assert first.count("**Outputs below**") == 1 and first.endswith(NOTE)  # the old note is gone
    assert (root / "images" / "curves.png").read_bytes() == b"new curves"
    assert (root / "images" / "model_architecture_fast.png").read_bytes() == before  # helpers.diagram's
    readme = (root / "README.md").read_text()
    assert "The figures below come from a real run on TEST" in readme
    assert readme.count("<!-- figures-provenance -->") == 1


def test_readme_figures_are_the_published_ones():
    readme = (ROOT / "README.md").read_text()
    assert pipeline.README_NOTE.search(readme), "README needs its <!-- figures-provenance --> block"
    for name in re.findall(r"\]\((images/[^)]+\.png)\)", readme):
        assert (ROOT / name).is_file(), name


# --------------------------------------------------------------------------- Colab repository

def test_set_repo_changes_every_place(tmp_path):
    root = fake_project(tmp_path)
    (root / "notebooks" / "09_extra.ipynb").write_text(  # a notebook outside the main job counts too
        (root / "notebooks" / "01_explore_data.ipynb").read_text())
    old = helpers.REPO
    changed = pipeline.set_repo("someone/elsewhere", root=root, log=lambda *a: None)
    assert root / "helpers" / "__init__.py" in changed and root / "notebooks" / "09_extra.ipynb" in changed
    assert 'REPO = "someone/elsewhere"' in (root / "helpers" / "__init__.py").read_text()
    for nb in (root / "notebooks").glob("*.ipynb"):
        text = nb.read_text()
        assert old not in text, nb.name
        assert "github/someone/elsewhere/blob/main/notebooks/" in text
        assert 'REPO = \\"someone/elsewhere\\"' in text
    assert old not in (root / "README.md").read_text()


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "/name", "owner/", "own er/name"])
def test_set_repo_wants_owner_slash_name(bad, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "ROOT", fake_project(tmp_path))  # were the check broken, only the copy changes
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--set-repo", bad])
    assert e.value.code == 2
    assert "give the GitHub repository as OWNER/NAME" in capsys.readouterr().err


def test_the_committed_repository_is_the_same_everywhere():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for m in re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", nb.read_text()):
            assert m == helpers.REPO, nb.name
    for m in re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", (ROOT / "README.md").read_text()):
        assert m == helpers.REPO


# --------------------------------------------------------------------------- provenance, outputs, damaged runs

def test_provenance_names_the_device_the_run_used(tmp_path, monkeypatch):
    """A CPU run on a GPU machine is published as a CPU run."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Stand-in T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    recipe = dict(model="fast", epochs=1, batch_size=50, precision="fp32")
    (tmp_path / "history.json").write_text(json.dumps(dict(config=dict(recipe=recipe, device="cpu"), history=[])))
    params = dict(data="synthetic", data_dir=None, limit=100, recipe="fast", seed=0, device="auto")
    note = pipeline.provenance(params, tmp_path, "python -m helpers.pipeline --device cpu")
    assert "real run on CPU" in note and "Stand-in T4" not in note
    # no finished training: the device the command asked for
    params["device"] = "cuda"
    assert "real run on Stand-in T4" in pipeline.provenance(params, tmp_path / "none", "cmd")


@pytest.mark.parametrize("flags", [["--out", "."], ["--out", "notebooks"], ["--run-dir", "."],
                                   ["--images-dir", "images"], ["--out", "images/x"]])
def test_outputs_never_land_on_the_committed_notebooks_or_images(flags, capsys, monkeypatch):
    monkeypatch.chdir(pipeline.ROOT)
    before = {p: p.stat().st_mtime_ns for d in ("notebooks", "images") for p in (pipeline.ROOT / d).iterdir()}
    assert pipeline.main(["--smoke", "--recipe", "fast", *flags]) == 1
    err = capsys.readouterr().err
    assert "would write over the project's committed" in err and "only with --publish" in err
    after = {p: p.stat().st_mtime_ns for d in ("notebooks", "images") for p in (pipeline.ROOT / d).iterdir()}
    assert after == before and not (pipeline.ROOT / "checkpoint.pt").exists()


@pytest.mark.parametrize("damage", ["{}", "[]", '{"config": {}}', "not json"])
def test_a_damaged_history_json_is_read_from_the_checkpoint(tmp_path, damage):
    from helpers.run import train
    run = tmp_path / "run"
    train(recipe="fast", data="synthetic", limit=120, batch_size=40, epochs=1, progress=False, out_dir=run)
    (run / "history.json").write_text(damage)
    params = dict(out_dir=str(run), recipe="fast", model=None, epochs=1, batch_size=40, precision=None,
                  seed=0, data="synthetic", limit=120, data_dir=None, overrides={})
    pipeline.check_run_dir(params)  # the same run: nothing to say
    with pytest.raises(pipeline.PipelineError, match=r"seed \(--seed / seed=\): checkpoint 0, now 1"):
        pipeline.check_run_dir(params | dict(seed=1))
    (run / "checkpoint.pt").unlink()
    pipeline.check_run_dir(params | dict(seed=1))  # nothing readable: notebook 03 decides (and says)


def test_ctrl_c_stops_the_pipeline_in_one_line_even_where_sigint_was_ignored(tmp_path):
    """A background job of a script inherits SIGINT ignored; papermill then ran every notebook to the end."""
    import signal
    import subprocess
    import sys
    import time
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "helpers.pipeline", "--smoke", "--recipe", "fast", "--epochs", "200",
           "--out", str(tmp_path / "out"), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=pipeline.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole process group
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    # the kernel, hit by the same Ctrl-C, may print its own traceback before or after (it dies with the group)
    assert any(line.startswith("pipeline interrupted in 03_train.ipynb: every finished epoch")
               for line in err.splitlines())
    assert len(json.loads((run_dir / "history.json").read_text())["history"]) < 200

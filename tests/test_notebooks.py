"""Notebooks: structure of the committed ones (all five), a papermill smoke run of 01-04, nbval on its output.

The main job runs notebooks 01-04 only (05_sweep runs in tests/test_sweep_study.py and tests/test_colab.py)."""
import ast
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import helpers
from helpers import pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = pipeline.notebook_paths()
COMMITTED = sorted((ROOT / "notebooks").glob("*.ipynb"))  # the main job's four and 05_sweep
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
# each notebook's parameters, these and no others: 01 and 02 store nothing on Google Drive (no use_drive);
# 03 trains a run onto it; 04 analyses a finished run, which recipe, model and seed name (the rest comes from
# the run); 05 shows a sweep's study
PARAMS = {
    "01": {"data", "data_dir", "recipe", "overrides", "limit", "images_dir"},
    "02": {"recipe", "model", "overrides", "device", "images_dir"},
    "03": {"data", "data_dir", "recipe", "model", "epochs", "batch_size", "precision", "overrides", "limit", "val",
           "device", "seed", "use_drive", "out_dir", "images_dir", "progress"},
    "04": {"recipe", "model", "seed", "device", "use_drive", "out_dir", "images_dir", "compare"},
    "05": {"study", "storage", "root", "use_drive", "top", "images_dir"},
}
# None = "the recipe's value": changing `recipe` alone switches model, epochs, batch size, precision
RECIPE_DEFAULTS = ("model", "epochs", "batch_size", "precision")


def load(path):
    return json.loads(Path(path).read_text())


def source(cell):
    return "".join(cell["source"])


def test_four_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    assert all(p.is_file() for p in NOTEBOOKS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_notebook_structure(path):
    nb = load(path)
    first = source(nb["cells"][0])
    assert first.startswith(f"# {path.name[:2]} · ")  # "# 05 · Sweep results"
    badge = f"https://colab.research.google.com/github/{helpers.REPO}/blob/main/notebooks/{path.name}"
    assert badge in first
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    tree = ast.parse(source(params[0]))
    values = {t.id: ast.literal_eval(node.value)  # plain literals only, so papermill can override them
              for node in tree.body for t in node.targets}
    assert set(values) == PARAMS[path.name[:2]]
    assert all(values[k] is None for k in RECIPE_DEFAULTS if k in values)
    if "use_drive" in values:  # every Colab notebook runs in its own runtime: runs live on Drive
        assert values["use_drive"] is True
    setup = next(source(c) for c in nb["cells"] if "google.colab" in source(c))
    assert f'REPO = "{helpers.REPO}"' in setup and "-e" not in setup.split()
    if path.name.startswith("03"):
        assert nb["metadata"].get("accelerator") == "GPU"


def test_every_notebook_has_the_same_setup_cell():
    """One setup cell, five copies (05 installs the sweep extra too): a fix in one is a fix in all."""
    cells = {p.name: next(source(c) for c in load(p)["cells"] if "google.colab" in source(c)) for p in COMMITTED}
    assert len({text.replace('f"{root}[sweep]"', 'f"{root}"') for text in cells.values()}) == 1
    assert 'f"{root}[sweep]"' in cells["05_sweep.ipynb"]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_no_run_metadata_or_machine_paths(path):
    text = path.read_text()
    assert '"papermill"' not in text
    for fragment in ("/work/", "/home/", "/root/", "/tmp/", str(ROOT)):
        assert fragment not in text, fragment


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_published_notebooks_show_the_parameters_of_their_provenance_command(path):
    """The values shown under the parameters cell are exactly what the provenance note's command passes to
    this notebook, and they are comments: a student's own run uses the parameters cell."""
    import papermill as pm

    nb = load(path)
    command = re.search(r"command: `python -m helpers.pipeline ([^`]*)`", source(nb["cells"][0])).group(1)
    with pipeline.in_root():
        params, _ = pipeline.resolve(pipeline.parse(pipeline.get_parser(), shlex.split(command), default_data=None))
    declared = pm.inspect_notebook(str(path))
    assert pipeline.shown_parameters(nb) == {k: v for k, v in params.items() if k in declared}
    shown = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert all(line.startswith("#") for line in source(shown).splitlines())


@contextlib.contextmanager
def capture_fd2():
    """stderr at the file-descriptor level, where the notebook kernels (child processes) write."""
    with tempfile.TemporaryFile(mode="w+") as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        captured = []
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            captured.append(f.read())


def committed_state():
    """What the main job must leave alone unless --publish: committed figures, notebooks, README."""
    figures = [p for p in sorted((ROOT / "images").glob("*.png")) if not p.name.startswith("sweep_")]  # 05's
    files = [*figures, *NOTEBOOKS, ROOT / "README.md"]
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def smoke_run():
    # a recipe other than seed: fast's batch of 256 is larger than the smoke split, so this also proves
    # that smoke works with every recipe (tests/test_pipeline.py resolves the parameters of all of them)
    out = ROOT / "runs" / "test-smoke"  # inside the project, so the notebooks' setup cell finds helpers
    shutil.rmtree(out, ignore_errors=True)
    before, threads, env = committed_state(), torch.get_num_threads(), dict(os.environ)
    os.environ.pop("CI", None)  # as on a user's machine: progress bars would be on in the kernels
    try:
        with capture_fd2() as stderr:
            rc = pipeline.main(["--smoke", "--recipe", "fast", "--threads", "1", "--out", str(out)])
    finally:  # --threads sets both for the kernels it starts: give the rest of the suite its own back
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
    assert rc == 0, stderr[0][-3000:]
    return dict(out=out, stderr=stderr[0], changed=before != committed_state())


def test_smoke_pipeline_runs_all_four(smoke_run):
    out = smoke_run["out"]
    executed = sorted((out / "notebooks").glob("*.ipynb"))
    assert [p.name for p in executed] == [p.name for p in NOTEBOOKS]
    for p in executed:
        errors = [o for c in load(p)["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors
    figures = {p.name for p in (out / "images").glob("*.png")}
    assert {"samples.png", "augmentation.png", "model_architecture_fast.png", "curves.png", "misclassified.png",
            "confusion.png", "runs_acc.png"} <= figures
    assert (out / "checkpoint.pt").exists() and (out / "history.json").exists()


def test_smoke_run_leaves_the_committed_files_alone(smoke_run):
    assert not smoke_run["changed"], "the main job wrote into images/, notebooks/ or README.md without --publish"
    assert not list(ROOT.glob("kernel-*")), "kernel socket files left in the project root"


def test_executed_copies_say_which_run_they_show(smoke_run):
    for p in sorted((smoke_run["out"] / "notebooks").glob("*.ipynb")):
        first = source(load(p)["cells"][0])
        assert first.count("**Outputs below**") == 1, p.name  # the committed notebooks' note is replaced
        assert "recipe `fast` (model `fast`, 1 epoch, batch 50" in first and "--smoke --recipe fast" in first


def test_headless_runs_show_no_progress_bars(smoke_run):
    nb = load(smoke_run["out"] / "notebooks" / "03_train.ipynb")
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "epoch   1/1" in text and "it/s" not in text and "s/it" not in text


def test_threads_reach_the_kernels(smoke_run):
    text = json.dumps(load(smoke_run["out"] / "notebooks" / "03_train.ipynb"))
    assert "1 thread" in text and "2 threads" not in text


def test_no_unencrypted_tcp_warning_from_the_kernels(smoke_run):
    assert "without encryption" not in smoke_run["stderr"]


def nbval(*paths):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-sanitize-with", str(SANITIZE), *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True)


def test_nbval_on_executed_copies(smoke_run):
    result = nbval(smoke_run["out"] / "notebooks")
    assert result.returncode == 0, result.stdout[-3000:]


def test_nbval_catches_a_changed_checked_output(smoke_run, tmp_path):
    nb = load(smoke_run["out"] / "notebooks" / "02_model_summary.ipynb")
    checked = [c for c in nb["cells"] if "nbval-check-output" in c["metadata"].get("tags", [])]
    assert len(checked) >= 3
    for c in checked:
        for o in c["outputs"]:
            if "text" in o:
                o["text"] = "".join(o["text"]).replace("PASS", "FAIL")
    bad = smoke_run["out"] / "notebooks" / "tampered_02.ipynb"
    bad.write_text(json.dumps(nb))
    try:
        assert nbval(bad).returncode != 0
    finally:
        bad.unlink()


def test_bad_parameters_fail_in_the_first_cell_that_uses_them(tmp_path, capsys):
    out = ROOT / "runs" / "test-bad-params"
    try:
        with pytest.raises(SystemExit) as e:
            pipeline.main(["--data", "folder", "--out", str(out)])
        assert e.value.code == 2 and "needs --data-dir" in capsys.readouterr().err
        # past the pipeline's own check, the notebook's check cell stops it with a clear message
        with pytest.raises(pipeline.PipelineError, match=r"01_explore_data.ipynb failed in cell \d+: "
                                                        r"ParameterError: bad notebook parameters"):
            pipeline.run(dict(data="synthetic", recipe="nope", limit=-1), out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_clean_strips_papermill_keeps_the_values_as_comments_and_labels(smoke_run):
    note = "> **Outputs below** come from X"
    nb = pipeline.clean(load(smoke_run["out"] / "notebooks" / "03_train.ipynb"), note=note)
    text = json.dumps(nb)
    assert '"papermill"' not in text
    shown = pipeline.shown_parameters(nb)
    assert shown["recipe"] == "fast" and shown["epochs"] == 1 and shown["data"] == "synthetic"
    assert pipeline.shown_parameters(pipeline.clean(nb)) == shown  # cleaning twice changes nothing
    assert source(nb["cells"][0]).endswith(note) and source(nb["cells"][0]).count("**Outputs below**") == 1


def test_recipe_lists_come_from_the_code(smoke_run):
    from helpers.recipes import RECIPES

    for path in NOTEBOOKS:  # no hand-typed list of recipes to go stale in a parameters cell
        params = next(source(c) for c in load(path)["cells"] if "parameters" in c["metadata"].get("tags", []))
        for line in params.splitlines():
            assert sum(f'"{name}"' in line for name in RECIPES) <= 1, (path.name, line)
    listed = f"recipes: {', '.join(sorted(RECIPES))}"
    for name in ("01_explore_data", "02_model_summary", "03_train"):
        assert listed in json.dumps(load(smoke_run["out"] / "notebooks" / f"{name}.ipynb")), name


def test_03_shows_the_recipe_the_schedule_and_the_loop(smoke_run):
    nb = load(smoke_run["out"] / "notebooks" / "03_train.ipynb")
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    for call in ("trainer.restore()", "trainer.train_one_epoch(epoch)", "trainer.evaluate()",
                 "trainer.save_epoch(stats)",
                 "H.recipe_table(trainer)", "H.lr_schedule("):
        assert call in code, call
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    for row in ("optimizer", "lr schedule", "momentum", "loss", "augmentation", "test accuracy", "settings"):
        assert re.search(rf"(?m)^{row}\s", text), row
    assert (smoke_run["out"] / "images" / "schedule.png").is_file()


def test_04_headline_is_the_confusion_matrix_diagonal(smoke_run):
    nb = load(smoke_run["out"] / "notebooks" / "04_analyze_errors.ipynb")
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    headline = re.search(r"test accuracy \(plain, single view\): ([\d.]+)% of (\d+) images", text)
    diagonal = re.search(r"diagonal: (\d+) of (\d+) test images = ([\d.]+)%", text)
    assert headline.group(1) == diagonal.group(3) and headline.group(2) == diagonal.group(2)


def exercise_table() -> dict:
    """docs/exercises.md's rows (scripts/ablate.py's table): line -> per-seed and median plain / TTA accuracy."""
    rows = {}
    for line in (ROOT / "docs" / "exercises.md").read_text().splitlines():
        m = re.match(r"\| (\w+) \| [\d, ]+ \| ([\d. /]+) \(([\d.]+)\) \| ([\d. /]+) \(([\d.]+)\) \|", line)
        if m:
            rows[m.group(1)] = dict(plain=m.group(2).strip(), plain_median=m.group(3), tta_median=m.group(5))
    return rows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_ends_with_exercises_whose_answers_are_the_measured_table(path):
    """Each expected result a notebook quotes is the committed ablation table's, for the line it names."""
    table = exercise_table()
    cells = load(path)["cells"]
    last = source(cells[-1])
    assert last.startswith("## Try this") and 2 <= len(re.findall(r"(?m)^\d\. \*\*", last)) <= 4
    answers = re.findall(r"\*\*([\d.]+) % plain, ([\d.]+) % with TTA\*\* \(line `(\w+)`\)", last)
    seeds = re.findall(r"\*\*([\d. /]+) % plain\*\* \(line `(\w+)`, seeds 0, 1, 2\)", last)
    assert answers and "??" not in last
    for plain, tta, name in answers:
        assert (plain, tta) == (table[name]["plain_median"], table[name]["tta_median"]), name
    for values, name in seeds:
        assert values == table[name]["plain"], name

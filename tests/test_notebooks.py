"""Notebooks: structure of the committed ones, a papermill smoke run of all four, nbval on its output."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from helpers import pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = pipeline.notebook_paths()
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
REQUIRED_PARAMS = {"data", "data_dir", "model", "epochs", "limit", "device", "seed", "out_dir"}


def load(path):
    return json.loads(Path(path).read_text())


def source(cell):
    return "".join(cell["source"])


def test_four_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_structure(path):
    nb = load(path)
    first = source(nb["cells"][0])
    assert first.startswith("# ")
    badge = f"https://colab.research.google.com/github/{helpers.REPO}/blob/main/notebooks/{path.name}"
    assert badge in first
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    tree = ast.parse(source(params[0]))
    names = {t.id for node in tree.body for t in node.targets}
    assert REQUIRED_PARAMS <= names
    for node in tree.body:  # plain literals only, so papermill can override them
        ast.literal_eval(node.value)
    setup = next(source(c) for c in nb["cells"] if "google.colab" in source(c))
    assert f'REPO = "{helpers.REPO}"' in setup and "-e" not in setup.split()
    if path.name.startswith("03"):
        assert nb["metadata"].get("accelerator") == "GPU"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_run_metadata_or_machine_paths(path):
    text = path.read_text()
    assert '"papermill"' not in text and "injected-parameters" not in text
    for fragment in ("/work/", "/home/", "/root/", "/tmp/", str(ROOT)):
        assert fragment not in text, fragment


@pytest.fixture(scope="module")
def smoke_run():
    out = ROOT / "runs" / "test-smoke"  # inside the project, so the notebooks' setup cell finds helpers
    shutil.rmtree(out, ignore_errors=True)
    rc = pipeline.main(["--smoke", "--out", str(out)])
    assert rc == 0
    return out


def test_smoke_pipeline_runs_all_four(smoke_run):
    executed = sorted((smoke_run / "notebooks").glob("*.ipynb"))
    assert [p.name for p in executed] == [p.name for p in NOTEBOOKS]
    for p in executed:
        errors = [o for c in load(p)["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert not errors
    figures = {p.name for p in (smoke_run / "images").glob("*.png")}
    assert {"samples.png", "augmentation.png", "curves.png", "misclassified.png", "confusion.png"} <= figures
    assert (smoke_run / "run" / "checkpoint.pt").exists() and (smoke_run / "run" / "history.json").exists()


def nbval(*paths):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-sanitize-with", str(SANITIZE), *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True)


def test_nbval_on_executed_copies(smoke_run):
    result = nbval(smoke_run / "notebooks")
    assert result.returncode == 0, result.stdout[-3000:]


def test_nbval_catches_a_changed_checked_output(smoke_run, tmp_path):
    nb = load(smoke_run / "notebooks" / "02_model_summary.ipynb")
    checked = [c for c in nb["cells"] if "nbval-check-output" in c["metadata"].get("tags", [])]
    assert len(checked) >= 3
    for c in checked:
        for o in c["outputs"]:
            if "text" in o:
                o["text"] = "".join(o["text"]).replace("PASS", "FAIL")
    bad = smoke_run / "notebooks" / "tampered_02.ipynb"
    bad.write_text(json.dumps(nb))
    try:
        assert nbval(bad).returncode != 0
    finally:
        bad.unlink()


def test_bad_parameters_fail_in_the_first_cell_that_uses_them(tmp_path, capsys):
    out = ROOT / "runs" / "test-bad-params"
    try:
        assert pipeline.main(["--data", "folder", "--out", str(out)]) == 1
        assert "needs data_dir" in capsys.readouterr().err
        # past the pipeline's own check, the notebook's check cell stops it with a clear message
        with pytest.raises(pipeline.PipelineError, match=r"01_explore_data.ipynb failed in cell \d+: "
                                                        r"ValueError: bad notebook parameters"):
            pipeline.run(dict(data="synthetic", model="nope", epochs=-1), out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_clean_strips_papermill_and_labels(smoke_run):
    nb = pipeline.clean(load(smoke_run / "notebooks" / "03_train.ipynb"), note="run on X")
    text = json.dumps(nb)
    assert '"papermill"' not in text and "injected-parameters" not in text
    assert source(nb["cells"][0]).endswith("> run on X")


def test_set_repo_rewrites_badges_and_setup(tmp_path, monkeypatch):
    for p in NOTEBOOKS:
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(pipeline, "NOTEBOOKS", tmp_path)
    pipeline.set_repo("someone/elsewhere")
    for p in pipeline.notebook_paths():
        nb = load(p)
        assert "github/someone/elsewhere/blob/main/notebooks/" + p.name in source(nb["cells"][0])
        assert any('REPO = "someone/elsewhere"' in source(c) for c in nb["cells"])
        assert helpers.REPO not in p.read_text()

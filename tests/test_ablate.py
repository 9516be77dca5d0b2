"""scripts/ablate.py: an ablation grid runs each line as its own benchmark, keeps what finished, and tabulates."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT, TINY

SCRIPT = PROJECT / "scripts" / "ablate.py"


def ablate_module():
    spec = importlib.util.spec_from_file_location("ablate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, cwd=PROJECT, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.mark.parametrize("line, says", [
    ("just a name", "expected 'NAME | BENCHMARK ARGUMENTS'"),
    ("two words | --recipe fast", "expected 'NAME | BENCHMARK ARGUMENTS'"),
    ("a | --set 'model_kwargs={\"act\": \"gelu\"}", "No closing quotation"),
])
def test_a_malformed_grid_line_is_one_error_naming_it(tmp_path, line, says):
    grid = tmp_path / "grid.txt"
    grid.write_text(f"# a comment\nok | --recipe fast\n{line}\n")
    with pytest.raises(SystemExit) as e:
        ablate_module().read_grid(grid)
    assert "grid.txt:3: " in str(e.value) and says in str(e.value)


def test_a_name_used_twice_is_refused(tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("a | --recipe fast\na | --recipe best\n")
    with pytest.raises(SystemExit, match="grid.txt:2: the name 'a' is used twice"):
        ablate_module().read_grid(grid)


def test_quoted_arguments_reach_the_benchmark_as_one_argument(tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("""s2 | --recipe fast --set 'model_kwargs={"act": "gelu", "stem_stride": 2}' --seeds 3\n""")
    assert ablate_module().read_grid(grid) == [
        ("s2", ["--recipe", "fast", "--set", 'model_kwargs={"act": "gelu", "stem_stride": 2}', "--seeds", "3"])]


def test_a_grid_runs_its_lines_tabulates_them_and_skips_what_finished_when_run_again(tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("# one ingredient per line\n"
                    "base | --recipe fast --seeds 2 --set epochs=1\n"
                    "ls | --recipe fast --set epochs=1 --set label_smoothing=0.1 --model tiny.py:net\n"
                    "bad | --recipe nosuch\n")
    # paths in the grid are the caller's: run from elsewhere than the project, with a model file beside the grid
    (tmp_path / "tiny.py").write_text("from helpers.registry import build_model\n\n\n"
                                      "def net(num_classes=10):\n    return build_model('fast', widths=(8, 16, 32))\n")
    out = tmp_path / "out"
    done = run("grid.txt", "--out", "out", "--jobs", "2", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # the failing line is reported with its log; the others are not held back by it
    assert "base: 2 seed(s)" in done.stderr and "ls: 1 seed(s)" in done.stderr
    assert f"bad: failed (exit 2), see {Path('out') / 'bad.err'}" in done.stderr
    assert "invalid choice: 'nosuch'" in (out / "bad.err").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in done.stdout.splitlines()[2:]}
    assert list(rows) == ["base", "ls", "bad"]
    assert rows["base"].startswith("| base | 0, 1 | ") and "| baseline |" in rows["base"]
    float(rows["base"].split("|")[-2])  # the training work, in TFLOP
    assert rows["ls"].startswith("| ls | 0 | ") and "(vs base)" in rows["ls"]
    assert "no result: see bad.err" in rows["bad"]
    assert sorted(p.name for p in out.glob("*.done")) == ["base.done", "ls.done"]

    before = (out / "base.jsonl").read_text()
    again = run("grid.txt", "--out", "out", "--jobs", "2", *TINY, cwd=tmp_path)
    assert "base: done before, skipped" in again.stderr and "ls: done before, skipped" in again.stderr
    assert "bad: failed" in again.stderr  # only what did not finish runs again
    assert (out / "base.jsonl").read_text() == before
    assert again.stdout == done.stdout


def test_past_the_deadline_no_line_starts_and_the_table_says_so(tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("base | --recipe fast --set epochs=1\n")
    done = run(str(grid), "--out", str(tmp_path / "out"), "--deadline", "0", *TINY)
    assert done.returncode == 0, done.stderr
    assert "base: not started, the deadline has passed" in done.stderr
    assert "no result" in done.stdout and not list((tmp_path / "out").glob("*.jsonl"))

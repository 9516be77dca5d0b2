"""python -m helpers.grade: a class of submissions graded, one row each, whatever each one does.

One batch of small submissions (built from helpers.model's blocks, so that which rules they break does not
depend on how the checker finds out) is graded once per module, on synthetic data, three at a time; the tests
read its rows, logs and tables. Each submission starts a Python of its own (about 3 s of it importing torch).
"""
import csv
import io
import json
import os
import shutil
import time

import pytest

from helpers import grade
from helpers.checkpoint import read_checkpoint
from helpers.data import load_split
from helpers.loader import Loader
from helpers.loop import evaluate
from helpers.registry import ModelError, build_model, find_network
from helpers.run import Trial

# a passing network, small enough to train in a blink; {head} and {forward} are what the variants change
NETWORK = '''\
import torch
import torch.nn as nn
from helpers.model import ConvBlock, ConvBNReLU, DepthwiseSeparableConv, GlobalPool2d, Head, TransitionBlock
{top}

class {name}(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        w = width
        self.prep = ConvBNReLU(3, w)
        self.block1 = ConvBlock([w, w], unit=ConvBNReLU)
        self.trans1 = TransitionBlock(w, 2 * w, unit=ConvBNReLU)
        self.block2 = ConvBlock([2 * w, {mid}, 2 * w], unit=ConvBNReLU, dilation=2)
        self.trans2 = TransitionBlock(2 * w, 4 * w, unit=ConvBNReLU)
        self.block3 = ConvBlock([4 * w, 4 * w], unit=ConvBNReLU, conv=DepthwiseSeparableConv)
        self.trans3 = TransitionBlock(4 * w)
        {init}
        {head}

    def forward(self, x):
        x = self.trans1(self.block1(self.prep(x)))
        x = self.trans2(self.block2(x))
        x = self.trans3(self.block3(x))
        {forward}
'''


def network(name="Net", top="", mid="2 * w", init="", head="self.head = Head(4 * w)", forward="return self.head(x)"):
    return NETWORK.format(name=name, top=top, mid=mid, init=init, head=head, forward=forward)


SPIN_FORWARD = '''import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({pid_file!r}, "w").write(str(child.pid))
        while True:  # endless, but asleep: the CPU others share stays free
            time.sleep(0.2)'''

# FILE -> source; a folder's files are FOLDER/FILE
SOURCES = {
    "alice/mynet.py": network(name="MyNet"),  # a fork's folder: its mynet.py, beside other code
    "alice/notes.py": "print('not the network')\n",
    "bob/one.py": network(), "bob/two.py": network(),  # a folder without mynet.py and with two files
    "four_pools.py": network(init="self.block4 = ConvBlock([4 * w, 4 * w], unit=ConvBNReLU)\n"
                                  "        self.trans4 = TransitionBlock(4 * w)",
                             forward="return self.head(self.trans4(self.block4(x)))"),
    "huge.py": network(mid="360, 360"),  # two 360-channel 3x3 convs: 1.2 M parameters
    "syntax.py": network().replace("def forward(self, x):", "def forward(self, x)"),
    "import_error.py": network().replace("import ConvBlock,", "import ConvBlok,"),
    "nan.py": network(forward="return self.head(x).log()"),  # the log of log-probabilities: NaN
    "wrong_shape.py": network(head="self.pool, self.fc = GlobalPool2d(), nn.Conv2d(4 * w, 10, 1)",
                              forward="return self.fc(self.pool(x))"),  # no flatten: (N, 10, 1, 1)
    # about 7.5 GB at once: over the 8 GB cap with torch imported, fine (untouched pages) without a cap
    "hog.py": network(init="self.buffer = torch.empty(int(7.5 * 2 ** 30), dtype=torch.uint8)"),
    # ends in nn.Linear without log_softmax; two networks in the file, so it is named as logits.py:LogitsNet
    "logits.py": network(name="LogitsNet", top="import os\nprint('ENV', ' '.join(sorted(os.environ)))\n"
                                               "print('CWD', os.getcwd())\n\n"
                                               "class Backbone(nn.Module):\n    pass\n",
                         head="self.pool, self.fc = GlobalPool2d(), nn.Linear(4 * w, 10)",
                         forward="return self.fc(self.pool(x).flatten(1))"),
}
SYNTAX_LINE = network().splitlines().index("    def forward(self, x):") + 1
SECRETS = {"GITHUB_TOKEN": "ghp_secret", "AWS_SECRET_ACCESS_KEY": "aws-secret", "PGPASSWORD": "pg-secret"}
ARGS = ["--data", "synthetic", "--limit", "64", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
        "--workers", "3", "--timeout", "30", "--memory-gb", "8"]

# name -> (status, the rules that fail (their names' key words), the reason's key words)
EXPECTED = {
    "spin": ("timeout", None, ["timed out after 30 s", "checking the rules"]),
    "alice": ("ok", [], []),
    "bob": ("error", None, ["no model file", "mynet.py", "one.py, two.py"]),
    "four_pools": ("broke-rules", ["max-pool"], ["max-pool", "not trained"]),
    "huge": ("broke-rules", ["param"], ["param", "not trained"]),
    "syntax": ("error", None, ["SyntaxError", f"syntax.py, line {SYNTAX_LINE}"]),
    "import_error": ("error", None, ["ImportError", "ConvBlok"]),
    "nan": ("error", [], ["returns NaN or infinite scores before any training"]),
    "wrong_shape": ("error", [], ["returns shape 8x10x1x1 for 8 images", "training needs (8, 10)", "flatten"]),
    "hog": ("out-of-memory", None, ["out of memory", "building the network"]),
    "logits": ("ok", [], []),
    "forged": ("ok", [], []),
    "damaged": ("error", None, ["checkpoint", "cannot be read"]),
}


def forged_run(folder, source_dir):
    """A run folder as python -m helpers.train --out leaves it (checkpoint, history, the model file's copy),
    whose history claims 99 % for weights that never trained; its own data: 40 synthetic images per split."""
    source_dir.mkdir()
    (source_dir / "net.py").write_text(network())
    trial = Trial(recipe="fast", model=f"{source_dir / 'net.py'}:Net", data="synthetic", limit=40, batch_size=20,
                  epochs=1, device="cpu", progress=False, out_dir=folder, log=lambda m: None)
    trainer = trial.setup()
    trainer.history = [dict(epoch=1, train_loss=0.05, train_acc=0.99, test_loss=0.04, test_acc=0.99, tta_acc=0.99,
                            lr=0.1, train_seconds=1.0, eval_seconds=0.1, peak_rss_mb=100.0)]
    trainer.save()
    trial.lock.release()
    return folder


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The class graded once: (folder of submissions, --out folder, the command line, what it printed)."""
    root = tmp_path_factory.mktemp("class")
    subs = root / "subs"
    for name, text in SOURCES.items():
        (subs / name).parent.mkdir(parents=True, exist_ok=True)
        (subs / name).write_text(text)
    (subs / "spin.py").write_text(network(forward=SPIN_FORWARD.format(pid_file=str(root / "spin.pid"))))
    forged_run(subs / "forged", root / "trained-from")
    shutil.copytree(subs / "forged", subs / "damaged")
    ckpt = subs / "damaged" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    out = root / "grades"
    # the spin first: its 30 s (asleep) pass while the other two workers grade the rest
    argv = [str(subs / n) for n in ("spin.py", "alice", "bob", "four_pools.py", "huge.py", "syntax.py",
                                    "import_error.py", "nan.py", "wrong_shape.py", "hog.py", "logits.py:LogitsNet",
                                    "forged", "damaged")] + ARGS + ["--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        mp.setenv("CIFAR_CACHE", str(root / "cache"))
        t0 = time.monotonic()
        printed = _grade(argv)
        printed["seconds"] = time.monotonic() - t0
    return dict(root=root, subs=subs, out=out, argv=argv, printed=printed)


def _grade(argv) -> dict:
    """main() in this process (each submission still runs in its own); what it returned and printed."""
    import contextlib

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = grade.main(argv)
    return dict(code=code, out=stdout.getvalue(), err=stderr.getvalue())


def rows_of(out) -> dict:
    return {row["name"]: row for row in json.loads((out / "grades.json").read_text())}


def test_the_batch_grades_every_submission_whatever_it_does(batch):
    assert batch["printed"]["code"] == 0, batch["printed"]["err"]
    assert list(rows_of(batch["out"])) == list(EXPECTED)  # one row each, in the command line's order
    print(batch["printed"]["out"])  # with -s: seconds per submission, and start-up's part of them


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_row_says_what_happened(batch, name):
    status, failing, words = EXPECTED[name]
    row = rows_of(batch["out"])[name]
    assert row["status"] == status, row["reason"]
    if failing is None:  # it never got as far as the rule check
        assert row["rules"] is None
    else:
        assert len(row["rules"]) == 5
        failed = [r["rule"] for r in row["rules"] if not r["passed"]]
        assert len(failed) == len(failing) and all(word in rule for word, rule in zip(failing, failed)), failed
        assert row["params"] > 0 and row["receptive_field"] > 1
    for word in words:
        assert word in row["reason"], row["reason"]
    if status == "ok":
        assert row["reason"] is None and 0 <= row["accuracy"] <= 1 and row["verdict"] in ("yes", "no")
    else:  # a network that breaks a rule, or fails, has no accuracy and passes nothing
        assert row["accuracy"] is None and row["train_seconds"] is None and row["verdict"] == "no"
    log = (batch["out"] / row["log"]).read_text()
    assert row["status"] in log.splitlines()[-1]  # every submission's log ends with its outcome


def test_a_trained_row_has_its_seeds_time_and_memory(batch):
    row = rows_of(batch["out"])["alice"]
    assert row["score_by"] == "training" and row["recipe"] == "fast" and row["epochs"] == 1
    assert row["seeds"] == [0] and row["accuracy"] == row["seed_accuracies"][0]
    assert row["test_images"] == 64  # the grader's split
    assert row["train_seconds"] > 0 and row["seconds"] > row["startup_seconds"] > 0 and row["peak_rss_mb"] > 100
    assert row["network"] == "MyNet"
    assert "not the network" not in (batch["out"] / row["log"]).read_text()  # alice/mynet.py, not notes.py


def test_a_logits_network_trains_like_any_other(batch):
    """It ends in nn.Linear without log_softmax: the loss is cross-entropy, so it needs no special case."""
    row = rows_of(batch["out"])["logits"]
    assert row["status"] == "ok" and row["network"] == "LogitsNet" and row["score_by"] == "training"
    log = (batch["out"] / row["log"]).read_text()
    assert "train loss" in log and "nan" not in log.split("train loss")[1].split()[0]


def test_a_forged_checkpoint_is_re_scored_and_its_claim_only_shown(batch):
    """history says 99 %; the weights are untrained. The row's accuracy is the weights' on the grader's test
    split (64 images, not the run's own 40), normalised with the run's mean and std; 99 % is only 'claimed'."""
    row = rows_of(batch["out"])["forged"]
    assert row["score_by"] == "checkpoint" and row["claimed_accuracy"] == 0.99
    assert row["accuracy"] < 0.5 and row["verdict"] == "no" and row["test_images"] == 64
    ckpt = read_checkpoint(batch["subs"] / "forged" / "checkpoint.pt")
    model = build_model(f"{batch['subs'] / 'forged' / 'net.py'}:Net")
    model.load_state_dict(ckpt["model"])
    loader = Loader(load_split("synthetic", "test", limit=64), 500, False, ckpt["config"]["mean"],
                    ckpt["config"]["std"])
    assert row["accuracy"] == pytest.approx(evaluate(model, loader)["test_acc"], abs=1e-9)
    table = (batch["out"] / "grades.md").read_text()
    line = next(x for x in table.splitlines() if x.startswith("| `forged`"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[6] == f"**{row['accuracy']:.2%}**" and cells[10] == "99.00%"  # accuracy; claimed beside it
    assert row["recipe"] == "fast" and row["recipe_changes"]["epochs"] == 1 and cells[8] == "checkpoint (fast*, 1 epoch)"


def test_an_endless_loop_is_killed_with_everything_it_started(batch):
    row = rows_of(batch["out"])["spin"]
    assert 30 <= row["seconds"] < 40
    pid = int((batch["root"] / "spin.pid").read_text())  # the process the submission started, then looped
    for _ in range(50):  # killed with its process group; gone once reaped (or a zombie until then)
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid}, started by the endless loop, outlived its grading")


def test_a_submission_runs_in_a_scratch_folder_without_the_graders_secrets(batch):
    log = (batch["out"] / "logs" / "logits.log").read_text()
    names = set(next(x for x in log.splitlines() if x.startswith("ENV ")).split()[1:])
    assert not names & set(SECRETS) and "PYTHONPATH" in names and "CIFAR_CACHE" in names
    assert names <= set(grade.ENV_ALLOWLIST) | set(grade.THREAD_VARS) | {"PYTHONPATH", "CIFAR_CACHE", "TMPDIR",
                                                                         "PYTHONUNBUFFERED"}
    cwd = next(x for x in log.splitlines() if x.startswith("CWD ")).split(" ", 1)[1]
    assert "grade-logits-" in cwd and str(batch["root"]) not in cwd
    assert not os.path.exists(cwd)  # removed after grading


def test_the_tables_hold_one_row_per_submission_with_every_rule(batch):
    out = batch["out"]
    lines = list(csv.reader(io.StringIO((out / "grades.csv").read_text())))
    header = lines[0]
    assert len(lines) == 1 + len(EXPECTED) and {"status", "accuracy", "seed_accuracies", "claimed_accuracy",
                                                "train_seconds", "peak_rss_mb", "reason", "params"} <= set(header)
    rules = [h for h in header if f"{h}: evidence" in header]  # every rule: its verdict and its evidence
    assert len(rules) == 5
    four_pools = dict(zip(header, lines[1 + list(EXPECTED).index("four_pools")]))
    assert [four_pools[r] for r in rules].count("FAIL") == 1 and "4 max-pool" in "".join(four_pools.values())
    rows = [x for x in (out / "grades.md").read_text().splitlines() if x.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(EXPECTED)
    assert (out / "logs" / "bob.log").exists() and len(list((out / "logs").iterdir())) == len(EXPECTED)


def test_a_rerun_grades_nothing_again_and_an_edited_file_is_regraded(batch):
    before = rows_of(batch["out"])
    again = _grade(batch["argv"])
    assert again["code"] == 0 and again["out"].count("skipped") == len(EXPECTED)
    assert rows_of(batch["out"]) == before
    (batch["subs"] / "alice" / "mynet.py").write_text(network(name="MyNet") + "# edited\n")
    edited = _grade(batch["argv"])
    assert edited["out"].count("skipped") == len(EXPECTED) - 1 and "[1/1] alice: ok" in edited["out"]
    after = rows_of(batch["out"])
    assert after["alice"]["sha1"] != before["alice"]["sha1"]
    assert {k: v for k, v in after.items() if k != "alice"} == {k: v for k, v in before.items() if k != "alice"}


def test_other_settings_grade_again(batch, tmp_path):
    """--score rules changes what a grade is: nothing is skipped, and no network trains."""
    out = tmp_path / "rules"
    shutil.copytree(batch["out"], out)
    argv = [str(batch["subs"] / n) for n in ("four_pools.py", "syntax.py")] + ARGS + ["--out", str(out),
                                                                                     "--score", "rules"]
    printed = _grade(argv)
    assert "skipped" not in printed["out"]
    rows = rows_of(out)
    assert rows["four_pools"]["status"] == "broke-rules" and rows["syntax"]["status"] == "error"
    assert len(rows) == len(EXPECTED)  # the earlier rows of that folder are kept


@pytest.mark.parametrize("argv, message", [
    ([], "no submissions: name the model files"),
    (["nowhere.py", "--out", "x"], "there is no file or folder nowhere.py"),
    (["mynet.py", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["mynet.py"], "--out DIR is required"),
    (["mynet.py", "--out", "x", "--model", "fast"], "drop --model"),
    (["mynet.py", "--out", "x", "--timeout", "0"], "argument --timeout: must be a number of seconds > 0"),
    (["README.md", "--out", "x"], "is not a model file"),
    (["mynet.py:1st", "--out", "x"], "write FILE.py:NAME"),
])
def test_bad_input_is_one_line_that_names_the_fix(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(grade.PROJECT)
    with pytest.raises(SystemExit) as e:
        grade.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_split_smaller_than_a_batch_is_refused_before_any_grading(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(grade.PROJECT)
    with pytest.raises(SystemExit):
        grade.main(["mynet.py", "--out", str(tmp_path / "g"), "--data", "synthetic", "--limit", "100"])
    assert "fewer than one batch of the recipe (256): add --batch-size" in capsys.readouterr().err
    assert not (tmp_path / "g" / "logs").exists()


def test_submissions_are_named_apart_and_graded_once(tmp_path):
    """Two students' mynet.py are alice-mynet and bob-mynet; a folder named twice (with and without its
    slash) is one submission; a fork's folder takes its name and its mynet.py."""
    for who in ("alice", "bob"):
        (tmp_path / who).mkdir()
        (tmp_path / who / "mynet.py").write_text(network(name="MyNet"))
    p = grade.get_parser()
    subs = [grade.resolve(p, str(tmp_path / x)) for x in ("alice/mynet.py", "bob/mynet.py", "alice", "bob/")]
    grade.name_them(subs)
    assert [s.name for s in subs] == ["alice-mynet", "bob-mynet", "alice", "bob"]
    assert subs[2].path == subs[0].path and subs[2].id != subs[0].id  # the same file, named as a folder
    assert grade.resolve(p, str(tmp_path / "bob")).id == subs[3].id


@pytest.mark.parametrize("score_by, seeds, accuracy, verdict", [
    ("training", [0], 0.805, "borderline"),   # one seed within a point of 80 %: three decide
    ("training", [0], 0.795, "borderline"),
    ("training", [0, 1, 2], 0.805, "yes"),    # the median of three decides
    ("training", [0, 1, 2], 0.80, "no"),      # more than 80 % passes
    ("training", [0], 0.82, "yes"),
    ("checkpoint", None, 0.795, "no"),        # a re-scored checkpoint decides
    ("checkpoint", None, 0.805, "yes"),
])
def test_the_verdict_follows_the_policy(score_by, seeds, accuracy, verdict):
    assert grade.verdict(dict(status="ok", accuracy=accuracy, score_by=score_by, seeds=seeds)) == verdict


def test_a_re_scored_runs_recipe_is_its_name_starred_and_in_full_in_the_csv():
    """A run folder's recipe is stored as data (name, changes): grades.md says "fast*", grades.csv the whole."""
    row = dict(name="r", submission="runs/r", kind="run", status="ok", score_by="checkpoint", recipe="fast",
               recipe_changes={"epochs": 1}, epochs=1, accuracy=0.5, verdict="no", rules=[], notes=[], seconds=3.0)
    assert "| checkpoint (fast*, 1 epoch) |" in grade.markdown([row])
    header, line = list(csv.reader(io.StringIO(grade.csv_text([row]))))
    assert dict(zip(header, line))["recipe"] == "fast (epochs=1)"
    unchanged = dict(row, recipe_changes={})
    assert "| checkpoint (fast, 1 epoch) |" in grade.markdown([unchanged])
    assert dict(zip(*csv.reader(io.StringIO(grade.csv_text([unchanged])))))["recipe"] == "fast"


def test_help_names_the_policy_and_the_docs(capsys):
    with pytest.raises(SystemExit) as e:
        grade.main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "docs/grading.md" in text and "--timeout" in text and "--model" not in text


# --------------------------------------------------------------------------- the one network in a file

@pytest.mark.parametrize("source, found", [
    (network(name="MyNet"), "MyNet"),
    # classes first: a main() takes no arguments either
    (network(name="MyNet") + "\ndef main():\n    print(MyNet())\n", "MyNet"),
    # a stage is a part, never the network
    (network(name="MyNet") + "\nclass Stage(ConvBlock):\n    def __init__(self, c=8):\n"
                             "        super().__init__([c, c])\n", "MyNet"),
    # no class builds without arguments: the one factory
    (network(name="Net").replace("width=8", "width") + "\ndef make():\n    return Net(8)\n", "make"),
])
def test_find_network_picks_the_one_network_a_file_defines(tmp_path, source, found):
    path = tmp_path / "net.py"
    path.write_text(source)
    assert find_network(path) == f"{path}:{found}"


@pytest.mark.parametrize("source, message", [
    (network(name="LogitsNet", top="class Backbone(nn.Module):\n    pass\n"),
     "defines 2 networks (Backbone, LogitsNet): name the one"),
    (network(name="Net").replace("width=8", "width"), "defines no network that builds without arguments "
                                                       "(it defines Net)"),
])
def test_find_network_lists_what_a_file_defines_when_it_cannot_choose(tmp_path, source, message):
    path = tmp_path / "net.py"
    path.write_text(source)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_network(path)

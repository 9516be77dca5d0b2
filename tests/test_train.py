"""`python -m helpers.train`, the command: bad flags refused before any work, a run and its resume, Ctrl-C."""
import re

import pytest

from helpers.registry import list_models
from helpers.run import Trainer
from helpers.train import main as train_main


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "positive integer"),
    (["--data", "folder"], "--data-dir"),
    (["--lr", "-1", "--data", "synthetic"], "--lr must be > 0"),
    (["--model", "nope"], f"unknown model 'nope'; use one of {', '.join(list_models())}, or your own FILE.py:NAME"),
    (["--val", "1.5"], "argument --val: validation split (--val / val=) 1.5: a fraction must lie below 1"),
    (["--val", "-3"], "validation split (--val / val=) -3 is negative"),
    (["--val", "ten"], "validation split (--val / val=) 'ten': give a number of images (5000) or a fraction"),
])
def test_cli_rejects_bad_flags_before_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(argv + ["--out", str(tmp_path / "x")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_runs_and_resumes(tmp_path, capsys):
    args = ["--data", "synthetic", "--limit", "80", "--epochs", "1", "--batch-size", "40", "--out", str(tmp_path / "r")]
    assert train_main(args) == 0
    assert train_main(args) == 2 and "--resume" in capsys.readouterr().err
    assert train_main(args + ["--resume"]) == 0


def test_cli_trains_with_a_validation_split_and_refuses_to_resume_without_it(tmp_path, capsys):
    args = ["--data", "synthetic", "--limit", "120", "--epochs", "1", "--batch-size", "40",
            "--out", str(tmp_path / "r")]
    assert train_main([*args, "--val", "40"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"epoch   1/1  .* test loss [\d.]+ acc [\d.]+%  val acc [\d.]+%  lr ", out), out
    assert re.search(r"final test accuracy \(plain, single view\) [\d.]+%, best epoch [\d.]+%; validation accuracy "
                     r"[\d.]+% \(--val 40\); 80% ", out), out
    assert train_main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume ") and "validation split (--val / val=): checkpoint 40, now None" in err
    assert train_main([*args, "--resume", "--val", "40"]) == 0


def test_ctrl_c_during_training_is_one_line_naming_the_resume(tmp_path, monkeypatch, capsys):
    real = Trainer.train_one_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)
    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted_in_epoch_2)
    argv = ["--data", "synthetic", "--limit", "120", "--batch-size", "40", "--epochs", "3",
            "--out", str(tmp_path / "r")]
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: 1 epoch(s) saved in") and err[0].endswith("--resume")
    assert not (tmp_path / "r" / "run.lock").exists()  # the folder is free for the resume
    monkeypatch.setattr(Trainer, "train_one_epoch", real)
    assert train_main([*argv, "--resume"]) == 0

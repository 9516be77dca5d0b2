"""Grade a class: every submission's rule report, then its plain test accuracy, one row each.

    python -m helpers.grade subs/* --out grades                 # CIFAR-10, recipe fast, one seed each
    python -m helpers.grade subs/* --out grades --seeds 3       # the median of three seeds counts
    python -m helpers.grade runs/alice runs/bob --out grades    # run folders: their checkpoints re-scored
    python -m helpers.grade subs/* --out dry --data synthetic --limit 200 --batch-size 50 --epochs 1

A submission is a model file (FILE.py, or FILE.py:NAME when the file defines more than one network), a
folder holding one (a cloned fork: its mynet.py, else its only .py file), a run folder (checkpoint.pt,
history.json and the copy of the model file, as `python -m helpers.train --out` writes it), or a
registered model name (`python -m helpers.constraints --help` lists them). Each is checked against the
rules; one that breaks a rule is reported and not trained. Then a run folder's checkpoint is re-scored on
the grader's test split (its own claimed accuracy is shown beside, never used), and a model file is trained
with one fixed recipe for --seeds seeds, the median counting. --score chooses otherwise.

Every submission runs in a process of its own, in a fresh scratch folder, with an environment
stripped to an allowlist, a wall-clock --timeout and an address-space cap (--memory-gb): a crash, an
endless loop or a runaway allocation is that submission's row, never the batch's end. Submissions are
code: the scratch folder and the stripped environment are not a sandbox, so grade an untrusted class
inside a container. The policy and the columns: docs/grading.md.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT, HISTORY, read_checkpoint
from .cli import get_args_parser, overrides, parse, positive_int
from .constraints import check
from .data import default_cache_dir, load_split, load_splits
from .device import peak_memory_mb, peak_rss_mb, pick_device
from .errors import UserError
from .loader import Loader
from .loop import NonFiniteLossError, evaluate
from .recipes import Recipe, RecipeName, recipe_name
from .registry import FACTORY, build_model, find_network, is_file_spec, list_models, parse_file_spec
from .rundir import atomic_write, check_writable
from .probe import check_output
from .run import Trial

PROJECT = Path(__file__).resolve().parents[1]

# the assignment's bar, plain single-view test accuracy; within BORDER of it, one trained seed decides
# nothing (seeds differ by about that much), so such a row says to grade again with three
TARGET = 0.80
BORDER = 0.01
SEEDS_TO_DECIDE = 3

# what a model file may be: a Python file, or a notebook (its definitions only: no training cell runs)
MODEL_SUFFIXES = (".py", ".ipynb")
FORK_FILE = "mynet.py"  # the file the assignment asks students to write their network in

# Importing torch alone takes 3.5 GB of address space on this project's CPU machine (torch 2.14, CUDA
# wheels: VmPeak 3.57 GB; under a 3 GB cap the import fails), and a whole `best` epoch at batch 1000
# reaches 3.9 GB (its resident peak: 0.9 GB; full CIFAR-10 runs peak at 1.5-1.9 GB resident). 8 GB leaves
# about twice the run's own needs and still stops a submission that allocates without bound.
DEFAULT_MEMORY_GB = 8.0
# a whole `fast` grading (3 epochs, about a minute on a 2-core CPU) fits three seeds many times over
DEFAULT_TIMEOUT = 1800.0

# the variables a submission's process gets from the grader's environment; nothing else (no tokens, no
# AWS_*, no PGPASSWORD): LD_LIBRARY_PATH and CUDA_HOME only locate CUDA's libraries on some machines
ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "CUDA_HOME")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

RESULT = "result.json"  # what a submission's process reports, in its scratch folder
GRADES = "grades"       # grades.json, grades.csv, grades.md in --out

OK, RULES, ERROR, TIMEOUT, OOM = "ok", "broke-rules", "error", "timeout", "out-of-memory"
SCORES = ("auto", "checkpoint", "train", "rules")


class GradeError(UserError):
    """A submission that cannot be graded as it is; the message is its row's reason."""


# --------------------------------------------------------------------------- the command line

def get_parser() -> argparse.ArgumentParser:
    p = get_args_parser("python -m helpers.grade", __doc__.split("\n\n")[0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("Which number counts: the plain single-view test accuracy of the final epoch (> 80 % passes). "
                f"A result within {100 * BORDER:g} point of {100 * TARGET:g} % from fewer than {SEEDS_TO_DECIDE} "
                "trained seeds is "
                f"marked borderline: grade it again with --seeds {SEEDS_TO_DECIDE} (or from its checkpoint). "
                "Policy, outputs and their columns: docs/grading.md")
    p.set_defaults(recipe="fast")  # the recipe a class is trained with: three epochs reach 80 % with `fast`
    # refused, so not offered: the networks are the SUBMISSIONs (--model), and every submission trains on the whole
    # training split and is scored on the test split, as the assignment says (--val)
    for action in p._actions:
        if action.dest in ("model", "val"):
            action.help = argparse.SUPPRESS
    p.add_argument("submissions", nargs="*", metavar="SUBMISSION",
                   help="a model file FILE.py or FILE.py:NAME, a folder holding one (mynet.py), a run folder "
                        "(checkpoint.pt + history.json), or a registered model name")
    p.add_argument("--out", help="folder for grades.csv, grades.json, grades.md and logs/NAME.log; graded again "
                                 "into the same folder, it skips the submissions graded before with the same "
                                 "content and settings")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="train each model file with N seeds, --seed .. --seed+N-1; the median of their final "
                        "plain test accuracies counts (default: %(default)s)")
    p.add_argument("--score", choices=SCORES, default="auto",
                   help="auto: re-score run folders' checkpoints, train model files; checkpoint: re-score only; "
                        "train: train every network, a run folder's from its copy of the model file; rules: the "
                        "rule reports only (default: %(default)s)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                   help="wall-clock seconds per submission, start-up included; then its whole process group is "
                        "killed and the row says timeout (default: %(default)g)")
    p.add_argument("--memory-gb", type=_gigabytes, default=DEFAULT_MEMORY_GB,
                   help="address-space cap per submission in GB (importing torch alone needs about 3.5); 0: no "
                        "cap. Not applied on CUDA, whose driver fails to start under one (default: %(default)g)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="grade N submissions at once, each with cores/N threads unless --threads; on a machine "
                        "with GPUs, worker i gets GPU i mod the GPU count (default: %(default)s)")
    # internal: grade the one submission in this process and write its row to FILE (the batch starts it)
    p.add_argument("--worker", metavar="FILE", help=argparse.SUPPRESS)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of GB >= 0 (0: no cap), got {text!r}")
    return value


def main(argv=None) -> int:
    p = get_parser()
    args = parse(p, argv)  # the shared checks (--data / --data-dir, --lr) and --threads
    if args.val:  # a validation split is for tuning; a grade is the test accuracy of a training on every image
        p.error(f"--val {args.val}: grading trains each submission on the whole training split and scores its plain "
                "test accuracy, as the assignment does; a validation split is for tuning (helpers.sweep, "
                "helpers.train): drop --val")
    if args.worker:
        code = grade_here(args)
        if argv is None:  # started as a command, by the batch: its row is written, so end without tearing
            sys.stdout.flush()  # torch down, which takes about 2 s, a third of a small submission's time
            sys.stderr.flush()
            os._exit(code)
        return code
    if not args.submissions:
        p.error("no submissions: name the model files, fork folders or run folders to grade, e.g. "
                "python -m helpers.grade subs/* --out grades")
    if not args.out:
        p.error("--out DIR is required: the folder that receives grades.csv, grades.json, grades.md and logs/")
    if args.model:
        p.error("--model: the networks to grade are the SUBMISSION arguments; drop --model")
    unique = {}  # each once (subs/a and subs/a/ are one folder), in the command line's order
    for s in (resolve(p, text) for text in args.submissions):
        unique.setdefault(s.id, s)
    submissions = list(unique.values())
    name_them(submissions)
    try:
        check_writable(args.out, create=False)  # created once the batch starts
        # bad recipe values and a split smaller than one batch are the batch's mistake: one line, before anything
        trial = Trial(recipe=args.recipe, data="synthetic", **overrides(args))
        if args.score != "rules":
            # read (CIFAR-10: downloaded) once here, into the cache every submission's process reads
            train_set, _ = load_splits(args.data, args.data_dir, args.limit, log=lambda m: print(m, file=sys.stderr))
            trains = any(s.kind != "run" for s in submissions) or args.score == "train"
            if trains and len(train_set) < trial.recipe.batch_size:
                p.error(f"the training split has {len(train_set)} images, fewer than one batch of the recipe "
                        f"({trial.recipe.batch_size}): add --batch-size {max(1, len(train_set) // 4)} or raise --limit")
    except (ValueError, FileNotFoundError) as e:  # UserError, DataError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return Batch(args, submissions).run()


# --------------------------------------------------------------------------- submissions

@dataclass
class Submission:
    """One thing to grade, found without running any of its code."""
    text: str                 # as given on the command line
    kind: str                 # "file", "run" (a run folder), "registered"
    path: Path | None         # the model file or the run folder, resolved; None for a registered name
    network: str | None = None  # NAME of FILE.py:NAME, when given
    files: list = field(default_factory=list)  # what is copied into the scratch folder (and hashed)
    problem: str | None = None  # why it cannot be graded, found before running it (its row's reason)
    base: str = ""            # its short name: the file's stem, the folder's or the model's name
    where: str = ""           # the name of the folder it lies in, to tell two of one base name apart
    name: str = ""            # its row's and log's name, unique in the batch (name_them)
    id: str = ""              # what a rerun recognises it by: what was named, resolved (a folder, not its file)

    @functools.cached_property
    def sha1(self) -> str | None:
        """SHA-1 of what is graded: the files' names and bytes (a registered network: its module's source);
        None for a submission found unfit before running."""
        if self.problem is not None:
            return None
        h = hashlib.sha1(f"{self.kind}\n{self.network}\n".encode())
        sources = self.files or ([PROJECT / "helpers" / "model.py"] if self.kind == "registered" else [])
        for path in sources:
            h.update(f"{path.name}\n".encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    def target(self) -> str:
        """The submission as its process names it, relative to its scratch folder."""
        if self.kind == "registered":
            return self.text
        if self.kind == "run":
            return "submission"
        return f"submission/{self.path.name}" + (f":{self.network}" if self.network else "")


def resolve(p: argparse.ArgumentParser, text: str) -> Submission:
    """A command-line SUBMISSION as a Submission; one that names nothing is the caller's typo (p.error)."""
    network = None
    if is_file_spec(text):
        try:
            path, network = parse_file_spec(text)
        except UserError as e:  # FILE.py:NAME with a NAME that is no Python name
            p.error(f"submission {e}")
    else:
        path = Path(text).expanduser()
    if path.is_file() and path.name == CHECKPOINT:  # the checkpoint named instead of its folder
        path = path.parent
    if path.is_dir():
        if network:
            p.error(f"submission {text!r}: {path} is a folder; write FOLDER/FILE.py:NAME")
        return _folder(text, path.resolve())
    if path.is_file():
        if path.suffix not in MODEL_SUFFIXES:
            p.error(f"submission {text!r} is not a model file ({', '.join(MODEL_SUFFIXES)}): give FILE.py, "
                    "FILE.py:NAME, a folder holding the model file, or a run folder")
        path = path.resolve()
        return Submission(text, "file", path, network, files=[path], base=path.stem, where=path.parent.name,
                          id=f"{path}:{network}" if network else str(path))
    if text in list_models():
        return Submission(text, "registered", None, base=text, id=text)
    p.error(f"submission {text!r}: there is no file or folder {path} (and it is not a registered model: "
            f"{', '.join(list_models())}): check the path")


def _folder(text: str, folder: Path) -> Submission:
    """A run folder (it holds checkpoint.pt) or a fork's folder (its model file), named after the folder."""
    named = dict(base=folder.name, where=folder.parent.name, id=str(folder))
    if (folder / CHECKPOINT).is_file():
        # the checkpoint, its history and the copy of the model file: the run folder's top-level files
        files = [folder / CHECKPOINT] + sorted(f for f in folder.iterdir() if f.is_file() and
                                               (f.name == HISTORY or f.suffix in MODEL_SUFFIXES))
        return Submission(text, "run", folder, files=files, **named)
    found = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in MODEL_SUFFIXES)
    if (folder / FORK_FILE).is_file():
        found = [folder / FORK_FILE]
    if len(found) == 1:
        return Submission(text, "file", found[0], files=found, **named)
    listed = (f" but {len(found)} model files ({', '.join(f.name for f in found)})" if found
              else " and no .py or .ipynb file")
    return Submission(text, "file", folder, problem=f"no model file: {folder} holds no {FORK_FILE}{listed}; "
                                                    "name the file as FOLDER/FILE.py", **named)


def name_them(submissions: list[Submission]):
    """Give every submission a short name, unique in the batch: the file's stem, the folder's or the
    model's name; when two share one, with the folder above (alice-mynet) and NAME, then a number."""
    def clean(text):
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in text) or "submission"

    bases = [clean(s.base) for s in submissions]
    names = [clean("-".join(filter(None, [s.where, s.base, s.network]))) if bases.count(base) > 1 else base
             for s, base in zip(submissions, bases)]
    taken = set()
    for s, name in zip(submissions, names):
        n, unique = 1, name
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique)
        s.name = unique


# --------------------------------------------------------------------------- one submission, in its own process

def grade_here(args) -> int:
    """--worker: grade args.submissions[0] in this process, which the batch started in a scratch folder.
    The row is written to args.worker after every step, so a kill (timeout) leaves what was reached.
    Whatever the submission's code raises ends as that row's status and reason, with its traceback here
    (the submission's log); exit 0 means a row was written."""
    out = Path(args.worker)
    row = dict(ready_at=time.time(), stage="finding the network")  # ready: Python started, torch imported

    def save(**changes):
        row.update(changes)
        atomic_write(out, lambda f: f.write(json.dumps(row).encode()))

    save()
    try:
        _grade(args, args.submissions[0], save)
    except BaseException as e:  # SystemExit from the submission's code too: it ends this row, not the batch
        traceback.print_exc()
        status, reason = failure(e, row["stage"])
        save(status=status, reason=reason)
    save(peak_rss_mb=round(peak_rss_mb(), 1))
    print(f"graded: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""), flush=True)
    return 0


def _grade(args, target: str, save):
    kwargs, ckpt = None, None
    if Path(target).is_dir():  # a run folder
        save(stage="reading the checkpoint")
        ckpt = read_checkpoint(Path(target) / CHECKPOINT)
        spec = _run_network(ckpt["config"], Path(target))
        if args.score != "train":  # re-scored: built as it was trained; trained again: as the grader's recipe says
            kwargs = Recipe.from_dict(ckpt["config"]["recipe"]).model_kwargs
    elif is_file_spec(target) or target in list_models():
        spec = target
    else:  # FILE.py without NAME: the one network it defines
        spec = find_network(target)
    if kwargs is None:  # the arguments the training will build it with
        kwargs = Trial(recipe=args.recipe, model=spec, data="synthetic", **overrides(args)).recipe.model_kwargs
    print(f"network: {spec}" + (f" {kwargs}" if kwargs else ""), flush=True)
    save(stage="building the network", network=spec.rpartition(":")[2] if is_file_spec(spec) else spec)
    torch.manual_seed(args.seed)
    model = build_model(spec, **kwargs)
    save(stage="checking the rules")
    report = check(model)
    print(report, flush=True)
    save(rules=[dict(rule=r.name, passed=bool(r.passed), evidence=r.evidence) for r in report.rules],
         params=report.params, receptive_field=report.final_receptive_field)
    if not report.passed:
        broken = "; ".join(f"{r.name} ({r.evidence})" for r in report.rules if not r.passed)
        save(status=RULES, reason=f"breaks {broken}: not trained")
        return
    if args.score == "rules":
        save(status=OK, score_by="rules")
    elif ckpt is not None and args.score != "train":
        _rescore(args, ckpt, model, save)
    elif args.score == "checkpoint":
        raise GradeError("no checkpoint to re-score (a model file): grade it with --score auto or train")
    else:
        _train(args, spec, save)


def _run_network(config: dict, folder: Path) -> str:
    """The spec that rebuilds a run folder's network: its copy of the model file, or a registered name."""
    identity = config.get("model_identity") or dict(spec=Recipe.from_dict(config["recipe"]).model)
    spec = identity["spec"]
    if spec.startswith(FACTORY):
        raise GradeError("this run's network was a Python function (Trial(model=...)), which a run folder cannot "
                         "rebuild: submit the model file instead")
    if not is_file_spec(spec):
        return spec  # a registered model
    path, name = parse_file_spec(spec)
    copy = folder / identity.get("copy", path.name)
    if not copy.is_file():
        raise GradeError(f"the run folder holds no copy of its model file ({copy.name}); submit the folder that "
                         "python -m helpers.train --out wrote, whole")
    sha1 = hashlib.sha1(copy.read_bytes()).hexdigest()
    if identity.get("sha1") and sha1 != identity["sha1"]:  # the weights decide: they load into it, or the row fails
        print(f"note: {copy.name} has changed since the run (SHA-1 {identity['sha1'][:12]} then, {sha1[:12]} now): "
              "the checkpoint's weights are loaded into the network it defines now", flush=True)
    return f"{copy}:{name}"


def _rescore(args, ckpt: dict, model, save):
    """The checkpoint's weights on the grader's test split, normalised with the run's own mean and std,
    in fp32: plain single view. Its stored accuracy is only shown beside, as claimed."""
    config, history = ckpt["config"], ckpt["history"]
    named = recipe_name(config["recipe"])
    save(stage="re-scoring the checkpoint", score_by="checkpoint", recipe=named.name, recipe_changes=named.changes,
         epochs=len(history), claimed_accuracy=history[-1]["test_acc"] if history else None)
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])  # the average, when the run kept one, was evaluated
    device = pick_device(args.device)
    test_set = load_split(args.data, "test", args.data_dir, args.limit)
    if config.get("classes") and list(config["classes"]) != list(test_set.classes):
        raise GradeError(f"the run was trained on the classes {config['classes']}, the test split has "
                         f"{test_set.classes}: re-score it on its own kind of data (--data)")
    loader = Loader(test_set, 500, False, config["mean"], config["std"], device)
    model = model.to(device)
    check_output(model, next(iter(loader))[0][:8], len(loader.classes))  # what training's first pass checks
    t0 = time.perf_counter()
    accuracy = evaluate(model, loader, "fp32")["test_acc"]
    wanted = Recipe.from_dict(config["recipe"]).epochs
    notes = [f"the run stopped after epoch {len(history)} of {wanted}"] if len(history) < wanted else []
    claims = f" (the checkpoint claims {history[-1]['test_acc']:.2%})" if history else ""
    print(f"re-scored: plain test accuracy {accuracy:.2%} on {len(test_set)} images{claims}", flush=True)
    save(status=OK, accuracy=accuracy, test_images=len(test_set), eval_seconds=round(time.perf_counter() - t0, 2),
         notes=notes,
         peak_device_mb=peak_memory_mb(device))


def _train(args, spec: str, save):
    """The fixed recipe, one run per seed, no run folder; the median of the final plain accuracies counts."""
    accuracies, seeds, seconds, device_mb = [], [], 0.0, None
    for seed in range(args.seed, args.seed + args.seeds):
        save(stage=f"training seed {seed}", score_by="training", recipe=args.recipe)
        trial = Trial(name=f"grade-s{seed}", recipe=args.recipe, model=spec, data=args.data, data_dir=args.data_dir,
                      limit=args.limit, seed=seed, progress=False, log=lambda m: print(m, flush=True),
                      **overrides(args))
        trainer = trial.setup()  # the network's first pass: a wrong output or NaN is one line (helpers/probe.py)
        record = trial.run()
        accuracies.append(record.final_acc)
        seeds.append(seed)
        seconds += sum(h["train_seconds"] for h in record.history)
        used = peak_memory_mb(trainer.device)
        device_mb = used if device_mb is None else max(device_mb, used or 0)
        save(recipe=args.recipe, epochs=len(record.history), test_images=len(trainer.test_loader.labels),
             seeds=seeds, seed_accuracies=accuracies,
             accuracy=statistics.median(accuracies), train_seconds=round(seconds, 2), peak_device_mb=device_mb)
    save(status=OK)


def failure(error: BaseException, stage: str) -> tuple[str, str]:
    """(status, reason) of what stopped a submission's grading."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError) or any(s in text for s in ("can't allocate memory", "Cannot allocate memory",
                                                                  "bad_alloc", "out of memory")):
        return OOM, f"out of memory while {stage}: {text or type(error).__name__}"
    if isinstance(error, NonFiniteLossError):
        return ERROR, f"NaN loss: {text}"
    if isinstance(error, SystemExit):
        return ERROR, f"the submission exited (sys.exit({error.code!r})) while {stage}"
    if isinstance(error, UserError):  # ModelError (syntax, import, no network), CheckpointError, GradeError ...
        return ERROR, text
    return ERROR, f"{type(error).__name__} while {stage}: {text}"


# --------------------------------------------------------------------------- the batch

@dataclass
class Job:
    submission: Submission
    slot: int
    proc: subprocess.Popen
    scratch: Path
    log: io.TextIOBase
    started: float
    deadline: float


class Batch:
    """The submissions to grade, graded `--workers` at a time, each in its own process; the outputs are
    rewritten after every row, so an interrupted batch keeps what it graded."""

    def __init__(self, args, submissions: list[Submission]):
        self.args, self.submissions = args, submissions
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows = self._previous()
        self.cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        self.threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)

    def _previous(self) -> dict:
        """The rows of an earlier batch in the same --out, by submission id."""
        path = self.out / f"{GRADES}.json"
        if not path.exists():
            return {}
        try:
            return {row["id"]: row for row in json.loads(path.read_text())}
        except (ValueError, KeyError, TypeError) as e:
            print(f"note: {path} cannot be read ({e}): every submission is graded again", file=sys.stderr)
            return {}

    def settings(self, s: Submission) -> dict:
        """What decides a submission's grade: a rerun with the same settings and content skips it. A
        re-scored checkpoint depends on the test split alone; a training on the recipe's flags too."""
        a = self.args
        rescored = s.kind == "run" and a.score in ("auto", "checkpoint")
        keep = dict(data=a.data, data_dir=str(Path(a.data_dir).resolve()) if a.data_dir else None, limit=a.limit,
                    score=a.score, device=a.device, timeout=a.timeout, memory_gb=a.memory_gb)
        if not rescored and a.score != "rules":
            keep |= dict(recipe=a.recipe, seed=a.seed, seeds=a.seeds, **{k: v for k, v in overrides(a).items()
                                                                          if k != "device"})
        return json.loads(json.dumps(keep, sort_keys=True))  # as it reads back from grades.json

    def run(self) -> int:
        todo = []
        for s in self.submissions:
            old = self.rows.get(s.id)
            if old and old.get("sha1") == s.sha1 and old.get("settings") == self.settings(s):
                print(f"{s.name}: graded before with the same content and settings, skipped ({old['status']})")
            else:
                todo.append(s)
        if self.cuda and self.args.memory_gb:
            print("note: --memory-gb is not applied on CUDA, whose driver fails to start under an address-space cap",
                  file=sys.stderr)
        total = len(todo)
        print(f"grading {total} of {len(self.submissions)} submission(s), {self.args.workers} at a time, "
              f"{self.threads} thread(s) each; outputs in {self.out}", flush=True)
        running: dict[int, Job] = {}
        free, done = list(range(self.args.workers)), 0
        try:
            while todo or running:
                while todo and free:
                    s = todo.pop(0)
                    if s.problem is not None:  # nothing to run: its row and its log say why
                        done += 1
                        (self.logs / f"{s.name}.log").write_text(f"grading {s.text}: {ERROR}: {s.problem}\n")
                        self.record(s, self._row(s, dict(status=ERROR, reason=s.problem), 0.0), done, total)
                        continue
                    job = self.start(s, free.pop(0))
                    running[job.slot] = job
                time.sleep(0.05 if running else 0)
                for slot, job in list(running.items()):
                    if job.proc.poll() is None and time.monotonic() < job.deadline:
                        continue
                    del running[slot]
                    free.append(slot)
                    done += 1
                    self.record(job.submission, self.finish(job, timed_out=job.proc.poll() is None), done, total)
        except KeyboardInterrupt:
            print(f"interrupted: {len(running)} submission(s) stopped, not recorded; the same command grades them "
                  "and the rest", file=sys.stderr)
            return 130
        finally:
            for job in running.values():  # Ctrl-C or a crash here: no submission outlives the batch
                self._kill(job)
                job.log.close()
                shutil.rmtree(job.scratch, ignore_errors=True)
        self.write()
        print(f"grades: {self.out / (GRADES + '.md')} (and .csv, .json); logs in {self.logs}")
        return 0

    # ---- one submission's process
    def start(self, s: Submission, slot: int) -> Job:
        scratch = Path(tempfile.mkdtemp(prefix=f"grade-{s.name}-"))
        (scratch / "submission").mkdir()
        (scratch / "tmp").mkdir()
        for f in s.files:  # copies: what the submission's code writes next to its file stays out of the originals
            shutil.copy2(f, scratch / "submission" / f.name)
        cmd = [sys.executable, "-m", "helpers.grade", "--worker", str(scratch / RESULT), s.target(),
               *self.worker_flags()]
        env = self.environment(scratch, slot)
        log = open(self.logs / f"{s.name}.log", "w")
        log.write(f"grading {s.text} (SHA-1 {s.sha1[:12]}) in {scratch}: timeout {self.args.timeout:g} s, "
                  f"memory cap {self._cap_words()}, {self.threads} thread(s)"
                  + (f", CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else "")
                  + f"\n$ {' '.join(cmd)}\n")
        log.flush()
        cap = self._cap_bytes()
        started = time.monotonic()
        # a session of its own: the whole process group can be killed, children the submission started included
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: _limit_memory(cap)) if cap else None)
        return Job(s, slot, proc, scratch, log, started, started + self.args.timeout)

    def worker_flags(self) -> list[str]:
        """The grading flags, as the submission's process parses them again."""
        a = self.args
        flags = ["--recipe", a.recipe, "--data", a.data, "--seed", str(a.seed), "--seeds", str(a.seeds),
                 "--score", a.score, "--device", a.device, "--threads", str(self.threads)]
        for flag, value in (("--data-dir", str(Path(a.data_dir).resolve()) if a.data_dir else None),
                            ("--epochs", a.epochs), ("--batch-size", a.batch_size), ("--lr", a.lr),
                            ("--limit", a.limit), ("--precision", a.precision), ("--compile", a.compile)):
            if value is not None:
                flags += [flag, str(value)]
        for name, value in a.set:
            flags += ["--set", f"{name}={json.dumps(value)}"]
        return flags

    def environment(self, scratch: Path, slot: int) -> dict:
        """The allowlist, plus what the grader sets: the project on PYTHONPATH, the dataset cache it filled,
        temporary files inside the scratch folder, the threads, and on CUDA this worker's GPU."""
        env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
        env |= dict(PYTHONPATH=str(PROJECT), CIFAR_CACHE=str(default_cache_dir().resolve()),
                    TMPDIR=str(scratch / "tmp"), PYTHONUNBUFFERED="1")
        env |= {k: str(self.threads) for k in THREAD_VARS}
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self.cuda and self.args.device in ("auto", "cuda"):  # one GPU per worker, each sees it as cuda:0
            gpus = gpus.split(",") if gpus else [str(i) for i in range(torch.cuda.device_count())]
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        elif gpus is not None:  # a device named (cuda:1): the GPUs the grader was given, as they are
            env["CUDA_VISIBLE_DEVICES"] = gpus
        return env

    def _cap_bytes(self) -> int | None:
        if not self.args.memory_gb or self.cuda:
            return None
        try:
            import resource
        except ImportError:  # Windows: no setrlimit, no cap
            return None
        cap = int(self.args.memory_gb * 2 ** 30)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        return cap if hard == resource.RLIM_INFINITY else min(cap, hard)  # a child cannot raise the hard limit

    def _cap_words(self) -> str:
        cap = self._cap_bytes()
        return f"{cap / 2 ** 30:g} GB of address space" if cap else "none"

    def finish(self, job: Job, timed_out: bool) -> dict:
        self._kill(job)
        seconds = time.monotonic() - job.started
        try:
            result = json.loads((job.scratch / RESULT).read_text())
        except (OSError, ValueError):
            result = {}
        stage = result.get("stage", "starting Python and importing torch")
        if timed_out:
            result |= dict(status=TIMEOUT, reason=f"timed out after {self.args.timeout:g} s while {stage} "
                                                  "(--timeout; its process group was killed)")
        elif "status" not in result:  # it died before writing a row: a signal, or exit() from native code
            code = job.proc.returncode
            how = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
            hint = ", perhaps by the system's out-of-memory killer" if code == -signal.SIGKILL else ""
            result |= dict(status=ERROR, reason=f"its process died ({how}{hint}) while {stage}")
        startup = result.get("ready_at") and round(result["ready_at"] - (time.time() - seconds), 2)
        row = self._row(job.submission, result, seconds, startup)
        job.log.write(f"\n{row['status']}" + (f": {row['reason']}" if row.get("reason") else "")
                      + f" ({seconds:.1f} s)\n")
        job.log.close()
        shutil.rmtree(job.scratch, ignore_errors=True)
        return row

    @staticmethod
    def _kill(job: Job):
        """SIGKILL the submission's process group: its own process if still running, and anything it left
        behind. (Its id cannot have been reused: the group is killed right after the process ends.)"""
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        job.proc.wait()

    def _row(self, s: Submission, result: dict, seconds: float, startup=None) -> dict:
        row = dict(name=s.name, submission=s.text, kind=s.kind, id=s.id, sha1=s.sha1,
                   status=result.get("status", ERROR), reason=result.get("reason"), network=result.get("network"),
                   rules=result.get("rules"), params=result.get("params"),
                   receptive_field=result.get("receptive_field"), score_by=result.get("score_by"),
                   accuracy=result.get("accuracy"), seeds=result.get("seeds"),
                   seed_accuracies=result.get("seed_accuracies"), claimed_accuracy=result.get("claimed_accuracy"),
                   recipe=result.get("recipe"), recipe_changes=result.get("recipe_changes"),
                   epochs=result.get("epochs"), test_images=result.get("test_images"),
                   train_seconds=result.get("train_seconds"), eval_seconds=result.get("eval_seconds"),
                   seconds=round(seconds, 2), startup_seconds=startup, peak_rss_mb=result.get("peak_rss_mb"),
                   peak_device_mb=result.get("peak_device_mb"), notes=result.get("notes") or [],
                   settings=self.settings(s), graded_at=datetime.datetime.now().isoformat(timespec="seconds"),
                   log=str(Path("logs") / f"{s.name}.log"))
        if row["status"] != OK:  # a partial result (a timeout during training) is no grade
            row["accuracy"] = None
        for f in s.files:  # the reason names the submission's file, not its copy in the scratch folder
            row["reason"] = row["reason"] and row["reason"].replace(f"submission/{f.name}", _shown(f))
        row["verdict"] = verdict(row)
        return row

    def record(self, s: Submission, row: dict, done: int, total: int):
        self.rows[s.id] = row
        self.write()
        acc = f", {row['accuracy']:.2%} plain" if row["accuracy"] is not None else ""
        startup = f", start-up {row['startup_seconds']:.1f} s" if row.get("startup_seconds") else ""
        print(f"[{done}/{total}] {s.name}: {row['status']}{acc}"
              + (f" ({row['reason']})" if row.get("reason") else "") + f" in {row['seconds']:.1f} s{startup}",
              flush=True)

    # ---- the outputs
    def ordered(self) -> list[dict]:
        """This batch's submissions in their order, then rows of earlier batches in this folder."""
        ids = [s.id for s in self.submissions if s.id in self.rows]
        return [self.rows[i] for i in ids] + [r for i, r in self.rows.items() if i not in ids]

    def write(self):
        rows = self.ordered()
        atomic_write(self.out / f"{GRADES}.json", lambda f: f.write(json.dumps(rows, indent=1).encode()))
        atomic_write(self.out / f"{GRADES}.csv", lambda f: f.write(csv_text(rows).encode()))
        atomic_write(self.out / f"{GRADES}.md", lambda f: f.write(markdown(rows).encode()))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time or platform-specific signal without a name
        return f"signal {number}"


def _limit_memory(cap: int):
    """In the submission's process, before it runs anything: the address-space cap, and no core dumps."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def verdict(row: dict) -> str:
    """"yes" (> 80 %), "no", "borderline" (one or two trained seeds within a point of 80 %: grade again
    with three), or "" (rules only). A re-scored checkpoint always decides."""
    if row["status"] != OK:
        return "no"
    acc = row["accuracy"]
    if acc is None:
        return ""
    if row["score_by"] == "training" and len(row["seeds"] or []) < SEEDS_TO_DECIDE and abs(acc - TARGET) < BORDER:
        return "borderline"
    return "yes" if acc > TARGET else "no"


# --------------------------------------------------------------------------- grades.csv and grades.md

CSV_FIELDS = ("name", "submission", "kind", "status", "verdict", "accuracy", "seed_accuracies", "seeds",
              "claimed_accuracy", "score_by", "recipe", "epochs", "test_images", "network", "params",
              "receptive_field", "rules_passed")
CSV_TAIL = ("train_seconds", "eval_seconds", "seconds", "startup_seconds", "peak_rss_mb", "peak_device_mb", "reason",
            "notes", "sha1", "graded_at", "log")


def csv_text(rows: list[dict]) -> str:
    """One line per submission; each rule as two columns, its verdict (PASS / FAIL) and its evidence."""
    rules = list(dict.fromkeys(r["rule"] for row in rows for r in row.get("rules") or []))
    header = [*CSV_FIELDS, *(c for name in rules for c in (name, f"{name}: evidence")), *CSV_TAIL]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    for row in rows:
        judged = {r["rule"]: r for r in row.get("rules") or []}
        cells = dict(row, rules_passed=_passed(row), seeds=_join(row.get("seeds")), recipe=_recipe(row),
                     seed_accuracies=_join(_round(a, 4) for a in row.get("seed_accuracies") or []),
                     accuracy=_round(row.get("accuracy"), 4), claimed_accuracy=_round(row.get("claimed_accuracy"), 4),
                     notes="; ".join(row.get("notes") or []))
        for name in rules:
            cells[name] = ("PASS" if judged[name]["passed"] else "FAIL") if name in judged else ""
            cells[f"{name}: evidence"] = judged[name]["evidence"] if name in judged else ""
        w.writerow(["" if cells.get(c) is None else cells[c] for c in header])
    return out.getvalue()


def markdown(rows: list[dict]) -> str:
    """The summary table: what counts first, then how it was measured, then why a row failed."""
    counts = {s: sum(r["status"] == s for r in rows) for s in (OK, RULES, ERROR, TIMEOUT, OOM)}
    lines = ["# Grades", "",
             f"{len(rows)} submission(s): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ". "
             "Accuracy is the plain single-view test accuracy of the final epoch (the assignment's number): a "
             "re-scored checkpoint's, or the median of the trained seeds'; a checkpoint's claimed accuracy is "
             f"shown beside, never used. > 80 %: yes / no, or borderline (within {100 * BORDER:g} point of "
             f"{100 * TARGET:g} % from "
             f"fewer than {SEEDS_TO_DECIDE} seeds: grade again with --seeds {SEEDS_TO_DECIDE}). Seconds: training "
             "(or re-scoring) / the whole submission, start-up (starting Python, importing torch) in brackets.",
             "",
             "| submission | status | rules | params | RF px | accuracy (plain) | > 80 % | scored by | per seed "
             "| claimed | train / eval s | total s (start-up) | peak MB | reason, notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        failed = [x["rule"] for x in r.get("rules") or [] if not x["passed"]]
        rules = "" if not r.get("rules") else (f"fails {', '.join(failed)}" if failed
                                               else f"all {len(r['rules'])} pass")
        per_seed = ", ".join(f"{s}: {_pct(a)}" for s, a in zip(r.get("seeds") or [], r.get("seed_accuracies") or []))
        how = _how(r)
        work = r.get("train_seconds") if r.get("score_by") == "training" else r.get("eval_seconds")
        total = f"{r['seconds']:.1f}" + (f" ({r['startup_seconds']:.1f})" if r.get("startup_seconds") else "")
        memory = " / ".join(f"{m:,.0f}" for m in (r.get("peak_rss_mb"), r.get("peak_device_mb")) if m is not None)
        why = "; ".join(filter(None, [r.get("reason"), *(r.get("notes") or [])]))
        cells = [f"`{r['name']}`", r["status"], rules, _num(r.get("params")), _num(r.get("receptive_field")),
                 f"**{_pct(r.get('accuracy'))}**" if r.get("accuracy") is not None else "", r.get("verdict", ""),
                 how, per_seed, _pct(r.get("claimed_accuracy")), "" if work is None else f"{work:.1f}", total,
                 memory, why]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _how(row) -> str:
    """"training (fast, 3 epochs, 3 seeds)", "checkpoint (fast, 3 epochs)", "rules only": what the accuracy
    is, as far as the grading got. A recipe changed by flags is its name and a star (grades.csv has it all)."""
    by = row.get("score_by")
    if by == "rules":
        return "rules only"
    if by not in ("training", "checkpoint"):
        return ""
    said = [(row.get("recipe") or "") + ("*" if row.get("recipe_changes") else "")]
    if row.get("epochs") is not None:
        said.append(_count(row["epochs"], "epoch"))
    if by == "training" and row.get("seeds"):
        said.append(_count(len(row["seeds"]), "seed"))
    return f"{by} ({', '.join(said)})"


def _recipe(row) -> str | None:
    """The recipe as grades.csv shows it: its name, and the fields a re-scored run changed ("fast (epochs=1)")."""
    return row.get("recipe") and str(RecipeName(row["recipe"], row.get("recipe_changes") or {}))


def _passed(row):
    rules = row.get("rules")
    return f"{sum(r['passed'] for r in rules)}/{len(rules)}" if rules else ""


def _join(values) -> str:
    return " ".join(str(v) for v in values or [])


def _round(value, digits):
    return None if value is None else round(value, digits)


def _shown(path: Path) -> str:
    """A path as short as it reads unambiguously: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _count(n, word) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _pct(value) -> str:
    return "" if value is None else f"{value:.2%}"


def _num(value) -> str:
    return "" if value is None else f"{value:,}"


def _cell(text) -> str:
    """A Markdown table cell: one line, no column breaks, at most 300 characters (grades.csv has it all)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= 300 else text[:297] + "..."


if __name__ == "__main__":
    sys.exit(main())

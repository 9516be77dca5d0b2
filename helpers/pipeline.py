"""The main job: run notebooks 01 -> 04 headless with papermill, the same parameters for each.

    python -m helpers.pipeline --smoke                  # synthetic data, 1 epoch: about a minute on CPU
    python -m helpers.pipeline --data folder --data-dir ../shared/data/cifar10-jpeg-dev --recipe fast
    python -m helpers.pipeline ... --publish            # also update notebooks/, images/ and README's note

Every run has its own folder, runs/pipeline/<recipe>-s<seed> (runs/smoke/... with --smoke): the
training run's checkpoint.pt and history.json, notebooks/ (the executed copies) and images/ (their
figures). Nothing under notebooks/, images/ or README.md changes unless --publish: then the cleaned
notebooks, their figures and the provenance notes are all replaced from this one run, so what the
repository shows always belongs together.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .checkpoint import read_config, read_history, resume_differences
from .errors import UserError
from .notebook import check_params, run_name
from .registry import DRIVE_PREFIX, is_file_spec, parse_file_spec
from .recipes import get_recipe, split_fields
from .cli import get_args_parser, overrides, parse

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# the main job's notebooks, in order; later notebooks (05_sweep, ...) have their own commands
MAIN_JOB = ("01_explore_data", "02_model_summary", "03_train", "04_analyze_errors")
SWEEP_NOTEBOOK = "05_sweep"  # shows a sweep's study; --publish-sweep runs it with its defaults
# --smoke: a few steps of everything. The batch is small so that every recipe (fast and long
# batch 256) gets several steps from the 200 images instead of none (drop_last)
SMOKE = dict(data="synthetic", epochs=1, limit=200, batch_size=50)
# figures that --publish leaves alone: drawn by `python -m helpers.diagram`, one per model, not per run
NOT_PUBLISHED = ("model_architecture*.png",)
REPO_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/[A-Za-z0-9._-]+")
README_NOTE = re.compile(r"(<!-- figures-provenance -->\n).*?(\n<!-- /figures-provenance -->)", re.S)
NOTE_START = "> **Outputs below**"


class PipelineError(UserError):
    """The main job stops: a notebook failed, an output folder would overwrite the committed files, or the
    run folder holds another run."""


def notebook_paths(notebooks: Path | None = None) -> list[Path]:
    """The main job's notebooks (01 -> 04), in order."""
    folder = notebooks or NOTEBOOKS
    return [folder / f"{name}.ipynb" for name in MAIN_JOB]


def kernel_config(tmp: str):
    """Kernels talk to papermill over Unix sockets in `tmp` instead of localhost TCP.

    Over TCP ipykernel warns, once per notebook, that the channel is unencrypted; a Unix socket
    in a private temporary folder never leaves the machine, so the warning does not apply.
    (Windows has no IPC transport: there it stays TCP.)
    """
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(tmp) / "kernel")
    return config


def run(params: dict, out: Path, log=print, done: list | None = None) -> list[Path]:
    """Execute the notebooks in order; stop at the first failing cell with a short message.

    Paths in `params` are relative to the project root (the notebooks run there), `out` too or absolute.
    `done` collects the executed copies as they are written, the failed one included.
    """
    import papermill as pm

    executed_dir = ROOT / out / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    done = [] if done is None else done
    with tempfile.TemporaryDirectory(prefix="pipeline-kernel-") as tmp:
        for nb in notebook_paths():
            target = executed_dir / nb.name
            declared = pm.inspect_notebook(str(nb))  # pass each notebook only the parameters it declares
            t0 = time.perf_counter()
            done.append(target)
            try:
                pm.execute_notebook(str(nb), str(target),
                                    parameters={k: v for k, v in params.items() if k in declared},
                                    cwd=str(ROOT), kernel_name="python3", progress_bar=False, log_output=False,
                                    config=kernel_config(tmp))
            except pm.PapermillExecutionError as e:
                raise PipelineError(f"{nb.name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: "
                                    f"{e.evalue.strip()}\n(executed copy with the full traceback: {target})") from None
            log(f"{nb.name}: ok in {time.perf_counter() - t0:.0f}s -> {target}")
    return done


def label(nb: dict, note: str) -> dict:
    """Put `note` at the end of the first (title) cell, replacing an earlier run's note."""
    first = "".join(nb["cells"][0]["source"])
    first = first.split("\n\n" + NOTE_START)[0].rstrip("\n")
    nb["cells"][0]["source"] = first + "\n\n" + note
    return nb


# what the injected-parameters cell says in a published notebook: papermill's values, kept as comments
SHOWN_PARAMETERS = ("# The outputs below were made with these values (papermill set them, after the cell above).\n"
                    "# They are comments here: a run of your own uses the parameters cell above.\n")


def clean(nb: dict, note: str | None = None) -> dict:
    """Strip papermill's metadata; keep its injected-parameters cell, commented out, so a published notebook
    shows the values its outputs were made with while a run of a student's uses the parameters cell (papermill
    replaces that cell whenever it runs the notebook again); optionally set the provenance note."""
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            lines = "".join(cell["source"]).splitlines()
            if not "".join(cell["source"]).startswith(SHOWN_PARAMETERS):
                lines = [f"# {line}" for line in lines if line.strip() and line.strip() != "# Parameters"]
                cell["source"] = SHOWN_PARAMETERS + "\n".join(lines)
            cell["outputs"], cell["execution_count"] = [], None
    return label(nb, note) if note else nb


def shown_parameters(nb: dict) -> dict:
    """The values a published notebook shows in its injected-parameters cell ({} when it has none)."""
    import ast

    cell = next((c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    code = "\n".join(line[2:] for line in "".join(cell["source"]).splitlines()[2:])
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(code).body for t in node.targets}


def hardware(device="auto") -> str:
    """The hardware a run used, from its device (a run's "cpu" on a GPU machine is a CPU run)."""
    from .device import describe, pick_device

    return describe(pick_device(device, log=None))


def describe_data(data: str, data_dir, limit) -> str:
    if data == "folder":
        text = ("JPEG CIFAR-10 dev split (45,000 train / 5,000 test)" if "cifar10-jpeg-dev" in str(data_dir)
                else f"ImageFolder {data_dir}")
    else:
        text = {"cifar10": "CIFAR-10 (official train / test)", "synthetic": "synthetic data"}[data]
    return text + (f", first {limit} images of each split" if limit else "")


def provenance(params: dict, run_dir: Path, command: str) -> str:
    """One line saying where the outputs come from: hardware, data, recipe as run, seed, command."""
    try:
        config, _ = read_history(ROOT / run_dir)
        r = config["recipe"]
        how = (f"model `{r['model']}`, {r['epochs']} epoch{'s' * (r['epochs'] != 1)}, batch {r['batch_size']}, "
               f"precision {config['settings']['precision']}")
        device = config.get("device") or params["device"]
    except (OSError, KeyError, ValueError):  # no finished training (a failed run): say what was asked
        how, device = "settings as in the command", params["device"]
    return (f"{NOTE_START} come from a real run on {hardware(device)}; data: "
            f"{describe_data(params['data'], params['data_dir'], params['limit'])}; recipe `{params['recipe']}` "
            f"({how}), seed {params['seed']}; command: `{command}`.")


def publish(executed: list[Path], images: Path, note: str, root: Path | None = None, log=print):
    """Replace the committed notebooks, figures and README's figure note with one run's, together."""
    root = root or ROOT
    home = str(Path.home())
    for path in executed:
        text = json.dumps(clean(json.loads(path.read_text()), note), indent=1, ensure_ascii=False) + "\n"
        text = text.replace(str(ROOT), ".").replace(home, "~")  # where the notebooks ran: no machine paths
        (root / "notebooks" / path.name).write_text(text)
        log(f"published notebooks/{path.name}")
    kept = {p for pattern in NOT_PUBLISHED for p in images.glob(pattern)}
    figures = sorted(set(images.glob("*.png")) - kept)
    (root / "images").mkdir(exist_ok=True)
    for fig in figures:
        shutil.copyfile(fig, root / "images" / fig.name)
    log(f"published {len(figures)} figures to images/: {', '.join(f.name for f in figures)}")
    readme = root / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if README_NOTE.search(text):
        readme.write_text(README_NOTE.sub(lambda m: m.group(1) + note.replace(NOTE_START, "The figures below")
                                          + m.group(2), text))
        log("published README.md's figure note")
    else:
        log("README.md has no <!-- figures-provenance --> block: its figure note was not updated")


def publish_sweep(root: Path | None = None, log=print) -> Path:
    """Run notebook 05 with its defaults, which show the published study (helpers/studies/), and replace
    its committed copy and images/sweep_*.png with that run's."""
    import ast

    import papermill as pm

    root = root or ROOT
    nb = root / "notebooks" / f"{SWEEP_NOTEBOOK}.ipynb"
    study = ast.literal_eval(pm.inspect_notebook(str(nb))["study"]["default"])
    with tempfile.TemporaryDirectory(prefix="pipeline-sweep-") as tmp:
        executed = Path(tmp) / nb.name
        try:
            pm.execute_notebook(str(nb), str(executed), parameters=dict(images_dir="images"), cwd=str(root),
                                kernel_name="python3", progress_bar=False, log_output=False, config=kernel_config(tmp))
        except pm.PapermillExecutionError as e:
            raise PipelineError(f"{nb.name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: "
                                f"{e.evalue.strip()}") from None
        note = (f"{NOTE_START} come from running this notebook with its defaults on {hardware()} "
                f"(`python -m helpers.pipeline --publish-sweep`): they show the published study "
                f"`helpers/studies/{study}.json`. How that sweep ran (hardware, data, command, time): docs/sweeps.md.")
        text = json.dumps(clean(json.loads(executed.read_text()), note), indent=1, ensure_ascii=False) + "\n"
    nb.write_text(text.replace(str(root), ".").replace(str(Path.home()), "~"))
    log(f"published notebooks/{nb.name} and images/sweep_*.png (study {study})")
    return nb


def set_repo(repo: str, root: Path | None = None, log=print) -> list[Path]:
    """Point every Colab badge and setup cell, README's badges and helpers.REPO at github.com/<repo>."""
    root = root or ROOT
    if not REPO_PATTERN.fullmatch(repo):
        raise ValueError(f"--set-repo {repo!r}: give the GitHub repository as OWNER/NAME, e.g. you/cifar10-small-cnn")
    badge = (r"colab\.research\.google\.com/github/[^/\s\"')]+/[^/\s\"')]+/blob/",
             f"colab.research.google.com/github/{repo}/blob/")
    init = root / "helpers" / "__init__.py"
    old = re.search(r'(?m)^REPO = "([^"]*)"', init.read_text())
    rules = {  # file -> (pattern, replacement) pairs
        **{nb: [badge, (r'REPO = \\"[^"\\]+\\"', f'REPO = \\\\"{repo}\\\\"')]
           for nb in sorted((root / "notebooks").glob("*.ipynb"))},  # every notebook, not only the main job's
        init: [(r'(?m)^REPO = "[^"]*"', f'REPO = "{repo}"')],
        # README: its Colab links, and where its prose names the repository
        root / "README.md": [badge] + ([(re.escape(f"`{old.group(1)}`"), f"`{repo}`")] if old else []),
    }
    changed = []
    for path, subs in rules.items():
        if not path.exists():
            continue
        text = new = path.read_text()
        for pattern, replacement in subs:
            new = re.sub(pattern, replacement, new)
        if new != text:
            path.write_text(new)
            changed.append(path)
            log(f"{path.relative_to(root)}: repository set to {repo}")
    return changed


def default_out(recipe: str, seed: int, smoke: bool, model=None) -> Path:
    """One folder per recipe, model and seed (named as the notebooks name them), so runs with other
    settings never meet the same checkpoint."""
    return Path("runs") / ("smoke" if smoke else "pipeline") / run_name(recipe, seed, model)


def rooted(path) -> str | None:
    """A path given from the current folder, as the notebooks see it: relative to the project root
    (so no machine path lands in their outputs, wherever the command was started)."""
    return None if path is None else os.path.relpath(Path(path).resolve(), ROOT)


@contextlib.contextmanager
def in_root():
    """Run a block in the project root, where the notebooks run, and come back."""
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(here)


def rooted_model(model) -> str | None:
    """--model as the notebooks see it: FILE.py:NAME with FILE relative to the project root."""
    if not is_file_spec(model) or model.startswith(DRIVE_PREFIX):  # a Drive file is where Drive is
        return model
    path, name = parse_file_spec(model)
    return f"{rooted(path)}:{name}"


def resolve(args) -> tuple[dict, Path]:
    """The notebooks' parameters and the output folder (relative to the project root) for parsed arguments."""
    model = rooted_model(args.model)
    out = Path(rooted(args.out)) if args.out else default_out(args.recipe, args.seed, args.smoke, model)
    # the fields with a notebook parameter of their own go there; every other one (--lr, --compile, --set)
    # in the notebooks' `overrides`
    fields = overrides(args)
    named = dict(model=model, epochs=fields.pop("epochs", None), batch_size=fields.pop("batch_size", None),
                 precision=fields.pop("precision", None), device=fields.pop("device", "auto"))
    fields.pop("model", None)
    params = dict(data=args.data, data_dir=rooted(args.data_dir), recipe=args.recipe, **named, overrides=fields,
                  limit=args.limit, val=args.val or None, seed=args.seed, out_dir=rooted(args.run_dir) or str(out),
                  images_dir=rooted(args.images_dir) or str(out / "images"),
                  compare=None if args.compare is None else [rooted(d) for d in args.compare],
                  progress=False)  # nobody watches a headless run: per-epoch lines, no progress bars
    if args.smoke:  # explicit options win over the smoke defaults (e.g. --smoke --data folder --data-dir D)
        params |= {k: v for k, v in SMOKE.items() if params[k] is None}
    params["data"] = params["data"] or "cifar10"
    return params, out


def check_out_paths(params: dict, out: Path) -> None:
    """The committed notebooks and figures change only with --publish: no output folder may be the
    project root or lie inside notebooks/ or images/."""
    kept = {ROOT.resolve(): "notebooks 01-05, images and README", (ROOT / "notebooks").resolve(): "notebooks",
            (ROOT / "images").resolve(): "images"}
    for flag, path in (("--out", out), ("--run-dir", params["out_dir"]), ("--images-dir", params["images_dir"])):
        where = (ROOT / path).resolve()
        hit = next((k for k in kept if where == k or (k != ROOT.resolve() and k in where.parents)), None)
        if hit is not None:
            raise PipelineError(f"{flag} {path} would write over the project's committed {kept[hit]}, which change "
                                f"only with --publish: choose a folder of its own (the default is "
                                f"{default_out(params['recipe'], params['seed'], False, params['model'])})")


# what the command knows of a run's data before any is read; the images' counts and fingerprints are compared
# by notebook 03's resume
CHOSEN_DATA = ("source", "folder", "limit", "val")


def check_run_dir(params: dict) -> None:
    """Before any notebook runs: a checkpoint in the run folder must be this run's, or notebook 03 would
    stop half-way. Compares what the user chose, as a resume does (checkpoint.resume_differences); a
    precision asked as "auto" is not compared, as it re-resolves on each device."""
    saved = read_config(ROOT / params["out_dir"])
    if saved is None:  # no run there, or none readable: notebook 03 starts one, or says what is wrong
        return
    recipe_fields, _ = split_fields(params["overrides"])  # the settings change speed, not the run
    want = get_recipe(params["recipe"], model=params["model"], epochs=params["epochs"],
                      batch_size=params["batch_size"], **recipe_fields)
    precision = params.get("precision") or "auto"
    data_dir = params["data_dir"]
    now = dict(recipe=want.to_dict(), seed=params["seed"], settings=dict(precision=precision),
               requested=dict(precision=precision),
               data_identity=dict(source=params["data"], limit=params["limit"], val=params.get("val"),
                                  folder=str((ROOT / data_dir).resolve()) if data_dir else None))
    if "data_identity" in saved:
        saved = dict(saved, data_identity={k: v for k, v in saved["data_identity"].items() if k in CHOSEN_DATA})
    diffs = resume_differences(saved, now)
    if diffs:
        raise PipelineError(f"{params['out_dir']} holds a run with other settings ({'; '.join(diffs)}): "
                            f"pass --run-dir NEW_FOLDER for a new run, or delete that folder")


def get_parser():
    p = get_args_parser("python -m helpers.pipeline", __doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--smoke", action="store_true",
                   help=f"a quick check: {SMOKE['limit']} images per split, {SMOKE['epochs']} epoch, batch "
                        f"{SMOKE['batch_size']}, synthetic data unless --data is given; starts afresh each time")
    p.add_argument("--out", help="run folder: executed notebooks in OUT/notebooks, figures in OUT/images "
                                 "(default: runs/pipeline/RECIPE-sSEED, runs/smoke/RECIPE-sSEED with --smoke)")
    p.add_argument("--run-dir", help="training run folder for checkpoint.pt and history.json (default: OUT)")
    p.add_argument("--compare", nargs="*", default=None, metavar="RUN_DIR",
                   help="run folders for notebook 04's side-by-side curves (default: the run folders beside this "
                        "one that trained the same recipe and model with other seeds)")
    p.add_argument("--images-dir", help="where the notebooks save their figures (default: OUT/images)")
    p.add_argument("--publish", action="store_true",
                   help="after a successful run, replace notebooks/ 01-04, images/ and README's figure note "
                        "with this run's (then commit them together)")
    p.add_argument("--publish-sweep", action="store_true",
                   help="run notebook 05 with its defaults (the published study in helpers/studies/), replace its "
                        "committed copy and images/sweep_*.png, then exit")
    p.add_argument("--set-repo", metavar="OWNER/NAME",
                   help="point the Colab badges, the notebooks' setup cells and helpers.REPO at "
                        "github.com/OWNER/NAME, then exit")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = get_parser()
    args = parse(p, argv, default_data=None)  # --smoke picks synthetic data, anything else CIFAR-10: resolve()
    if args.set_repo:
        try:
            set_repo(args.set_repo)
        except ValueError as e:
            p.error(str(e))
        return 0
    if args.publish_sweep:
        try:
            publish_sweep()
        except PipelineError as e:
            print(f"pipeline stopped: {e}", file=sys.stderr)
            return 1
        return 0
    params, out = resolve(args)
    if args.threads:  # the kernels inherit the environment; torch reads it when it starts
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    command = shlex.join(["python", "-m", "helpers.pipeline", *argv])
    executed = []
    t0 = time.perf_counter()
    try:
        check_out_paths(params, out)  # before anything is written or removed
        if args.smoke and not (args.out or args.run_dir):
            shutil.rmtree(ROOT / out, ignore_errors=True)  # a smoke run is disposable: never resume an old one
        with in_root():  # paths in params are the notebooks', relative to the project root
            check_params(**params, cli=True)
            check_run_dir(params)
        print(f"pipeline: recipe {params['recipe']}, seed {params['seed']}, data {params['data']}; "
              f"run folder {params['out_dir']}")
        t0 = time.perf_counter()
        # Ctrl-C stops the pipeline even when it was started where SIGINT is ignored (a background job of a
        # script inherits that, and papermill would then run every notebook to the end)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        run(params, out, done=executed)
    except ValueError as e:  # a UserError (PipelineError, ParameterError ...): one line, no traceback
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" in {executed[-1].name}" if executed else ""
        print(f"pipeline interrupted{where}: every finished epoch is kept in {params['out_dir']}; run the same "
              "command again to resume", file=sys.stderr)
        return 130
    finally:  # the copies carry the committed notebooks' note, about another run: say which run they show
        note = provenance(params, params["out_dir"], command)
        for path in (p for p in executed if p.exists()):
            path.write_text(json.dumps(label(json.loads(path.read_text()), note), indent=1,
                                       ensure_ascii=False) + "\n")
    print(f"pipeline done in {time.perf_counter() - t0:.0f}s; executed notebooks in {out / 'notebooks'}, "
          f"figures in {params['images_dir']}")
    if args.publish:
        publish(executed, ROOT / params["images_dir"], note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

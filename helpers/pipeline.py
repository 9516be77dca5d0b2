"""Run notebooks 01 -> 04 headless with papermill, the same parameters for each.

    python -m helpers.pipeline --smoke                     # synthetic data, 1 epoch: about a minute on CPU
    python -m helpers.pipeline --data folder --data-dir ../shared/data/cifar10-jpeg-dev

Executed copies go to OUT/notebooks/ (never over the committed notebooks). `--publish`
copies them back into notebooks/ after removing papermill's run metadata and the
injected-parameters cell, whose values go into a note at the top of each notebook.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

from .model import list_models
from .notebook import check_params
from .recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SMOKE = dict(data="synthetic", data_dir=None, epochs=1, limit=200)


def notebook_paths():
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def run(params: dict, out: Path, log=print) -> list[Path]:
    """Execute every notebook in order; stop at the first failing cell with a short message."""
    import papermill as pm

    executed_dir = out / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for nb in notebook_paths():
        target = executed_dir / nb.name
        declared = pm.inspect_notebook(str(nb))  # pass each notebook only the parameters it declares
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(target), parameters={k: v for k, v in params.items() if k in declared},
                                cwd=str(ROOT), kernel_name="python3",
                                progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            raise PipelineError(f"{nb.name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: "
                                f"{e.evalue.strip()}\n(executed copy with the full traceback: {target})") from None
        log(f"{nb.name}: ok in {time.perf_counter() - t0:.0f}s -> {target}")
        done.append(target)
    return done


class PipelineError(RuntimeError):
    pass


def clean(nb: dict, note: str | None = None) -> dict:
    """Strip papermill metadata and the injected-parameters cell; optionally add a provenance note."""
    nb["metadata"].pop("papermill", None)
    cells = []
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        cells.append(cell)
    if note:
        cells[0]["source"] = "".join(cells[0]["source"]) + "\n\n> " + note
    nb["cells"] = cells
    return nb


def hardware() -> str:
    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def publish(executed: list[Path], params: dict, log=print):
    """Copy executed notebooks over the committed ones, cleaned and labelled."""
    data = {"folder": "JPEG CIFAR-10 dev split (45,000 train / 5,000 test)" if params.get("data_dir") and
            "jpeg" in str(params["data_dir"]) else f"ImageFolder {params.get('data_dir')}",
            "cifar10": "CIFAR-10 (official train / test)", "synthetic": "synthetic data"}[params["data"]]
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    note = (f"**Outputs below** come from a real run on {hardware()}, data: {data}, recipe `{params['recipe']}`, "
            f"{params['epochs']} epochs, seed {params['seed']}; run with `python -m helpers.pipeline` parameters: "
            f"{shown}.")
    for path in executed:
        nb = clean(json.loads(path.read_text()), note)
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        home = str(Path.home())
        if str(ROOT) in text or home in text:
            text = text.replace(str(ROOT), ".").replace(home, "~")
        (NOTEBOOKS / path.name).write_text(text)
        log(f"published {path.name}")


def set_repo(repo: str, log=print):
    """Point every badge and setup cell at github.com/<repo>."""
    for nb in notebook_paths():
        text = nb.read_text()
        new = re.sub(r"colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/",
                     f"colab.research.google.com/github/{repo}/blob/", text)
        new = re.sub(r'REPO = \\"[^"\\]+\\"', f'REPO = \\\\"{repo}\\\\"', new)
        if new != text:
            nb.write_text(new)
            log(f"{nb.name}: repository set to {repo}")


def get_parser():
    p = argparse.ArgumentParser(prog="python -m helpers.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch, 200 images: a quick check")
    p.add_argument("--data", default="cifar10", choices=["cifar10", "folder", "synthetic"])
    p.add_argument("--data-dir", help="ImageFolder root with train/ and test/ (for --data folder)")
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES))
    p.add_argument("--model", help="model name (default: the recipe's)", choices=list_models())
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    p.add_argument("--limit", type=int, help="images per split (default: all)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="autocast precision (default: the recipe's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="executed notebooks go to OUT/notebooks (default: runs/pipeline, "
                                 "or runs/smoke with --smoke)")
    p.add_argument("--run-dir", help="run folder for checkpoint/history (default: OUT/run)")
    p.add_argument("--compare", nargs="*", default=[], metavar="RUN_DIR",
                   help="more run folders for notebook 04's side-by-side curves")
    p.add_argument("--images-dir", help="figures (default: images/, or OUT/images with --smoke)")
    p.add_argument("--publish", action="store_true", help="copy the cleaned executed notebooks into notebooks/")
    p.add_argument("--set-repo", metavar="OWNER/NAME", help="rewrite the Colab badges and setup cells, then exit")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.set_repo:
        set_repo(args.set_repo)
        return 0
    out = Path(args.out or ("runs/smoke" if args.smoke else "runs/pipeline"))
    recipe = RECIPES[args.recipe]
    params = dict(data=args.data, data_dir=args.data_dir, model=args.model or recipe.model, recipe=args.recipe,
                  epochs=args.epochs or recipe.epochs, precision=args.precision, limit=args.limit,
                  device=args.device, seed=args.seed, out_dir=args.run_dir or str(out / "run"),
                  images_dir=args.images_dir or (str(out / "images") if args.smoke else "images"),
                  compare=args.compare)
    if args.smoke:
        params |= {k: v for k, v in SMOKE.items() if not (k == "epochs" and args.epochs)}
    try:
        check_params(**params)
        t0 = time.perf_counter()
        executed = run(params, out)
    except (ValueError, PipelineError) as e:
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 1
    print(f"pipeline done in {time.perf_counter() - t0:.0f}s; executed notebooks in {out / 'notebooks'}")
    if args.publish:
        publish(executed, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())

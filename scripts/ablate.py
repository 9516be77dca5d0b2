"""Run an ablation grid: one benchmark command per line, several at once, then one table of accuracies.

    python scripts/ablate.py scripts/grids/ingredients.txt --out runs/ablate/ingredients --jobs 6 \
        --data folder --data-dir ../shared/data/cifar10-jpeg-dev
    python scripts/ablate.py scripts/grids/ingredients.txt --out runs/ablate/ingredients --table   # the table again

A grid file holds one `NAME | BENCHMARK ARGUMENTS` line per ingredient (`#` starts a comment), e.g.
`ls01 | --recipe best --seeds 3 --set label_smoothing=0.1`. Each line runs as
`python -m helpers.benchmark <arguments after the grid's> <the line's arguments>`, its JSON lines kept in
OUT/NAME.jsonl and its log in OUT/NAME.err. A line that finished is marked OUT/NAME.done and skipped when the
same command runs again, so an interrupted grid loses only the lines it was running.

What it is for: ranking ingredients on accuracy, fast, on a GPU, where one small run leaves most of the
device idle and several share it well (`--jobs`). The table reports accuracy only: runs that share a
device do not time each other fairly, so speed is measured apart, one run at a time (helpers.benchmark).
On a CPU use --jobs 1. `--deadline SECONDS` stops the grid after that long: lines not started are
skipped, running lines are stopped (the seeds they finished are kept), and a later run finishes them.

The table: per line, plain and TTA accuracy of each seed and their medians, the medians' difference from
the grid's first line that ran the same recipe (the grid's baseline for that recipe), and the training work
in TFLOP (the benchmark's gflop_per_s x train_seconds: FLOPs counted, so the same on any device).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_grid(path) -> list[tuple[str, list[str]]]:
    """[(name, benchmark arguments)] of a grid file; a malformed line is one error naming it."""
    lines, seen = [], set()
    for number, text in enumerate(Path(path).read_text().splitlines(), 1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, args = text.partition("|")
        name = name.strip()
        if not sep or not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            sys.exit(f"error: {path}:{number}: expected 'NAME | BENCHMARK ARGUMENTS' with NAME of letters, digits, "
                     f"'_', '-', '.', got {text!r}")
        if name in seen:
            sys.exit(f"error: {path}:{number}: the name {name!r} is used twice; each line needs its own")
        seen.add(name)
        try:
            lines.append((name, shlex.split(args)))
        except ValueError as e:
            sys.exit(f"error: {path}:{number}: {e} in {args.strip()!r}")
    if not lines:
        sys.exit(f"error: {path} holds no grid lines ('NAME | BENCHMARK ARGUMENTS')")
    return lines


def run_line(name: str, args: list[str], common: list[str], out: Path, end: float | None) -> str:
    """Run one line as its own benchmark process; a one-line outcome."""
    if (out / f"{name}.done").exists():
        return f"{name}: done before, skipped"
    left = end - time.monotonic() if end is not None else None
    if left is not None and left < 5:
        return f"{name}: not started, the deadline has passed"
    cmd = [sys.executable, "-m", "helpers.benchmark", *common, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with open(out / f"{name}.jsonl", "w") as stdout, open(out / f"{name}.err", "w") as stderr:
        stderr.write(shlex.join(cmd) + "\n")
        stderr.flush()
        try:
            rc = subprocess.run(cmd, stdout=stdout, stderr=stderr, env=env, timeout=left).returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.monotonic() - t0
    seeds = len(read_results(out, name))
    if rc == 0:
        (out / f"{name}.done").touch()
        return f"{name}: {seeds} seed(s) in {seconds:.0f} s"
    why = "stopped at the deadline" if rc is None else f"failed (exit {rc}), see {out / (name + '.err')}"
    return f"{name}: {why}, {seeds} seed(s) finished"


def read_results(out: Path, name: str) -> list[dict]:
    path = out / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def table(grid, out: Path) -> str:
    """The grid's accuracies as a markdown table, in the grid's order."""
    def pct(values):
        return " / ".join(f"{100 * v:.2f}" for v in values)

    rows = ["| line | seeds | plain test acc % (median) | TTA % (median) | Δ median vs baseline (plain / TTA) "
            "| training work, TFLOP |", "|---|---|---|---|---|---|"]
    baseline = {}
    for name, _ in grid:
        results = read_results(out, name)
        if not results:
            rows.append(f"| {name} | – | no result: see {name}.err, or run the grid | | | |")
            continue
        plain = [r["test_acc"] for r in results]
        tta = [r["tta_acc"] for r in results if r.get("tta_acc") is not None]
        med = (statistics.median(plain), statistics.median(tta) if tta else None)
        base = baseline.setdefault(results[0]["recipe"], (name, med))  # the recipe each line ran, as it says
        if base[0] == name:
            delta = "baseline"
        else:
            delta = f"{100 * (med[0] - base[1][0]):+.2f}"
            if med[1] is not None and base[1][1] is not None:
                delta += f" / {100 * (med[1] - base[1][1]):+.2f}"
            delta += f" (vs {base[0]})"
        seeds = ", ".join(str(r["seed"]) for r in results)
        tta_cell = f"{pct(tta)} ({100 * med[1]:.2f})" if tta else "–"
        # the FLOPs training counted (helpers.speed), whatever the device's speed: smaller epochs and networks
        # show here, so accuracy can be weighed against the work it took
        work = [r["gflop_per_s"] * r["train_seconds"] / 1000 for r in results if r.get("gflop_per_s") is not None]
        work_cell = f"{statistics.median(work):.1f}" if work else "–"
        rows.append(f"| {name} | {seeds} | {pct(plain)} ({100 * med[0]:.2f}) | {tta_cell} | {delta} | {work_cell} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/ablate.py", description=__doc__.split("\n\n")[0],
                                epilog="Any other flags (--data, --data-dir, --device ...) go to every line's "
                                       "benchmark command, before the line's own arguments.")
    p.add_argument("grid", help="the grid file: one 'NAME | BENCHMARK ARGUMENTS' line per ingredient")
    p.add_argument("--out", required=True, help="folder for each line's NAME.jsonl, NAME.err and NAME.done")
    p.add_argument("--jobs", type=int, default=1, help="lines run at once (default: %(default)s; a GPU takes several)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="stop the grid after this long; a later run finishes what is left (default: no limit)")
    p.add_argument("--table", action="store_true", help="only print the table of what OUT holds")
    args, common = p.parse_known_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    grid = read_grid(args.grid)
    out = Path(args.out)
    if not args.table:
        out.mkdir(parents=True, exist_ok=True)
        end = time.monotonic() + args.deadline if args.deadline is not None else None
        print(f"{len(grid)} lines, {args.jobs} at a time; each line's log: {out}/NAME.err", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_line, name, line_args, common, out, end) for name, line_args in grid]
            for done, future in enumerate(as_completed(futures), 1):  # each line as it ends, not in grid order
                print(f"[{done}/{len(grid)}] {future.result()}", file=sys.stderr, flush=True)
    print(table(grid, out))


if __name__ == "__main__":
    main()

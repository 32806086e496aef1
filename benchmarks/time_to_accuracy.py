"""Validation accuracy against wall-clock seconds, for whole ``main.py`` commands, over several seeds.

  python benchmarks/time_to_accuracy.py --seeds=0,1,2,3,4 --target=0.91 -- \\
      --config=configs/cifar10.py --config.dataset.name=cifar10_png --config.dataset.data_dir=/tmp/tfds

Everything after ``--`` goes to ``main.py`` (the workdir is a fresh folder per seed, under
``--workdir_root``). Each command is timed from its start to its exit (imports, reading the data,
compilation, training, evaluation, checkpoints and plots included); each validation line it prints
is stamped with the seconds since that start. Prints one row per seed, then the curve (median over
seeds) per evaluation, as Markdown; ``--records_json`` also writes every record.
"""

import json
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (--config.seed) to run, one command each.")
_TARGET = flags.DEFINE_float("target", 0.91, "Validation top-1 whose first reaching time is reported.")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", "/tmp/time_to_accuracy", "Where each seed's workdir goes.")
_JSON = flags.DEFINE_string("records_json", None, "Also write all records to this JSON file.")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alexnet_jax import files  # noqa: E402  (no JAX: this process only starts main.py)

VALIDATION = re.compile(r"epoch ([0-9.]+)/(\d+) step (\d+): validation top-1 ([0-9.]+)")


def run_once(main_args: list[str], seed: str, workdir: pathlib.Path) -> dict:
    """Runs one ``main.py`` command; its wall-clock seconds and its stamped validation results."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, str(ROOT / "main.py"), *main_args, f"--workdir={workdir}", f"--config.seed={seed}"]
    evaluations, output = [], []
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT) as proc:
        for line in proc.stdout:
            output.append(line)
            found = VALIDATION.search(line)
            if found:
                epoch, _, step, top1 = found.groups()
                evaluations.append(
                    {
                        "seconds": time.perf_counter() - started,
                        "epoch": float(epoch),
                        "step": int(step),
                        "top1": float(top1),
                    }
                )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} exited with {proc.returncode}:\n{''.join(output[-30:])}")
    return {"seed": seed, "seconds": seconds, "evaluations": evaluations, "output_tail": "".join(output[-5:])}


def first_reaching(run: dict, target: float) -> float | None:
    return next((e["seconds"] for e in run["evaluations"] if e["top1"] >= target), None)


def print_tables(runs: list[dict], target: float):
    print(f"\n| seed | final validation top-1 | best | seconds to >= {target:.0%} | whole command (s) |")
    print("|---|---|---|---|---|")
    for run in runs:
        top1 = [e["top1"] for e in run["evaluations"]]
        reached = first_reaching(run, target)
        print(
            f"| {run['seed']} | {100 * top1[-1]:.2f}% | {100 * max(top1):.2f}% | "
            f"{'not reached' if reached is None else f'{reached:.1f}'} | {run['seconds']:.1f} |"
        )
    finals = [100 * run["evaluations"][-1]["top1"] for run in runs]
    walls = [run["seconds"] for run in runs]
    spread = f" (std {statistics.stdev(finals):.2f})" if len(finals) > 1 else ""
    print(
        f"\nfinal validation top-1 over {len(runs)} seeds: mean {statistics.mean(finals):.2f}%{spread}, "
        f"min {min(finals):.2f}%, max {max(finals):.2f}%; whole command: median {statistics.median(walls):.1f} s, "
        f"max {max(walls):.1f} s"
    )
    print("\n| epoch | seconds since start (median) | validation top-1 (median) |")
    print("|---|---|---|")
    for i in range(min(len(run["evaluations"]) for run in runs)):
        points = [run["evaluations"][i] for run in runs]
        seconds = statistics.median(p["seconds"] for p in points)
        print(f"| {points[0]['epoch']} | {seconds:.1f} | {100 * statistics.median(p['top1'] for p in points):.2f}% |")


def main(argv):
    main_args = argv[1:]
    runs = []
    for seed in _SEEDS.value:
        run = run_once(main_args, seed, pathlib.Path(_WORKDIR_ROOT.value) / f"seed_{seed}")
        print(json.dumps({k: run[k] for k in ("seed", "seconds", "evaluations")}), flush=True)
        runs.append(run)
    if _JSON.value:
        files.write_text(_JSON.value, json.dumps({"args": main_args, "runs": runs}, indent=1))
    print_tables(runs, _TARGET.value)


if __name__ == "__main__":
    app.run(main)

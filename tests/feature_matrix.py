"""Every pair of the features a researcher combines, run for real: each pair trains a tiny run to
its report, then ``--mode=evaluate``, ``predict`` and ``features`` read it; or it is refused by one
line before any work; or it cannot exist (n/a: two values of one field, or two models). Prints a
table. Not part of the suite (about half an hour on 2 cores); the suite checks its cheap form,
every pair's config validated and its step traced (``tests/test_feature_matrix.py``).

  python tests/feature_matrix.py [--jobs=2] [--only=ema,towers] [--keep=DIR]

Each command runs in a child forked from this process, which imported everything once, with 8
fake CPU devices (JAX's x64 mode for float64), a time limit, and one compilation cache for all.
A cell is ``ok`` when every command ended 0, wrote what it writes, and the run shows what each of
its two features promises (``Feature.check``); ``refused`` when training ended with exit code 2,
one ``error:`` line, no traceback and nothing written; anything else is ``FAIL``.
"""

import argparse
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = [
    "--config=configs/smoke.py",
    "--config.dataset.synthetic_examples=64",
    "--config.model.width=0.125",
    "--config.model.fc_features=64",
    "--config.batch_size=16",
    "--config.eval_batch_size=16",
    "--config.num_epochs=1",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.optimizer.learning_rate=0.01",
]
PAPER = [  # alexnet2012 at 1/32 of its width, the paper's 224 crops of 256x256 images
    "--config.model.name=alexnet2012",
    "--config.model.width=0.03125",
    "--config.dataset.synthetic_image_size=256",
    "--config.augment.crop_size=224",
    "--config.augment.crop_padding=0",
    "--config.dataset.normalization=imagenet",
]


@dataclasses.dataclass(frozen=True)
class Feature:
    """A feature as config overrides (``paper``: its overrides where the run is of the paper model),
    and what a run with it must show: ``check(cell) -> problem or None``."""

    flags: tuple[str, ...] = ()
    paper: tuple[str, ...] | None = None
    x64: bool = False
    check: object = None
    model: str | None = None  # the model the feature sets, if it sets one

    def overrides(self, paper_model: bool) -> tuple[str, ...]:
        return self.paper if paper_model and self.paper is not None else self.flags


def _report(cell) -> dict:
    return json.loads((cell.workdir / "validation_report.json").read_text())


def _saved(cell) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from absl import logging
    from harness import final_arrays

    logging.set_verbosity(logging.ERROR)  # Orbax's note that a state's own metadata file is absent

    step = max(int(p.name) for p in (cell.workdir / "checkpoints").iterdir() if p.name.isdigit())
    return final_arrays(cell.workdir, step)


def _need(condition: bool, problem: str) -> str | None:
    return None if condition else problem


def _numbers_agree(cell) -> str | None:
    """The final report's numbers are accuracies and a finite loss, and ``--mode=evaluate`` of the
    last checkpoint gives its loss (of the moving average with ``--ema``), to float32 rounding:
    two programs sum in other orders, ~1e-6 relative; other weights or images move it by far more."""
    report, key = _report(cell), "ema_loss" if "EMA" in cell.features else "loss"
    evaluated = json.loads(cell.out["evaluate"].strip().splitlines()[-1])
    if not (0 <= report["top1"] <= 1 and 0 <= report["top5"] <= 1 and math.isfinite(report["loss"])):
        return f"the report's numbers: top1 {report['top1']}, top5 {report['top5']}, loss {report['loss']}"
    agree = abs(evaluated["loss"] - report[key]) <= 1e-4 * abs(report[key])
    return _need(agree, f"evaluate's loss {evaluated['loss']} is not the report's {report[key]}")


FEATURES = {
    "ensemble": Feature(
        ("--config.ensemble_size=2", "--config.members.learning_rate=(0.01, 0.02)"),
        check=lambda c: _need("member1_top1" in _report(c), "no member1_top1 in the report"),
    ),
    "own data order": Feature(
        ("--config.ensemble_size=2", "--config.ensemble_data_order=own"),
        check=lambda c: _need("member1_top1" in _report(c), "no member1_top1 in the report"),
    ),
    "towers": Feature(
        ("--config.parallel=towers", *PAPER),
        model="alexnet2012",
        check=lambda c: _need("4 pairs of towers" in c.out["train"], "no '4 pairs of towers' line"),
    ),
    "EMA": Feature(("--config.ema_decay=0.9",), check=lambda c: _need("ema_top1" in _report(c), "no ema_top1")),
    "accumulation": Feature(("--config.grad_accum_steps=2",)),
    "init_from": Feature(
        ("--config.init_from={source}",), check=lambda c: _need("initialised from" in c.out["train"], "not initialised")
    ),
    "streaming": Feature(("--config.input.pipeline=streaming",)),
    "pmap": Feature(("--config.parallel=pmap",)),
    "max_steps, resume": Feature(
        ("--config.max_steps=2",), check=lambda c: _need("resuming from step 2 of 4" in c.out["resume"], "no resume")
    ),
    "skip non-finite": Feature(("--config.nonfinite_updates=skip",)),
    "profiling": Feature(
        ("--config.profile_steps=(1, 1)",), check=lambda c: _need((c.workdir / "profile").is_dir(), "no trace")
    ),
    "float64": Feature(
        ("--config.model.dtype=float64",),
        x64=True,
        check=lambda c: _need(all(v.dtype.name != "float32" for v in _saved(c).values()), "float32 arrays saved"),
    ),
    "ten crops": Feature(
        ("--config.augment.crop_size=24", "--config.eval_crops=10", "--config.eval_flip=False"),
        paper=("--config.eval_crops=10", "--config.eval_flip=False"),
    ),
    "batch norm": Feature(
        ("--config.model.norm=batch",),
        model="alexnet_cifar",
        check=lambda c: _need(any(k.startswith("batch_stats/bn1") for k in _saved(c)), "no batch statistics"),
    ),
    "paper model": Feature(PAPER, model="alexnet2012"),
}


def not_applicable(a: str, b: str) -> str | None:
    """Why the pair cannot exist, or None."""
    if {a, b} == {"towers", "pmap"}:
        return "two values of config.parallel"
    models = {FEATURES[a].model, FEATURES[b].model} - {None}
    if len(models) > 1:
        return "two models (towers need alexnet2012)"
    return None


def cell_flags(features: tuple[str, ...], source: str = "SOURCE") -> tuple[list[str], bool]:
    """The training flags of a cell (its features' overrides on ``BASE``) and whether it runs in x64."""
    paper = any(FEATURES[name].model == "alexnet2012" for name in features)
    flags = [*BASE]
    for name in features:
        flags += [flag.replace("{source}", source) for flag in FEATURES[name].overrides(paper)]
    return flags, any(FEATURES[name].x64 for name in features)


def pairs(only: list[str] | None = None):
    """Every feature alone, then every pair that can exist, as tuples of names (``only``: those
    naming one of them)."""
    names = list(FEATURES)
    cells = [(name,) for name in names] + [p for p in itertools.combinations(names, 2) if not not_applicable(*p)]
    return [cell for cell in cells if not only or set(cell) & set(only)]


def source_of(features: tuple[str, ...]) -> str:
    """Which ``init_from`` run a cell loads: one of the same model and image shape."""
    if any(FEATURES[name].model == "alexnet2012" for name in features):
        return "alexnet2012"
    return "batch" if "batch norm" in features else "crops" if "ten crops" in features else "cifar"


SOURCES = {  # the init_from runs, by source_of
    "cifar": [],
    "batch": ["--config.model.norm=batch"],
    "crops": ["--config.augment.crop_size=24"],
    "alexnet2012": PAPER,
}
# The pairs refused by one line, each with words of that line (the suite checks the config
# validation refuses them and no other pair: tests/test_feature_matrix.py).
REFUSED = {
    frozenset(("ensemble", "init_from")): "--config.init_from starts one model; train ensembles from scratch",
    frozenset(("own data order", "init_from")): "--config.init_from starts one model; train ensembles from scratch",
    frozenset(("ensemble", "towers")): "--config.parallel=towers trains one model; use shard_map for ensembles",
    frozenset(("own data order", "towers")): "--config.parallel=towers trains one model; use shard_map for ensembles",
    frozenset(("own data order", "streaming")): "--config.ensemble_data_order=own needs --config.input.pipeline=resid",
    frozenset(("accumulation", "batch norm")): "with batch norm would take statistics over micro-batches",
}


# --- running the matrix ---------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    features: tuple[str, ...]
    workdir: pathlib.Path
    out: dict = dataclasses.field(default_factory=dict)
    err: dict = dataclasses.field(default_factory=dict)
    codes: dict = dataclasses.field(default_factory=dict)
    result: str = ""
    detail: str = ""


def _child(argv: list[str], x64: bool, out: pathlib.Path, err: pathlib.Path):
    """In a forked child: main.py with ``argv``, its output to files; never returns."""
    for stream, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), stream)
    code = 1
    try:
        import jax

        import main

        jax.config.update("jax_enable_x64", x64)
        code = main.main(["main.py", *argv])
    except BaseException:  # whatever it was, the cell says FAIL with its traceback
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(argv: list[str], x64: bool, logs: pathlib.Path, name: str, timeout: float) -> tuple[int, str, str]:
    """Runs main.py with ``argv`` in a forked child; (exit code, stdout, stderr); -9 past ``timeout``."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        _child(argv, x64, out, err)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = -9
            break
        time.sleep(0.2)
    return code, out.read_text(errors="replace"), err.read_text(errors="replace")


def one_line_refusal(code: int, err: str) -> str | None:
    """The one line of a run refused before any work, or None."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    if code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in err:
        if not [line for line in lines[:-1] if "error" in line.lower()]:
            return lines[-1]
    return None


def run_cell(cell: Cell, sources: dict, images: dict, timeout: float) -> Cell:
    """Trains the cell's run (max_steps then resume, for that feature), then evaluate, predict and
    features; classifies it."""
    paper = any(FEATURES[n].model == "alexnet2012" for n in cell.features)
    flags, x64 = cell_flags(cell.features, sources[source_of(cell.features)])
    logs = cell.workdir.with_name(cell.workdir.name + "_logs")
    logs.mkdir(parents=True)
    workdir = [f"--workdir={cell.workdir}"]
    commands = {"train": [*flags, *workdir]}
    if "max_steps, resume" in cell.features:
        commands["resume"] = [*[f for f in flags if not f.startswith("--config.max_steps")], *workdir]
    ema = ["--ema"] if "EMA" in cell.features else []
    commands["evaluate"] = [*commands.get("resume", commands["train"]), "--mode=evaluate", "--checkpoint=latest", *ema]
    commands["predict"] = ["--mode=predict", *workdir, f"--images={images['paper' if paper else 'cifar']}", *ema]
    commands["features"] = ["--mode=features", *workdir, f"--output={logs / 'features.npy'}", *ema]
    for name, argv in commands.items():
        cell.codes[name], cell.out[name], cell.err[name] = run(argv, x64, logs, name, timeout)
        refusal = one_line_refusal(cell.codes[name], cell.err[name]) if name == "train" else None
        if refusal is not None:
            written = cell.workdir.exists() and any(cell.workdir.iterdir())
            cell.result, cell.detail = ("FAIL", f"wrote, then refused: {refusal}") if written else ("refused", refusal)
            return cell
        if cell.codes[name] != 0:
            cell.result = "FAIL"
            cell.detail = f"{name}: exit {cell.codes[name]}: " + (cell.err[name].strip().splitlines() or [""])[-1][:300]
            return cell
    problems = [FEATURES[n].check(cell) for n in cell.features if FEATURES[n].check] + [_numbers_agree(cell)]
    problems = [p for p in problems if p]
    cell.result, cell.detail = ("FAIL", "; ".join(problems)) if problems else ("ok", "")
    return cell


def prepare_inputs(root: pathlib.Path, timeout: float) -> tuple[dict, dict]:
    """The runs ``init_from`` loads (one per model the cells train) and the image files predict reads."""
    import numpy as np
    from PIL import Image

    sources, images = {}, {}
    for name, extra in SOURCES.items():
        workdir = root / f"source_{name}"
        code, _, err = run([*BASE, *extra, f"--workdir={workdir}"], False, root, f"source_{name}", timeout)
        if code != 0:
            raise SystemExit(f"the init_from source {name} failed:\n{err[-3000:]}")
        sources[name] = str(workdir)
    rng = np.random.default_rng(0)
    for name, size in (("cifar", 32), ("paper", 256)):
        folder = root / f"images_{name}"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        images[name] = str(folder)
    return sources, images


def table(cells: list[Cell]) -> str:
    """The matrix as Markdown: a row and a column per feature, a feature alone on the diagonal."""
    names = list(FEATURES)
    found = {frozenset(c.features): c for c in cells}
    short = {"ok": "ok", "refused": "refused", "FAIL": "**FAIL**"}
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in names:
        row = []
        for b in names:
            cell = found.get(frozenset((a, b)))
            row.append("n/a" if not_applicable(a, b) else short[cell.result] if cell else "")
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once")
    parser.add_argument("--only", default="", help="comma-separated features: only the cells with one of them")
    parser.add_argument("--keep", default=None, help="a directory for the runs, kept (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a command may run")
    args = parser.parse_args()
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="feature_matrix_"))
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "xla_cache")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import main as _  # noqa: F401  (imported once here, by every child forked after it)

    started = time.monotonic()
    sources, images = prepare_inputs(root, args.timeout)
    todo = pairs([name.strip() for name in args.only.split(",") if name.strip()])
    cells = [Cell(c, root / "_".join(n.replace(" ", "-").replace(",", "") for n in c)) for c in todo]
    results = _run_all(cells, sources, images, args.timeout, args.jobs)
    minutes = (time.monotonic() - started) / 60
    print(table(results))
    for cell in results:
        if cell.result != "ok":
            print(f"- {' x '.join(cell.features)}: {cell.result}: {cell.detail}")
    failed = sum(c.result == "FAIL" for c in results)
    print(f"\n{len(results)} cells ({sum(c.result == 'ok' for c in results)} ok, "
          f"{sum(c.result == 'refused' for c in results)} refused, {failed} failed) in {minutes:.1f} min")  # fmt: skip
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


def _run_all(cells: list[Cell], sources: dict, images: dict, timeout: float, jobs: int) -> list[Cell]:
    """Runs the cells ``jobs`` at a time, each in a child of its own (which forks its commands)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=1) as pool:
        runs = [pool.apply_async(run_cell, (cell, sources, images, timeout)) for cell in cells]
        results = []
        for cell, pending in zip(cells, runs, strict=True):
            results.append(pending.get())
            done = results[-1]
            print(f"{' x '.join(cell.features)}: {done.result} {done.detail}", flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())

"""Everything a GPU must show, in one short run: one command, one Markdown report and its raw JSON.

  python benchmarks/gpu_check.py --out=gpu_check --cifar10_data_dir=DATA_DIR   # one NVIDIA GPU, ~8 min
  python benchmarks/gpu_check.py --rehearse --out=/tmp/gpu_check               # a CPU, tiny sizes, ~4 min

Sections, each the project's own benchmark script in a process of its own, under its own time
limit (``SECTIONS``): a section that fails or runs out of time keeps the tail of its output in the
report and the next one goes on.

1. ``preflight``: the devices, and the modules the sections import. A GPU image with JAX, Flax,
   Optax, Orbax and PyTorch lacks ml_collections, tensorboardX, simplejpeg and Grain (carried as
   wheels: ``benchmarks/gpu_wheels.sh``), and TFDS, which only the CIFAR-10 sections need (with the
   data) and the rehearsal makes unimportable.
2. ``versus_pytorch``: the step side by side with PyTorch ``torch.compile`` (alexnet_owt and
   alexnet2012 at batch 256 in bfloat16 and float32, alexnet_cifar), MFU against a bfloat16 (and
   float32) peak measured in the same run.
3. ``ensembles``: images/s per model of vmap-ed ensembles of 1, 2, 4, 8 (configs/cifar10.py's network).
4. ``towers``: the paper's two towers against data parallelism, on two devices (skipped on one).
5. ``accumulation``: the ImageNet step (configs/imagenet_torchvision.py) with 1 and 4
   micro-batches: peak memory and images/s.
6. ``cifar10_cold`` and ``cifar10_warm``: configs/cifar10.py end to end to 91% validation top-1,
   twice with one fresh compilation cache (cold, then warm); skipped without ``--cifar10_data_dir``
   (CIFAR-10 prepared with ``--mode=prepare``).
7. ``loop`` and ``bare_step``: the training loop's images/s (``main.py`` on synthetic data of the
   CIFAR-10 config, compilation excluded) against its bare step's (end_to_end.py).

The orchestration imports nothing beyond the standard library and never starts a JAX backend itself
(JAX takes most of a GPU's memory in the first process that uses it). ``--rehearse`` runs every
section on the CPU with tiny sizes, to find a missing import or flag before a GPU is at hand.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alexnet_jax import files  # noqa: E402  (the standard library only: no JAX)

MIN_SECONDS = 10  # a section given less is skipped
SCRATCH = "scratch"  # under --out: the runs' workdirs and compilation cache, not results
SHOWN = re.compile(r"model=|threads:|.*peak \(TFLOP/s\)|\{\"modules\"")  # lines of a section's output the report keeps
TWO_CPU_DEVICES = "--xla_force_host_platform_device_count=2"
# What the project imports that a GPU image holding JAX, Flax, Optax, Orbax and PyTorch lacks, besides
# the wheels gpu_wheels.sh fetches: the rehearsal runs every section, and the processes it starts,
# with these unimportable.
ABSENT_ON_GPU_IMAGES = ("tensorflow_datasets", "tensorflow", "tree", "optree")
MODULES = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "tensorflow_datasets", "grain", "torch")
PREFLIGHT = f"""
import importlib, json, sys
found = {{}}
for name in {MODULES!r}:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as error:
        found[name] = None
        print(f"missing {{name}}: {{error}}")
import jax
devices = jax.devices()
print(json.dumps({{"modules": found, "devices": len(devices), "platform": devices[0].platform,
                   "kind": devices[0].device_kind, "jax": jax.__version__}}))
"""


VERSUS = ["--models=alexnet_owt,alexnet2012,alexnet_cifar", "--batches=256", "--dtypes=bfloat16,float32"]
VERSUS = [*VERSUS, "--steps=20", "--warmup=3"]
VERSUS_TINY = ["--models=alexnet_cifar", "--cifar_batches=8", "--dtypes=float32", "--width=0.125", "--steps=2"]
VERSUS_TINY = [*VERSUS_TINY, "--warmup=1"]
ENSEMBLES = ["--ways=vmap"]
LOOP_STEPS = ["--config.max_steps=300", "--config.log_every_steps=50"]
IMAGENET_STEP = ["--config=configs/imagenet_torchvision.py", "--config.batch_size=256", "--steps=10", "--warmup=3"]


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    seconds: int  # its time limit on a GPU (the rehearsal's: the same)
    argv: list  # the command, after the Python interpreter
    skipped: str = ""  # why it does not run here, or nothing


def _script(name: str, *flags: str) -> list:
    return [f"benchmarks/{name}", *flags]  # run from the repository's root


def sections(args, devices: int) -> list[Section]:
    """The check's sections, at a GPU's sizes or the rehearsal's."""
    tiny = args.rehearse
    small = ["--config=configs/smoke.py", "--steps=2", "--warmup=1"]
    ensembles = (
        [*small, "--sizes=1,2"]
        if tiny
        else ["--config=configs/cifar10.py", "--steps=10", "--warmup=3", "--sizes=1,2,4,8"]
    )
    imagenet = [*small, "--config.model.width=0.125"] if tiny else IMAGENET_STEP
    towers = ["--batch=4", "--steps=1", "--warmup=0"] if tiny else ["--batch=128"]
    versus = [*(VERSUS_TINY if tiny else VERSUS), "--torch_compile=default", f"--json={args.out}/versus_pytorch.json"]
    return [
        Section("preflight", "Devices and modules", 60, ["-c", PREFLIGHT]),
        Section("versus_pytorch", "The step against PyTorch torch.compile", 170, _script("versus_pytorch.py", *versus)),
        Section("ensembles", "Ensembles, vmap-ed", 60, _script("ensemble.py", *ensembles, *ENSEMBLES)),
        Section(
            "towers",
            "Towers against data parallelism",
            60,
            _script("towers.py", *towers),
            "" if devices >= 2 else f"{devices} device: towers need two",
        ),  # fmt: skip
        *[
            Section(
                f"accumulation_{k}",
                f"Accumulation: {k} micro-batch(es)",
                45,
                _script("train_step.py", *imagenet, "--modes=shard_map", f"--config.grad_accum_steps={k}"),
            )
            for k in (1, 4)
        ],  # fmt: skip
        *cifar10_sections(args),
        Section("loop", "The training loop on synthetic data", 60, ["main.py", *loop_run(args)]),
        Section("bare_step", "The bare step and the resident feed", 45, _script("end_to_end.py", *bare_step(args))),
    ]


def cifar10_sections(args) -> list[Section]:
    """The CIFAR-10 config end to end, cold then warm compilation cache (one fresh cache for both)."""
    scratch = pathlib.Path(args.out) / SCRATCH
    cache = scratch / "compilation_cache"
    if args.rehearse:
        flags = ["--target=0.5", "--", "--config=configs/smoke.py", "--config.num_epochs=1"]
        skipped = ""
    else:
        flags = ["--target=0.91", "--", "--config=configs/cifar10.py", "--config.dataset.name=cifar10_png"]
        flags.append(f"--config.dataset.data_dir={args.cifar10_data_dir}")
        skipped = "" if args.cifar10_data_dir else "no --cifar10_data_dir (CIFAR-10 prepared with --mode=prepare)"
    return [
        Section(
            f"cifar10_{when}",
            f"CIFAR-10 end to end, {when} compilation cache",
            75,
            _script(
                "time_to_accuracy.py",
                f"--workdir_root={scratch}/cifar10_{when}",
                f"--records_json={args.out}/cifar10_{when}.json",
                *flags,
                f"--compilation_cache={cache}",
            ),
            skipped,
        )  # fmt: skip
        for when in ("cold", "warm")
    ]


def _synthetic(args) -> list:
    """The config of the loop's overhead: the CIFAR-10 GPU config (the smoke one in a rehearsal) on
    synthetic images of CIFAR-10's size."""
    if args.rehearse:
        return ["--config=configs/smoke.py"]
    synthetic = ["--config.dataset.name=synthetic", "--config.dataset.synthetic_examples=16384"]
    return ["--config=configs/cifar10.py", *synthetic]


def loop_run(args) -> list:
    """``main.py`` training for a few hundred steps, its throughput logged per window (compilation excluded)."""
    steps = ["--config.max_steps=8", "--config.log_every_steps=2"] if args.rehearse else LOOP_STEPS
    workdir = pathlib.Path(args.out) / SCRATCH / "loop"
    return [*_synthetic(args), *steps, "--config.figures=False", f"--workdir={workdir}"]


def bare_step(args) -> list:
    """end_to_end.py's bare step (one batch on the devices) and resident feed, on the loop's config."""
    steps = ["--steps=3", "--warmup=1"] if args.rehearse else ["--steps=20", "--warmup=3"]
    return [*_synthetic(args), *steps, "--workers=0"]


def loop_against_bare_step(out: pathlib.Path, records: list[dict]) -> list[str]:
    """The loop's images/s (the median of its logged windows but the first) against the bare
    step's, from the two sections' outputs; nothing if either did not run."""
    outputs = {r["name"]: r.get("output", "") for r in records if r["status"] == "ok"}
    bare = re.search(r"^\| bare step[^|]*\| ([\d,]+) \|", outputs.get("bare_step", ""), re.M)
    metrics = out / SCRATCH / "loop" / "metrics.jsonl"
    if "loop" not in outputs or bare is None or not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    windows = [r["images_per_s"] for r in records if r["kind"] == "train"][1:]
    loop, step = statistics.median(windows), float(bare.group(1).replace(",", ""))
    return ["| the loop (images/s) | the bare step (images/s) | loop / bare step |", "|---:|---:|---:|",
            f"| {loop:,.0f} | {step:,.0f} | {loop / step:.0%} |"]  # fmt: skip


def as_on_a_gpu_image(folder: pathlib.Path) -> dict:
    """The environment of a rehearsal: two CPU devices (the towers' section runs too), and the
    modules a GPU image lacks unimportable in every process (packages that refuse to load, first
    on the path)."""
    for name in ABSENT_ON_GPU_IMAGES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name}: absent on GPU images (a rehearsal)')\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {TWO_CPU_DEVICES}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return env


def run_section(section: Section, out: pathlib.Path, env: dict, seconds_left: float) -> dict:
    """Runs one section under its time limit (or what is left of the run's); its record (the output
    kept whole in a file)."""
    shown = ["-c", "<preflight>"] if section.name == "preflight" else section.argv
    record = {"name": section.name, "title": section.title, "command": shlex.join(["python", *shown])}
    limit = min(section.seconds, seconds_left)
    if section.skipped or seconds_left < MIN_SECONDS:
        why = section.skipped or f"{seconds_left:.0f} s left of the run's --budget"
        return {**record, "status": "skipped", "why": why, "seconds": 0.0}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *section.argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limit,
        )
        status, output = ("ok" if done.returncode == 0 else f"failed ({done.returncode})"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        status = f"timed out ({limit:.0f} s)"
        parts = (timeout.stdout, timeout.stderr)
        output = "".join(part.decode() if isinstance(part, bytes) else part or "" for part in parts)
    (out / "logs").mkdir(exist_ok=True)
    files.write_text(out / "logs" / f"{section.name}.log", output)
    return {**record, "status": status, "seconds": round(time.perf_counter() - started, 1), "output": output}


def markdown(records: list[dict], started: str, total: float, loop: list[str]) -> str:
    """The report: a summary table, the loop against the bare step, then each section's tables (or
    its output's tail)."""
    lines = [f"# GPU check, {started}", "", f"Whole run: {total:.0f} s.", ""]
    lines += ["| section | status | seconds |", "|---|---|---:|"]
    lines += [f"| {r['title']} | {r['status']} {r.get('why', '')} | {r['seconds']} |" for r in records]
    lines += ["", "## The loop's overhead", "", *(loop or ["Not measured: the loop or the bare step did not run."])]
    for r in records:
        lines += ["", f"## {r['title']}", "", f"`{r['command']}`", ""]
        output = r.get("output", r.get("why", ""))
        tables = kept_lines(output)
        lines += tables if r["status"] == "ok" and tables else ["```", *output.splitlines()[-30:], "```"]
    return "\n".join(lines) + "\n"


def kept_lines(output: str) -> list[str]:
    """A section's tables and the lines ``SHOWN`` names, a blank line wherever others were left out
    or a table starts or ends (so that two tables stay two)."""
    kept, last = [], None
    for i, line in enumerate(output.splitlines()):
        if line.startswith("|") or SHOWN.match(line):
            apart = last is not None and (last != i - 1 or line.startswith("|") != kept[-1].startswith("|"))
            kept += ["", line] if apart else [line]
            last = i
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, help="Results folder: report.md, results.json, logs/ (one per section), scratch/."
    )
    parser.add_argument("--cifar10_data_dir", help="TFDS data_dir holding cifar10_png (--mode=prepare).")
    parser.add_argument("--rehearse", action="store_true", help="On a CPU, tiny sizes: every section runs.")
    parser.add_argument("--only", help="Comma-separated section names to run (the others are left out).")
    parser.add_argument("--budget", type=float, default=450, help="Seconds for all sections together.")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    shutil.rmtree(out / SCRATCH, ignore_errors=True)  # a fresh compilation cache, fresh workdirs
    out.mkdir(parents=True, exist_ok=True)
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    env = as_on_a_gpu_image(out / SCRATCH / "absent") if args.rehearse else dict(os.environ)
    preflight = run_section(sections(args, 1)[0], out, env, args.budget)
    found = json.loads(preflight["output"].strip().splitlines()[-1]) if preflight["status"] == "ok" else {}
    records = [preflight]
    for section in sections(args, found.get("devices", 1))[1:]:
        if not args.only or section.name in args.only.split(","):
            seconds_left = args.budget - (time.perf_counter() - clock)
            records.append(run_section(section, out, env, seconds_left))
            print(f"{section.name}: {records[-1]['status']} ({records[-1]['seconds']} s)", flush=True)
    total = time.perf_counter() - clock
    results = {"started": started, "seconds": total, "sections": records}
    files.write_text(out / "results.json", json.dumps(results, indent=1))
    files.write_text(out / "report.md", markdown(records, started, total, loop_against_bare_step(out, records)))
    print(f"{out / 'report.md'}: {sum(r['status'] == 'ok' for r in records)} of {len(records)} sections ok")


if __name__ == "__main__":
    main()

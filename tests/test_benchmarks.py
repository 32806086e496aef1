"""The benchmark scripts keep working on a CPU, and count what they claim to count."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_accuracy  # noqa: E402
import versus_pytorch  # noqa: E402


def conv(out_size, channels, kernel, inputs):
    return 2 * out_size**2 * channels * kernel**2 * inputs


# Multiply-adds x 2 of each layer, from the layer shapes (torchvision's alexnet; the paper's Figure 2,
# whose grouped layers see half the input channels).
OWT = [conv(55, 64, 11, 3), conv(27, 192, 5, 64), conv(13, 384, 3, 192), conv(13, 256, 3, 384),
       conv(13, 256, 3, 256), 2 * 9216 * 4096, 2 * 4096 * 4096, 2 * 4096 * 1000]  # fmt: skip
PAPER = [conv(55, 96, 11, 3), conv(27, 256, 5, 48), conv(13, 384, 3, 256), conv(13, 384, 3, 192),
         conv(13, 256, 3, 192), 2 * 9216 * 4096, 2 * 4096 * 4096, 2 * 4096 * 1000]  # fmt: skip


@pytest.mark.parametrize("model, want", [("alexnet_owt", OWT), ("alexnet2012", PAPER)])
def test_flops_are_counted_per_layer_from_the_network(model, want):
    layers = versus_pytorch.count_flops(model)
    assert [flops for _, flops in layers] == want
    assert versus_pytorch.train_flops_per_image(layers) == 3 * sum(want) - want[0]  # no input gradient for conv1


def test_the_cpu_configs_network_is_the_one_it_trains():
    """``cifar10_cpu``: alexnet_cifar with configs/cifar10_cpu.py's channels and hidden units."""
    from configs import cifar10_cpu

    c1, c2, c3, c4, c5 = cifar10_cpu.get_config().model.channels
    hidden = cifar10_cpu.get_config().model.fc_features
    want = [conv(32, c1, 3, 3), conv(16, c2, 3, c1), conv(8, c3, 3, c2), conv(8, c4, 3, c3), conv(8, c5, 3, c4)]
    want += [2 * 4 * 4 * c5 * hidden, 2 * hidden * hidden, 2 * hidden * 10]
    assert [flops for _, flops in versus_pytorch.count_flops("cifar10_cpu")] == want


def test_repeats_are_summarised_by_their_median_and_spread():
    row = {"model": "m", "batch": 10, "dtype": "float32", "framework": "jax", "tflops": 1.0, "compile_s": 0}
    repeats = [{**row, "step_ms": ms, "tflops": 2.0 / ms} for ms in (300.0, 100.0, 200.0)]
    (merged,) = versus_pytorch.median_of_repeats(repeats)
    assert merged["step_ms"] == 200.0 and merged["spread_ms"] == 200.0 and merged["repeats"] == 3
    assert merged["images_per_s"] == 50.0 and merged["tflops"] == 2.0 / 200.0


SMALL_ROW = ["--models=alexnet_cifar", "--batches=4", "--dtypes=float32", "--steps=2", "--warmup=1"]
SMALL_ROW += ["--matmul_size=256", "--width=0.125"]


def test_the_side_by_side_script_runs_on_a_cpu(tmp_path, capsys):
    """Its main, in this process (the imports are paid already): the JAX side alone, a slim
    alexnet_cifar. PyTorch never runs here, installed or not: in a worker that has started process
    pools it can crash the worker (its side runs in a process of its own, below)."""
    out = tmp_path / "rows.json"
    args = [*SMALL_ROW, "--frameworks=jax", f"--json={out}"]
    names = [arg[2:].split("=")[0] for arg in args]
    flags.FLAGS(["versus_pytorch.py", *args], known_only=True)
    try:
        versus_pytorch.main(["versus_pytorch.py"])
    finally:
        for name in names:
            flags.FLAGS[name].unparse()
    printed = capsys.readouterr().out
    assert "device: cpu (cpu)" in printed
    (row,) = [r for r in json.loads(out.read_text())["rows"] if r["framework"] == "jax"]
    assert row["model"] == "alexnet_cifar" and row["batch"] == 4 and row["steps"] == 2
    assert row["images_per_s"] > 0 and 0 < row["mfu"] and row["peak_gib"] > 0
    assert "| alexnet_cifar | 4 | float32 | jax |" in printed


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed (not a dependency)")
def test_pytorchs_side_runs_in_a_process_of_its_own(tmp_path):
    """Where PyTorch is installed beside the project: the script times both frameworks side by side."""
    out = tmp_path / "rows.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "versus_pytorch.py"), *SMALL_ROW, f"--json={out}"]
    done = subprocess.run([*command, "--torch_compile=none"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["framework"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows.keys() == {"jax", "torch"} and all(row["images_per_s"] > 0 for row in rows.values()), rows
    assert "| alexnet_cifar | 4 | float32 | torch |" in done.stdout and "x torch |" in done.stdout
    assert "intra-op threads" in done.stdout  # the threads each framework ran on


@pytest.mark.tier2  # the first tier: the script in this process, and the median of repeats (above)
def test_repeats_run_interleaved_each_in_a_process_of_its_own(tmp_path):
    out = tmp_path / "rows.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "versus_pytorch.py"), *SMALL_ROW, f"--json={out}"]
    command += ["--frameworks=jax", "--repeats=2", f"--profile_dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["repeats"] == 2 and row["images_per_s"] > 0 and row["mfu"] > 0
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == [
        f"{repeat}_alexnet_cifar_4_float32_jax.json" for repeat in (0, 1)
    ]
    assert "threads: XLA's CPU client uses the" in done.stdout


def test_the_time_to_accuracy_script_reads_the_line_the_loop_prints():
    from alexnet_jax.train import validation_line

    line = validation_line(2.0, 30, 176, {"top1": 0.91234, "top5": 0.99, "loss": 0.4})
    assert time_to_accuracy.VALIDATION.search(line).groups() == ("2", "30", "176", "0.9123")
    line = validation_line(1.5, 2, 3, {"top1": 0.5, "top5": 0.99, "loss": 0.4})  # max_steps: inside an epoch
    assert time_to_accuracy.VALIDATION.search(line).groups()[:2] == ("1.5", "2")
    run = {
        "evaluations": [{"seconds": 5.0, "top1": 0.9}, {"seconds": 7.5, "top1": 0.9123}, {"seconds": 9, "top1": 0.95}]
    }
    assert time_to_accuracy.first_reaching(run, 0.91) == 7.5
    assert time_to_accuracy.first_reaching(run, 0.96) is None


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__"))
def test_the_train_step_benchmark_feeds_every_shipped_config_images_it_can_take(name):
    """benchmarks/train_step.py feeds each config synthetic images of the size its step is fed
    (the ImageNet configs crop 224 of them), so it runs on every shipped config."""
    import importlib

    import train_step as step_benchmark

    from alexnet_jax import config_checks

    config = importlib.import_module(f"configs.{name}").get_config()
    size = step_benchmark.synthetic_image_size(config)
    config_checks.check_crop(config, (size, size, 3))  # raises if the crops do not fit
    assert size == (224 if config.input.get("random_resized_crop") else 256 if config.augment.crop_size else 32)


def test_the_suite_profile_sums_samples_by_category_and_by_test(tmp_path):
    import suite_profile

    lines = [
        'process 1:"pytest";test_a (test_one.py:3);trace_to_jaxpr (pe.py:9);lower_jaxpr_to_module (m.py:1) 3',
        'process 1:"pytest";test_a (test_one.py:3);lower_jaxpr_to_module (m.py:1) 2',
        'process 2:"python -c x";<module> (x.py:1);_find_and_load (<frozen>:1);<module> (tensorflow/__init__.py:4) 5',
        "a line cut short by py-spy",
    ]
    (tmp_path / "suite.raw").write_text("\n".join(lines) + "\n")
    categories, tests, total = suite_profile.summarise(suite_profile.read_samples(str(tmp_path / "suite.raw")))
    assert total == 10
    assert categories == {"JAX tracing": 3, "JAX lowering to StableHLO": 2, "importing TensorFlow": 5}
    assert tests == {"test_one.py::test_a": 5, "(outside a test's function)": 5}

"""Test set-up: 8 fake CPU devices, fast compiles and a compilation cache shared by one pytest run
(all set before JAX is imported, and inherited by pytest-xdist workers and the subprocesses tests
start), and small shared configs."""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import sys
import tempfile

_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if not _WORKER:  # workers inherit the controller's settings
    # The tests run tiny programs many times over and compile many of them: XLA's backend
    # optimisations (LLVM -O0 instead of users' -O3) cost more than they save here, and so do XLA's
    # newer CPU fusion emitters (the older ones compile the same fusions in less than half the time;
    # BENCHMARKS.md, "The test suite's time"). The same HLO is computed; where a multiply and an
    # add are fused into one rounding may differ, which float32 results may show in their last
    # bits: every comparison between two programs is in float64 or within a derived bound. Either
    # setting named in XLA_FLAGS is left as given: the suite then runs on users' code paths
    # (docs/testing.md, "Other XLA code paths").
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    for flag, fast in (("--xla_backend_optimization_level", "0"), ("--xla_cpu_use_fusion_emitters", "false")):
        if flag not in flags:
            flags += f" {flag}={fast}"
    os.environ["XLA_FLAGS"] = flags
    # JAX's persistent cache compiles each program once per pytest run. It lives in a temporary
    # directory that the controlling process removes at the end.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="alexnet_jax_xla_cache_")
    # What the workers build once for all of them (see built_once).
    os.environ["ALEXNET_JAX_TEST_SHARED"] = tempfile.mkdtemp(prefix="alexnet_jax_test_shared_")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from configs import smoke  # noqa: E402

pytest_plugins = ("worker_guard",)  # a crashed worker ends the run with a failure, not a hang

# Test files, slowest first (measured with --durations), the order in which xdist hands them out
# (pyproject.toml turns off its own reordering): each worker starts with one, takes another as soon
# as it has two tests or fewer left, and the small files at the end fill the gaps, so the workers
# end at about the same time.
SLOWEST_FILES = (
    "test_multihost.py",
    "test_faults.py",
    "test_run.py",
    "test_streaming.py",
    "test_train_step.py",
    "test_ensemble.py",
    "test_prepare_paper_format.py",
    "test_cross_host_errors.py",
    "test_imagenet_shape.py",
    "test_research.py",
    "test_data.py",
    "test_towers.py",
    "test_errors.py",
    "test_nonfinite.py",
    "test_plateau.py",
    "test_torchvision_recipe.py",
    "test_suite_guards.py",
    "test_pretrained.py",
    "test_finetune.py",
    "test_augment.py",
    "test_features.py",
    "test_benchmarks.py",
    "test_optim.py",
    "test_models.py",
    "test_evaluation.py",
    "test_loop_details.py",
)


def pytest_collection_modifyitems(items):
    slow_rank = {name: rank for rank, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: slow_rank.get(item.path.name, len(SLOWEST_FILES)))  # stable: order within files kept


def pytest_sessionfinish(session, exitstatus):
    if not _WORKER:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
        shutil.rmtree(os.environ["ALEXNET_JAX_TEST_SHARED"], ignore_errors=True)


@contextlib.contextmanager
def built_once(name: str):
    """A folder shared by this pytest run's workers, and whether it is built already: the first
    worker to ask builds it inside the ``with`` while the others wait for it (a file lock)."""
    folder = pathlib.Path(os.environ["ALEXNET_JAX_TEST_SHARED"]) / name
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = (folder / ".built").exists()
        if not built:  # nothing, or what a failed build left
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, built
        (folder / ".built").touch()


def tiny_config():
    """The smoke config shrunk further: 512 synthetic images, 8 steps per epoch, 2 epochs; no
    matplotlib figures."""
    config = smoke.get_config()
    config.dataset.synthetic_examples = 512
    config.model.width = 0.125
    config.model.fc_features = 256
    config.batch_size = 64
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    config.figures = False
    return config


def float64_state(config, split, steps_per_epoch):
    """A train state whose parameters and optimizer state are float64 (call inside x64 mode)."""
    import jax

    from alexnet_jax.experiment import create_state

    assert config.model.dtype == "float64"  # create_state then keeps parameters and optimizer state in float64
    state = create_state(config, len(split.class_names), split.images.shape[1:], steps_per_epoch)
    return jax.device_get(state)  # on the host: never donated


@pytest.fixture
def config():
    return tiny_config()


EPOCHS, STEPS_PER_EPOCH = 3, 4  # 256 synthetic images, batch 64
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
TINY = [
    "--config=configs/smoke.py",
    "--config.dataset.synthetic_examples=256",
    "--config.model.width=0.125",
    "--config.model.fc_features=256",
    "--config.batch_size=64",
    "--config.eval_batch_size=64",
    f"--config.num_epochs={EPOCHS}",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.model.dropout_rate=0.1",  # so that resumes must restore the dropout keys too
    "--config.optimizer.learning_rate=0.01",
    "--config.figures=False",  # matplotlib's figures: drawn where a test reads them (straight_run)
]


def tiny_run_config(*overrides):
    """The config ``main.py`` builds from ``TINY`` and then ``overrides``."""
    import main

    return main.parse_args(["main.py", *TINY, *overrides]).config


def input_blind_cross_entropy(workdir) -> float:
    """The validation cross-entropy of the best prediction that ignores the images: the validation
    labels' own frequencies (their entropy). A model scores below it only by using its input: what
    "it learned" means in a tiny run, whose accuracies and their order differ from machine to machine."""
    import numpy as np

    from alexnet_jax.report import confusion_from_report

    report = json.loads((pathlib.Path(workdir) / "validation_report.json").read_text())
    counts = confusion_from_report(report).sum(1)
    frequencies = counts[counts > 0] / counts.sum()
    return float(-(frequencies * np.log(frequencies)).sum())


@pytest.fixture(scope="session")
def straight_run():
    """One uninterrupted in-process run of ``TINY``, shared by all workers: (workdir, summary,
    evaluations made)."""
    with built_once("straight") as (folder, built):
        if not built:
            result = _train_counting_evaluations(folder / "run")
            (folder / "result.json").write_text(json.dumps(result))
        summary, evaluations = json.loads((folder / "result.json").read_text())
    return folder / "run", summary, evaluations


def _train_counting_evaluations(workdir):
    from alexnet_jax import evaluation
    from alexnet_jax.train import train_and_evaluate

    calls = []
    original = evaluation.Evaluator.__call__
    evaluation.Evaluator.__call__ = lambda self, params: calls.append(1) or original(self, params)
    try:
        # Traced steps 2 and 3 (the profiler changes no number; test_loop_details.py reads the trace).
        figures = "--config.figures=True"  # test_run.py reads them
        summary = train_and_evaluate(tiny_run_config("--config.profile_steps=(1, 2)", figures), str(workdir))
    finally:
        evaluation.Evaluator.__call__ = original
    return summary, len(calls)


CLASSES = ("cat", "dog", "ship")


def write_image_folder(root: pathlib.Path, per_class=8, size=16) -> pathlib.Path:
    """train/ and val/ splits, 3 classes, one colour per class plus noise, PNG and JPEG mixed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(80 * c + 40, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                suffix = ".jpg" if i % 2 else ".png"
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")
            Image.fromarray(pixels[..., 0]).save(folder / "gray.png")  # greyscale becomes RGB
    return root


@pytest.fixture(scope="session")
def prepared():
    """A small image folder prepared as the TFDS dataset ``tiny_folder``, shared by all workers;
    returns its data_dir."""
    with built_once("prepared") as (folder, built):
        if not built:
            from alexnet_jax.prepare import prepare_image_folder

            images = write_image_folder(folder / "images")
            assert prepare_image_folder(str(images), "tiny_folder", str(folder / "tfds")) == []
    return folder / "tfds"


@pytest.fixture
def cli(capsys):
    """Runs ``main.py`` in this process: ``cli(*flags) -> (exit code, stdout, stderr)``."""
    import main

    def run(*args):
        capsys.readouterr()
        code = main.main(["main.py", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


IMAGENET_STYLE_COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 30, 200)}


def write_imagenet_style_folder(root):
    """What real ImageNet holds: train/ and validation/ with two wnid classes; JPEG photos (landscape,
    tiny portrait, large) whose centre square is the class colour and sides another colour;
    a CMYK JPEG, a PNG named .JPEG, a greyscale JPEG, and a corrupt file."""
    import numpy as np
    from PIL import Image

    colours = IMAGENET_STYLE_COLOURS
    sizes = [(300, 200), (40, 60), (1200, 900)]  # landscape, tiny portrait, large
    for split in ("train", "validation"):
        for wnid, colour in colours.items():
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i, (width, height) in enumerate(sizes):
                pixels = np.full((height, width, 3), (0, 160, 0), np.uint8)
                side = min(width, height)
                top, left = (height - side) // 2, (width - side) // 2
                pixels[top : top + side, left : left + side] = colour
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=95)
            square = np.full((80, 80, 3), colour, np.uint8)
            Image.fromarray(square).convert("CMYK").save(folder / f"{wnid}_cmyk.JPEG")
            Image.fromarray(square).save(folder / f"{wnid}_png.JPEG", format="PNG")  # a PNG under a .JPEG name
            Image.fromarray(square).convert("L").save(folder / f"{wnid}_grey.JPEG")
    (root / "train" / "n01440764" / "n01440764_broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    return root


# A small run of an ImageNet config on write_imagenet_style_folder's data, from the command line: a
# small model stands in for the ImageNet networks (224 crops cost too much here), and decoding
# stays in the process (worker processes: see test_streaming.py).
SMALL_IMAGENET_RUN = (
    "--config.model.name=alexnet_cifar",
    "--config.model.width=0.125",
    "--config.model.fc_features=256",
    "--config.input.workers=0",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.num_epochs=2",
    "--config.log_every_steps=1",
)


def datasets_config(name, data_dir, download=False):
    """The dataset part of a config: a TFDS name and its data_dir."""
    import ml_collections

    return ml_collections.ConfigDict({"name": name, "data_dir": str(data_dir), "download": download})

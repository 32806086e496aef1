"""The catalogue of command-line mistakes (docs/troubleshooting.md): each ends in one line,
``error: ...``, naming the problem and the fix, exit code 2, no traceback, and nothing written
that could mislead or lost: the directories involved are byte-for-byte what they were."""

import hashlib
import pathlib
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, tiny_run_config, write_image_folder

from alexnet_jax.train import train_and_evaluate


def snapshot(*folders: pathlib.Path) -> dict:
    """Every file under ``folders`` with a hash of its bytes ({} for a folder that does not exist)."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return files


@pytest.fixture(scope="module")
def unevaluated_run(tmp_path_factory):
    """A run stopped at step 2: one checkpoint, saved between evaluations."""
    workdir = tmp_path_factory.mktemp("unevaluated")
    train_and_evaluate(tiny_run_config(), str(workdir), stop_after=2)
    return workdir


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    (root / "empty" / "train" / "cat").mkdir(parents=True)
    corrupt = write_image_folder(root / "corrupt", per_class=2)
    (corrupt / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    lacking = write_image_folder(root / "lacking", per_class=2)
    for image in (lacking / "val" / "ship").iterdir():
        image.unlink()
    (root / "a_file").write_text("not a directory")
    (root / "empty_data_dir").mkdir()
    (root / "truncated.safetensors").write_bytes(b"\xff" * 8 + b"{")
    (root / "damaged_run").mkdir()
    (root / "damaged_run" / "config.json").write_text('{"seed": 0, "model": {')
    return root


# (id, flags given the fixtures' paths, the message's words). ``new`` is a workdir that does not exist yet.
CASES = [
    ("config file missing", lambda p: ["--config=configs/does_not_exist.py"], "no such file; the configs are in"),
    ("config does not parse", lambda p: [f"--config={p['broken_config']}"], "does not parse: invalid syntax"),
    ("unknown config key", lambda p: [*TINY, "--config.no_such_key=1"], "config has no field 'no_such_key'"),
    ("unknown nested key", lambda p: [*TINY, "--config.model.widht=1"], "config.model has no field 'widht'"),
    ("value of the wrong type", lambda p: [*TINY, "--config.batch_size=abc"], "--config.batch_size=abc: invalid"),
    ("unknown flag", lambda p: [*TINY, "--work_dir=x"], "Unknown command line flag 'work_dir'"),
    ("positional argument", lambda p: [*TINY, "train"], "unexpected arguments ['train']"),
    ("no workdir", lambda p: TINY, "--mode=train needs --config=configs/<name>.py and --workdir=DIR"),
    ("unknown model", lambda p: [*TINY, "--config.model.name=resnet50"], "--config.model.name='resnet50' is not one"),
    (
        "unknown dataset",
        lambda p: [*TINY, "--config.dataset.name=no_such_data", f"--config.dataset.data_dir={p['empty_data_dir']}"],
        "no TFDS dataset 'no_such_data'",
    ),
    ("unknown schedule", lambda p: [*TINY, "--config.schedule.name=poly"], "--config.schedule.name='poly' is not one"),
    ("unknown parallel mode", lambda p: [*TINY, "--config.parallel=xmap"], "--config.parallel='xmap' is not one of"),
    ("unknown pipeline", lambda p: [*TINY, "--config.input.pipeline=tfdata"], "input.pipeline='tfdata' is not"),
    ("unknown non-finite rule", lambda p: [*TINY, "--config.nonfinite_updates=ignore"], "nonfinite_updates='ignore'"),
    ("negative workers", lambda p: [*TINY, "--config.input.workers=-1"], "--config.input.workers=-1 must be a whole"),
    (
        "crop larger than the images",
        lambda p: [*TINY, "--config.augment.crop_size=40"],
        "--config.augment.crop_size=40 is larger than the dataset's 32x32 images",
    ),
    (
        "host view while resident",
        lambda p: [*TINY, "--config.input.random_resized_crop=24"],
        "--config.input.random_resized_crop is made on the host while streaming: set --config.input.pipeline=stre",
    ),
    (
        "random resized crop without eval_resize",
        lambda p: [*TINY, "--config.input.pipeline=streaming", "--config.input.random_resized_crop=24"],
        "random_resized_crop needs --config.input.eval_resize",
    ),
    ("ten crops without a crop size", lambda p: [*TINY, "--config.eval_crops=10"], "eval_crops=10 takes crops"),
    (
        "plateau without patience",
        lambda p: [*TINY, "--config.schedule.name=plateau", "--config.schedule.patience=0"],
        "--config.schedule.patience=0 must be a whole number >= 1",
    ),
    ("batch vs devices", lambda p: [*TINY, "--config.batch_size=100"], "not divisible by the 8 devices; use a mult"),
    ("batch > dataset", lambda p: [*TINY, "--config.batch_size=512"], "exceeds the 256 training examples; lower it"),
    ("zero epochs", lambda p: [*TINY, "--config.num_epochs=0"], "--config.num_epochs=0 must be a whole number >= 1"),
    ("profile of no steps", lambda p: [*TINY, "--config.profile_steps=(3, 0)"], "must be (start, count): whole"),
    (
        "micro-batches with batch norm",
        lambda p: [*TINY, "--config.model.norm=batch", "--config.grad_accum_steps=2"],
        "would take statistics over micro-batches; use --config.model.norm=none, or 1",
    ),
    ("negative batch", lambda p: [*TINY, "--config.batch_size=-8"], "--config.batch_size=-8 must be a whole number"),
    (
        "a sweep of the wrong length",
        lambda p: [*TINY, "--config.ensemble_size=2", "--config.members.learning_rate=(0.1,)"],
        "--config.members.learning_rate has 1 values for --config.ensemble_size=2: give one per member",
    ),
    (
        "a member's bad value",
        lambda p: [*TINY, "--config.ensemble_size=2", "--config.members.dropout_rate=(0.1, 1.5)"],
        "ensemble member 1: --config.model.dropout_rate=1.5 must be in [0, 1)",
    ),
    (
        "towers of another model",
        lambda p: [*TINY, "--config.parallel=towers"],
        "--config.parallel=towers splits alexnet2012 as the paper did; --config.model.name=alexnet_cifar has no",
    ),
    ("an unknown research piece", lambda p: [*TINY, "--config.loss_term=nope"], "--config.loss_term='nope' is not one"),
    (
        "towers, classes that do not halve",
        lambda p: [
            *TINY,
            "--config.model.name=alexnet2012",
            "--config.parallel=towers",
            "--config.dataset.synthetic_classes=11",
        ],
        "splits fc8's outputs between two towers, and the dataset's 11 classes do not halve; use --config.parallel=sh",
    ),
    (
        "per-member values of one model",
        lambda p: [*TINY, "--config.members.learning_rate=(0.1,)"],
        "--config.members.learning_rate holds an ensemble's per-member values, and --config.ensemble_size=1 trains one",
    ),
    ("a decay that never moves", lambda p: [*TINY, "--config.ema_decay=1.0"], "ema_decay=1.0 must be in [0, 1): 0 "),
    ("a decay that diverges", lambda p: [*TINY, "--config.ema_decay=1.5"], "--config.ema_decay=1.5 must be in [0, 1)"),
    ("a negative decay", lambda p: [*TINY, "--config.ema_decay=-0.3"], "--config.ema_decay=-0.3 must be in [0, 1)"),
    ("zero rate", lambda p: [*TINY, "--config.optimizer.learning_rate=0"], "learning_rate=0.0 must be > 0"),
    ("negative width", lambda p: [*TINY, "--config.model.width=-1"], "--config.model.width=-1.0 must be > 0"),
    (
        "step_epochs outside the run",
        lambda p: [*TINY, "--config.schedule.name=step", "--config.schedule.step_epochs=(2, 5)"],
        "step_epochs=(2, 5) must increase and lie inside (0, num_epochs=3)",
    ),
    (
        "missing data_dir",
        lambda p: [*TINY, "--config.dataset.name=photos", f"--config.dataset.data_dir={p['new']}_data"],
        "no TFDS dataset 'photos' under data_dir=",
    ),
    (
        "empty data_dir",
        lambda p: [*TINY, "--config.dataset.name=photos", f"--config.dataset.data_dir={p['empty_data_dir']}"],
        "--mode=prepare --image_folder=DIR --dataset_name=photos",
    ),
    (
        "split the dataset lacks",
        lambda p: [*TINY, "--config.dataset.name=tiny_folder", f"--config.dataset.data_dir={p['prepared']}"],
        "bad split 'validation' for 'tiny_folder' (splits: train, val)",
    ),
    ("image folder without images", lambda p: p["prepare"]("empty"), "no images under"),
    ("corrupt image", lambda p: p["prepare"]("corrupt"), "/train/dog/broken.png (UnidentifiedImageError"),
    ("corrupt image", lambda p: p["prepare"]("corrupt"), "or pass --skip_bad_images (nothing was written)"),
    ("class a split lacks", lambda p: p["prepare"]("lacking"), "/val has no images of class(es) ['ship']"),
    (
        "ImageNet's tars missing",
        lambda p: (
            [*p["prepare"]("x")[:1], "--tfds_source=imagenet2012", f"--manual_dir={p['empty_data_dir']}"]
            + p["prepare"]("x")[2:]
        ),
        "could not build TFDS dataset 'imagenet2012' from --manual_dir=",
    ),
    (
        "sliced TFDS source split",
        lambda p: (
            [*p["prepare"]("x")[:1], "--tfds_source=imagenet2012", "--splits=train[:10%]"] + p["prepare"]("x")[2:]
        ),
        "--splits=train[:10%]: 'train[:10%]' is not a split name",
    ),
    ("folder and TFDS source", lambda p: [*p["prepare"]("empty"), "--tfds_source=mnist"], "needs one of --image_f"),
    ("prepare without data_dir", lambda p: ["--mode=prepare", "--image_folder=x", "--dataset_name=y"], "--data_dir"),
    ("unknown norm", lambda p: [*TINY, "--config.model.norm=layer"], "--config.model.norm='layer' is not one of"),
    (
        "mirror and ten crops",
        lambda p: [*TINY, "--config.eval_crops=10", "--config.augment.crop_size=24", "--config.eval_flip=True"],
        "--config.eval_flip=True adds mirror images, which the paper's ten crops already hold",
    ),
    ("workdir under a file", lambda p: [*TINY, f"--workdir={p['a_file']}/run"], "a_file is a file, not a directory"),
    ("workdir not writable", lambda p: [*TINY, "--workdir=/proc/self/run"], "/proc/self is not writable"),
    ("another model", lambda p: [*p["trained"], "--config.model.width=0.25"], "(model.width: 0.125 there, 0.25 now)"),
    ("another class count", lambda p: [*p["trained"], "--config.dataset.synthetic_classes=5"], "(num_classes: 10"),
    ("another batch layout", lambda p: [*p["trained"], "--config.batch_size=32"], "(global_batch_size: 64 there, 32"),
    ("more steps than it runs", lambda p: [*p["trained"], "--config.max_steps=5"], "has trained 12 steps, more than"),
    (
        "evaluate on images of another size",
        lambda p: [*p["trained"], "--mode=evaluate", "--config.dataset.synthetic_image_size=16"],
        "in this model; evaluate with the config and images it was trained on",
    ),
    ("fewer epochs than it ran", lambda p: [*p["trained"], "--config.num_epochs=1"], "more than this config's 4 "),
    ("another seed", lambda p: [*p["trained"], "--config.seed=1"], "(seed: 0 there, 1 now)"),
    ("another data order", lambda p: [*p["trained"], "--config.data_seed=5"], "(data_seed: 0 there, 5 now)"),
    (
        "a moving average added",
        lambda p: [*p["trained"], "--config.ema_decay=0.9", "--config.num_epochs=4"],
        "was trained without a moving average of the weights (--config.ema_decay=0.9 now); resume with the ema_dec",
    ),
    (
        "another slice of the same size",
        lambda p: [*p["trained"], "--config.dataset.train_split=train[:100%]"],
        "(train_split: 'train' there, 'train[:100%]' now)",
    ),
    (
        "predict, config.json damaged",
        lambda p: ["--mode=predict", f"--workdir={p['damaged_run']}", "--images=x.png"],
        "config.json is damaged",
    ),
    ("evaluate, no checkpoints", lambda p: [*TINY, "--mode=evaluate", f"--workdir={p['new']}"], "no checkpoints in"),
    (
        "evaluate best, none evaluated",
        lambda p: [*TINY, "--mode=evaluate", f"--workdir={p['unevaluated']}", "--checkpoint=best"],
        "(steps 2) has a validation result yet",
    ),
    (
        "evaluate a step never saved",
        lambda p: [*p["trained"], "--mode=evaluate", "--checkpoint=7"],
        "--checkpoint=7: no checkpoint at step 7",
    ),
    ("fine-tuning keys alone", lambda p: [*TINY, "--config.finetune.freeze_convs=True"], "give --config.init_from="),
    ("init_from nothing", lambda p: [*TINY, f"--config.init_from={p['new']}_x"], "_x: no checkpoint there; give a"),
    (
        "init_from another shape",
        lambda p: [*TINY, f"--config.init_from={p['trained'][-1][10:]}", "--config.model.fc_features=128"],
        "fc6/bias has shape (32,) there, (16,) in this model",
    ),
    ("convert without weights", lambda p: ["--mode=convert", f"--workdir={p['new']}"], "needs --weights=FILE.pth"),
    (
        "convert a broken file",
        lambda p: ["--mode=convert", f"--weights={p['bad_weights']}", f"--workdir={p['new']}"],
        "truncated.safetensors is not a readable safetensors file",
    ),
    (
        "convert into a run",
        lambda p: ["--mode=convert", f"--weights={p['bad_weights']}", p["trained"][-1]],
        "holds checkpoints already; convert into a new --workdir",
    ),
    ("predict without images", lambda p: ["--mode=predict", p["trained"][-1]], "needs --images=FILE_FOLDER_OR_GLOB"),
    (
        "predict, another output",
        lambda p: ["--mode=predict", p["trained"][-1], "--images=x.png", "--output=p.txt"],
        "--output=p.txt must end in .csv or .jsonl",
    ),
    (
        "predict, ten crops of whole images",
        lambda p: ["--mode=predict", p["trained"][-1], f"--images={p['a_file']}", "--ten_crop"],
        "--ten_crop needs a config that crops",
    ),
    (
        "predict, not a run",
        lambda p: ["--mode=predict", f"--workdir={p['new']}", f"--images={p['a_file']}"],
        "config.json does not exist; predict from a workdir of a training run or of --mode=convert",
    ),
    ("evaluate, bad --checkpoint", lambda p: [*p["trained"], "--mode=evaluate", "--checkpoint=last"], "must be 'lat"),
    (
        "evaluate another model",
        lambda p: [*p["trained"], "--mode=evaluate", "--config.model.fc_features=128"],
        "(model.fc_features: 256 there, 128 now)",
    ),
]


@pytest.mark.parametrize("flags, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_mistake_gives_one_line_and_loses_nothing(
    flags, message, cli, tmp_path, straight_run, prepared, unevaluated_run, bad_folders
):
    broken = tmp_path / "broken_config.py"
    broken.write_text("def get_config(:\n")
    paths = {
        "new": tmp_path / "new_run",
        "broken_config": broken,
        "prepared": prepared,
        "unevaluated": unevaluated_run,
        "empty_data_dir": bad_folders / "empty_data_dir",
        "a_file": bad_folders / "a_file",
        "bad_weights": bad_folders / "truncated.safetensors",
        "damaged_run": bad_folders / "damaged_run",
        "trained": [*TINY, f"--workdir={straight_run[0]}"],
        "prepare": lambda name: [
            "--mode=prepare",
            f"--image_folder={bad_folders / name}",
            "--dataset_name=bad_folder",
            f"--data_dir={tmp_path / 'tfds'}",
        ],
    }
    args = flags(paths)
    if not any(a.startswith("--workdir") for a in args) and args[:1] != ["--mode=prepare"] and args != TINY:
        args = [*args, f"--workdir={paths['new']}"]
    watched = [straight_run[0], prepared, unevaluated_run, bad_folders, tmp_path]
    before = snapshot(*watched)
    code, out, err = cli(*args)
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert [line for line in lines[:-1] if "error" in line.lower()] == []  # progress bars aside, one line
    assert "Traceback" not in err + out
    assert snapshot(*watched) == before  # nothing written, nothing deleted


def test_the_command_line_gives_one_line_in_a_real_process(tmp_path):
    """The in-process calls above go through main.main(); this is the real entry point around it."""
    done = subprocess.run(
        [sys.executable, "main.py", "--config=configs/does_not_exist.py", f"--workdir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: --config=configs/does")
    assert "Traceback" not in done.stderr


def test_another_runs_checkpoints_are_refused_before_a_state_is_built(straight_run, cli, monkeypatch):
    """The refusal comes before any work: no train state is initialised (seconds at ImageNet's size)."""
    from alexnet_jax import train

    def built(*args, **kwargs):
        raise AssertionError("a train state was built before the refusal")

    monkeypatch.setattr(train, "create_state", built)
    code, out, err = cli(*TINY, f"--workdir={straight_run[0]}", "--config.seed=1")
    assert code == 2 and "(seed: 0 there, 1 now)" in err.strip().splitlines()[-1], err[-3000:]

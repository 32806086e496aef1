"""benchmarks/gpu_check.py: every section's numbers survive another's failure or time limit, and
what a bare GPU machine lacks (TFDS) stops no section that needs no data."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def fake_sections(args, devices):
    """Sections that print a table, fail, outlive their limit, and one skipped."""
    table = ["-c", "print('model=x device=cpu'); print('| a | b |'); print('|---|---|'); print('| 1 | 2 |')"]
    return [
        gpu_check.Section("preflight", "Devices", 30, ["-c", f"print({json.dumps({'devices': 1})!r})"]),
        gpu_check.Section("fails", "A failing section", 30, ["-c", "import sys; print('partial'); sys.exit(3)"]),
        gpu_check.Section(
            "hangs", "A section past its limit", 1, ["-c", "import time; print('begun', flush=True); time.sleep(60)"]
        ),
        gpu_check.Section("towers", "Skipped", 30, ["-c", "pass"], "1 device: towers need two"),
        gpu_check.Section("after", "A section after them", 30, table),
    ]


def test_a_failing_or_stuck_section_loses_no_other_sections_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "sections", fake_sections)
    gpu_check.main([f"--out={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())
    status = {r["name"]: r["status"] for r in results["sections"]}
    assert status == {
        "preflight": "ok", "fails": "failed (3)", "hangs": "timed out (1 s)", "towers": "skipped", "after": "ok"
    }  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "| 1 | 2 |" in report and "model=x device=cpu" in report  # the last section's table
    assert "partial" in report and "begun" in report  # the others' output, kept
    assert "1 device: towers need two" in report
    assert (tmp_path / "logs" / "hangs.log").read_text() == "begun\n"


def test_the_runs_budget_skips_what_it_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "sections", fake_sections)
    gpu_check.main([f"--out={tmp_path}", "--budget=5"])  # less than MIN_SECONDS left after the preflight
    records = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert [r["status"] for r in records[1:]] == ["skipped"] * 4
    assert "left of the run's --budget" in records[1]["why"]


def test_the_loop_is_compared_with_the_bare_step_from_both_sections_outputs(tmp_path):
    (tmp_path / "scratch" / "loop").mkdir(parents=True)
    speeds = [100.0, 300.0, 280.0, 320.0]  # the first window left out: the median of the rest, 300
    lines = [json.dumps({"kind": "train", "images_per_s": v}) for v in speeds] + ['{"kind": "eval"}']
    (tmp_path / "scratch" / "loop" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    bare = "| input | images/s |\n|---|---:|\n| bare step (one batch on the devices) | 1,200 | 5.0 | 100% |\n"
    records = [{"name": "loop", "status": "ok", "output": ""}, {"name": "bare_step", "status": "ok", "output": bare}]
    assert gpu_check.loop_against_bare_step(tmp_path, records)[-1] == "| 300 | 1,200 | 25% |"
    records[1]["status"] = "failed (1)"
    assert gpu_check.loop_against_bare_step(tmp_path, records) == []


def test_a_section_on_synthetic_data_needs_no_tfds(tmp_path):
    """The step's script on synthetic data, with TFDS and what else a GPU image lacks unimportable
    (the second tier's rehearsal runs every section so)."""
    script = [
        "benchmarks/train_step.py",
        "--config=configs/smoke.py",
        "--config.model.width=0.125",
        "--config.batch_size=16",
    ]
    command = [sys.executable, *script, "--steps=1", "--warmup=0", "--modes=shard_map"]
    env = gpu_check.as_on_a_gpu_image(tmp_path / "absent")
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=1"  # one GPU's: one program for both measures
    absent = subprocess.run([sys.executable, "-c", "import tensorflow_datasets"], env=env, capture_output=True)
    assert b"absent on GPU images" in absent.stderr
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| shard_map |" in done.stdout


@pytest.mark.tier2  # the first tier: the orchestration (above) and a section without TFDS and Grain
def test_the_rehearsal_runs_every_section_on_a_cpu(tmp_path):
    command = [sys.executable, "benchmarks/gpu_check.py", "--rehearse", f"--out={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert {r["name"]: r["status"] for r in records} == {r["name"]: "ok" for r in records}, done.stdout
    assert len(records) == 10
    report = (tmp_path / "report.md").read_text()
    assert all(f"## {r['title']}" in report for r in records)
    assert json.loads((tmp_path / "versus_pytorch.json").read_text())["rows"]
    assert "| the loop (images/s) | the bare step (images/s) | loop / bare step |" in report

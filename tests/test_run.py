"""main.py end to end: outputs, exact resume after SIGKILLs at random moments and after stop
requests, stops at epoch ends and at the final step, a death during the final report, one evaluation
per evaluated epoch. A real SIGTERM (stop at a step boundary, exit 130, resume) is sent in test_multihost.py."""

import json
import shutil
import statistics

import pytest
from conftest import EPOCHS, STEPS_PER_EPOCH, TINY, TOTAL_STEPS, input_blind_cross_entropy, tiny_run_config
from harness import assert_same_final_state, assert_survived_the_kills, kill_and_restart, kill_plan

from alexnet_jax import metrics_log, plots
from alexnet_jax.train import train_and_evaluate

OUTPUTS = ("curves.png", "validation_confusion.png", "validation_per_class.png", "validation_predictions.png")
FIGURES = "--config.figures=True"  # TINY leaves them out


def saved_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def records(workdir, kind):
    return [r for r in metrics_log.read_metrics(workdir) if r["kind"] == kind]


def assert_complete(workdir):
    """What an uninterrupted run leaves: every log line once, every evaluation once, the report."""
    assert [r["step"] for r in records(workdir, "train")] == list(range(2, TOTAL_STEPS + 1, 2))
    assert [r["step"] for r in records(workdir, "eval")] == list(range(STEPS_PER_EPOCH, TOTAL_STEPS + 1, 4))
    for name in OUTPUTS:
        assert (workdir / name).stat().st_size > 5000, name
    assert json.loads((workdir / "validation_report.json").read_text())["step"] == TOTAL_STEPS


def test_a_run_leaves_metrics_events_checkpoints_and_plots(straight_run):
    workdir, summary, _ = straight_run
    assert summary["step"] == summary["total_steps"] == TOTAL_STEPS
    assert_complete(workdir)
    train, evals = records(workdir, "train"), records(workdir, "eval")
    assert {"epoch", "loss", "cross_entropy", "accuracy", "learning_rate", "images_per_s"} <= set(train[0])
    assert {"val_top1", "val_top5", "val_loss"} <= set(evals[0])
    # It learned: it predicts the validation labels better than their frequencies do (a tiny run's
    # accuracies, and which evaluation ranks best, differ from machine to machine).
    assert evals[-1]["val_loss"] < input_blind_cross_entropy(workdir)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # Kept: the latest two checkpoints, plus one with the best validation top-1 (ties allowed).
    kept = saved_steps(workdir)
    assert {TOTAL_STEPS - 2, TOTAL_STEPS} <= set(kept) and len(kept) <= 3
    val_at = {r["step"]: r["val_top1"] for r in evals}
    assert max(val_at.values()) in {val_at[s] for s in kept if s in val_at}
    assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 0.125


def test_the_final_model_is_evaluated_once(straight_run):
    workdir, _, evaluations = straight_run
    assert evaluations == EPOCHS  # one per epoch; the report reuses the last one


def test_running_a_finished_run_again_only_reports(straight_run, cli):
    workdir, _, _ = straight_run
    before = (workdir / "metrics.jsonl").read_text()
    code, out, err = cli(*TINY, f"--workdir={workdir}")
    assert code == 0, err[-3000:]
    assert f"has finished all {TOTAL_STEPS} steps" in out
    assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("moments", [("save",), pytest.param(("save", "evaluation", "step"), marks=pytest.mark.tier2)])
def test_sigkills_at_random_moments_then_restarts_end_as_an_uninterrupted_run(moments, straight_run, tmp_path):
    """A SIGKILL inside a checkpoint write (the second tier: then right after an evaluation, and
    after a step too), each restarted, ends as the uninterrupted run did."""
    saves, evaluations = range(2, TOTAL_STEPS + 1, 2), range(STEPS_PER_EPOCH, TOTAL_STEPS + 1, STEPS_PER_EPOCH)
    plan = [moment for moment in kill_plan(0, list(saves), list(evaluations), TOTAL_STEPS) if moment[0] in moments]
    runs = kill_and_restart(plan, tmp_path / "run", TINY)
    assert_survived_the_kills(runs, tmp_path / "run", straight_run[0], TOTAL_STEPS)
    # TINY's --config.figures=False: the report and the filters, no matplotlib figure.
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)
    assert (tmp_path / "run" / "conv1_filters.png").exists()


@pytest.mark.tier2  # the first tier: a kill inside a checkpoint write, derived files cut short (below)
def test_stops_and_a_death_during_the_report_then_resumes_end_as_an_uninterrupted_run(
    straight_run, tmp_path, monkeypatch
):
    # A stop at an epoch's end evaluates that epoch first.
    summary = train_and_evaluate(tiny_run_config(FIGURES), str(tmp_path), stop_after=STEPS_PER_EPOCH)
    assert summary["stopped"] and summary["step"] == STEPS_PER_EPOCH
    assert [r["step"] for r in records(tmp_path, "eval")] == [STEPS_PER_EPOCH]

    # A stop on the final step still goes on to the report; here the process dies writing it.
    def die(*args, **kwargs):
        raise RuntimeError("killed while plotting")

    with monkeypatch.context() as patch:
        patch.setattr(plots, "plot_curves", die)
        with pytest.raises(RuntimeError, match="killed while plotting"):
            train_and_evaluate(tiny_run_config(FIGURES), str(tmp_path), stop_after=TOTAL_STEPS)
    assert saved_steps(tmp_path)[-1] == TOTAL_STEPS and not (tmp_path / "validation_report.json").exists()

    # Running again completes the report, logging the final evaluation once, not again.
    summary = train_and_evaluate(tiny_run_config(FIGURES), str(tmp_path))
    assert not summary.get("stopped") and summary["step"] == TOTAL_STEPS
    assert_complete(tmp_path)
    assert_same_final_state(tmp_path, straight_run[0])


def test_derived_files_cut_short_are_written_again_and_a_cut_metrics_line_is_left_out(straight_run, tmp_path, cli):
    """Files cut short by a kill (written elsewhere than here, say, or by an older version) in a
    finished run: the report and config.json are written again, a metrics line cut short is left
    out, not fatal."""
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    report = (workdir / "validation_report.json").read_text()
    (workdir / "validation_report.json").write_text(report[: len(report) // 2])
    (workdir / "config.json").write_text('{"seed": ')
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')
    code, out, err = cli(*TINY, FIGURES, f"--workdir={workdir}")
    assert code == 0, err[-3000:]
    assert (workdir / "validation_report.json").read_text() == report
    assert json.loads((workdir / "config.json").read_text())["seed"] == 0
    assert_complete(workdir)


def test_the_first_throughput_window_excludes_compilation(straight_run):
    speeds = [r["images_per_s"] for r in metrics_log.read_metrics(straight_run[0]) if r["kind"] == "train"]
    # Compiling takes seconds, a step of this net milliseconds: a window holding the compilation
    # would be tens of times slower than the others.
    assert speeds[0] > 0.25 * statistics.median(speeds[1:]), speeds


def test_curves_compare_plain_cross_entropy_on_both_sides(straight_run):
    records = metrics_log.read_metrics(straight_run[0])
    train = [r for r in records if r["kind"] == "train"]
    figure = plots.curves_figure(records)
    loss_axes = figure.axes[0]
    train_line = loss_axes.get_lines()[0]
    assert list(train_line.get_ydata()) == [r["cross_entropy"] for r in train]  # not the smoothed objective
    assert "no smoothing" in loss_axes.get_ylabel()
    assert any(r["loss"] != r["cross_entropy"] for r in train)  # smoke.py trains with label smoothing 0.1

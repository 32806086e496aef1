"""The paper's learning-rate rule: lower the rate when validation error stops improving; its state
lives in checkpoints, so a resumed run decides as an uninterrupted one."""

import pytest
from conftest import tiny_run_config
from harness import final_arrays

from alexnet_jax import metrics_log, optim
from alexnet_jax.train import train_and_evaluate


def test_the_rule_lowers_after_patience_evaluations_without_improvement_at_most_max_times():
    rule = optim.Plateau(patience=2, factor=0.1, max_reductions=2)
    errors = [0.5, 0.4, 0.4, 0.45, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    decisions = [rule.observe(e) for e in errors]
    #  0.5 best, 0.4 best, no gain x2 -> lower, 0.3 best, no gain x2 -> lower, then the cap holds.
    assert decisions == [False, False, False, True, False, False, True, False, False, False, False]
    assert rule.reductions == 2 and rule.best_error == 0.3


def plateau_config():
    config = tiny_run_config()  # 4 steps per epoch, evaluated every epoch
    config.num_epochs = 3
    config.schedule.name, config.schedule.patience, config.schedule.max_reductions = "plateau", 1, 3
    # A rate so small that the parameters, hence the validation error, do not move: every evaluation
    # after the first finds no improvement, and the rule lowers the rate each time.
    config.optimizer.learning_rate = 1e-12
    return config


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    """The run, stopped at step 10 (after one lowering) and resumed to the end (step 12)."""
    workdir = tmp_path_factory.mktemp("plateau")
    assert train_and_evaluate(plateau_config(), str(workdir), stop_after=10)["stopped"]
    train_and_evaluate(plateau_config(), str(workdir))
    return workdir


def logged_rates(workdir):
    return {r["step"]: r["learning_rate"] for r in metrics_log.read_metrics(workdir) if r["kind"] == "train"}


def test_the_loop_lowers_the_rate_after_each_evaluation_without_improvement(plateau_run):
    evals = [r for r in metrics_log.read_metrics(plateau_run) if r["kind"] == "eval"]
    assert len({r["val_top1"] for r in evals}) == 1  # the error stood still, as intended
    rates = logged_rates(plateau_run)
    # First evaluation (step 4): the best so far. Lowered after those of steps 8 and 12 (the end).
    expected = {step: 1e-12 * 0.1 ** max(0, (step - 1) // 4 - 1) for step in rates}
    assert rates.keys() == set(range(2, 13, 2))
    for step, rate in rates.items():
        assert abs(rate / expected[step] - 1) < 1e-6, (step, rates)  # float32 rates


def test_a_resumed_run_carries_the_rules_state(plateau_run):
    # The lowering after the final evaluation (step 12) needs the best error of step 4, from before
    # the stop: it shows in the final checkpoint's rate only if the rule's state was restored.
    (rate,) = [value for key, value in final_arrays(plateau_run, 12).items() if key.endswith("learning_rate")]
    assert abs(float(rate) / 1e-14 - 1) < 1e-6, rate

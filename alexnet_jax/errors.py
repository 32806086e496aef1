"""The exception types main.py reports as a one-line message instead of a traceback."""


class UserError(ValueError):
    """Bad input (config value, dataset, checkpoint): the message says what to do."""


class TrainingDiverged(RuntimeError):
    """A step's loss or gradients were not finite: training stopped there, nothing after the last good
    checkpoint was saved; the message names the step and that checkpoint."""

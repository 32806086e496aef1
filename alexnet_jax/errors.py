"""The exception types main.py reports as a one-line message instead of a traceback."""


class UserError(ValueError):
    """Bad input (config value, dataset, checkpoint): the message says what to do."""


class ConfigError(UserError):
    """A config value is invalid, or does not fit the data, devices or workdir; the message names
    the key and what to use instead."""


class TrainingDiverged(RuntimeError):
    """A step's loss or gradients were not finite: training stopped there, nothing after the last good
    checkpoint was saved; the message names the step and that checkpoint."""


class InputWorkerDied(RuntimeError):
    """A process of the streaming input pipeline died (killed, out of memory): the run stopped, its
    last completed step saved; the message says so."""

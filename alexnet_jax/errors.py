"""The one exception type main.py reports as a one-line message instead of a traceback."""


class UserError(ValueError):
    """Bad input (config value, dataset, checkpoint): the message says what to do."""

"""The two errors the CLI turns into one line: bad input (exit 2) and a machine that cannot start the run (exit 1).

Their own module: the CLI needs them before it imports anything else (``--help`` imports nothing heavy).
"""


class ConfigError(ValueError):
    """A configuration a run cannot start from; the message says which key and why."""


class StartError(RuntimeError):
    """The machine could not start what a valid run needs (e.g. a local Ray); the CLI exits 1 with one line."""

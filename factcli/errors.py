"""The two ways a command can fail on purpose: bad input (exit 2) and a failed check (exit 1)."""


class FactError(Exception):
    """Bad input or usage: the CLI prints the message on one line and exits with status 2."""


class CheckFailed(Exception):
    """A requested check (e.g. `fact compare --require`) did not hold: exit status 1."""

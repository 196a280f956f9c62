"""The one error type a user sees: a single line naming the file, the field and the fix, exit code 2."""


class UserError(Exception):
    """Bad input (config, data, task files, run folders). The CLI prints it as one line and exits 2."""

    exit_code = 2


def closest(word: str, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class RunStopped(Exception):
    """A run that ends early on purpose or by fault, with its last good checkpoint kept.

    Exit codes: 3 for faults (disk full, divergence, non-finite steps), 75 for a pre-emption signal
    (SIGTERM/SIGINT: checkpoint saved, resume with --resume).
    """

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


PREEMPTED_EXIT_CODE = 75

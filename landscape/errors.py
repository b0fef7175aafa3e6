"""The one exception type the CLI turns into a single clear line on stderr."""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, an out-of-range option.

    The message is the whole story; the CLI prints it on one line and exits non-zero,
    without a traceback.
    """

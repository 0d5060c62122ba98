"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input: the CLI prints the message on one line and exits with status 2, without a traceback.

    The message names the flag or file, says what is wrong and what to do about it.
    """

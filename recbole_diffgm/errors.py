"""Errors caused by the user's input, which the CLI reports as one line."""


class InputError(ValueError):
    """A bad file, field, value or name given by the user; the message names it and the fix."""

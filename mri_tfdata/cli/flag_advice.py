"""Library errors name parameters (batch_size=64); commands show them as flags (--batch_size=64)."""

import contextlib
import re

from absl import flags

from mri_tfdata.core.errors import UserError

# name=value, not inside a word, a path or a flag: the value is quoted or runs to a space, comma,
# semicolon or parenthesis (a sentence's final dot is not part of it).
_ASSIGNMENT = re.compile(
    r"(?<![\w./-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)'\"]*[^\s,;).'\"])")


def as_flags(message: str, flag_names) -> str:
    """`message` with every `name=value` whose name is one of `flag_names` written as that flag.

    True and False become `--name` and `--noname`; quotes around a value are dropped.
    """
    names = set(flag_names)

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        if name not in names:
            return match.group(0)
        if value in ("True", "False"):
            return f"--{'' if value == 'True' else 'no'}{name}"
        return f"--{name}={value}"

    return _ASSIGNMENT.sub(flag, message)


@contextlib.contextmanager
def errors_as_flags(modules):
    """Rewrites a UserError raised inside with `as_flags`, for the flags `modules` define (module
    objects or names); the error's type, and so its exit status, is kept."""
    names = {flag.name for module in modules
             for flag in flags.FLAGS.get_flags_for_module(module)}
    try:
        yield
    except UserError as e:
        e.args = (as_flags(str(e), names),)
        raise

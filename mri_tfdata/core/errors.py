"""The one exception type for mistakes a user can fix, shown without a traceback."""


class UserError(Exception):
    """A bad input or setting. The message is one paragraph naming the problem and the fix."""

    exit_code = 1


class FlagError(UserError):
    """A bad command-line flag value; entry points exit with status 2, as for a parse error."""

    exit_code = 2

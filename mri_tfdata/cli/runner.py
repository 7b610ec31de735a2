"""Runs an absl entry point: one-screen --help, and user mistakes as one paragraph, not a traceback.

absl's own --help exits with status 1 and, from a console script, lists no flag at all (it looks
up the flags of sys.argv[0], the script's wrapper); so help requests are answered here, before
absl parses anything, for the module that defines `main`.
"""

import ast
import functools
import logging
import os
import pathlib
import re
import shlex
import shutil
import sys
import textwrap

from absl import app, flags

from mri_tfdata.core.errors import NO_VALUE, ParameterError, UserError, python_spelling

FLAGS = flags.FLAGS

_SHORT_HELP = ("help", "helpshort", "h", "?")
# A possible end of a help text's first sentence: ". " or "; " (not the dot of "e.g." or "i.e.");
# it ends there only outside parentheses.
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)[.;]\s")
_LEFT_COLUMN = 32
# Library parameters set by a flag of another name or with other values:
# parameter -> (flag, {parameter value: flag value}). Any other parameter is set by its namesake.
_FLAG_OF_PARAMETER = {
    "global_batch_size": ("batch_size", {}),
    "model_path": ("model", {}),
    "cache_dir": ("feature_cache", {None: "off"}),
}
# absl's own flags as these commands use them (--flagfile is no flag object: absl's parser reads
# it).
_GENERAL_FLAGS = (
    ("flagfile", "", "A file of flags, one per line (e.g. configs/demo.flags)"),
    ("verbosity", "0", "Log level: 0 progress, -1 warnings only, 1 also library logs"),
)


def print_error(message: str) -> None:
    """Prints `message` as one paragraph: "error: ..." wrapped at 100 columns on stderr."""
    paragraph = " ".join(str(message).split())
    # Paths and flags stay whole (copyable): no breaks at their hyphens or inside them.
    sys.stderr.write(textwrap.fill(f"error: {paragraph}", width=100, break_on_hyphens=False,
                                   break_long_words=False) + "\n")


def help_request(argv) -> str | None:
    """"short" for --help, -h, -? or --helpshort; "full" for --helpfull; else None."""
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or value.lower() in ("false", "0"):
            continue
        if name in _SHORT_HELP:
            return "short"
        if name == "helpfull":
            return "full"
    return None


def first_sentence(text: str) -> str:
    """The help text up to its first ". " or "; " outside parentheses, without that stop."""
    text = " ".join((text or "").split())
    for match in _SENTENCE_END.finditer(text):
        before = text[:match.start()]
        if before.count("(") <= before.count(")"):
            return before
    return text.rstrip(".;")


def _one_line(name: str, default: str, text: str, width: int) -> str:
    """'  --name=default   First sentence of the help', wrapped (never cut) to `width` columns;
    continuation lines are indented under the help column."""
    left = f"  --{name}" + (f"={default}" if default else "")
    left = left + "  " if len(left) >= _LEFT_COLUMN - 2 else left.ljust(_LEFT_COLUMN)
    room = max(40, width - _LEFT_COLUMN)
    lines = textwrap.wrap(first_sentence(text), width=room, break_long_words=False,
                          break_on_hyphens=False) or [""]
    # The first line starts after a long flag name; it gets the room left there.
    first_room = max(20, width - len(left))
    if len(lines[0]) > first_room:
        lines = textwrap.wrap(first_sentence(text), width=first_room, break_long_words=False,
                              break_on_hyphens=False)
        rest = textwrap.wrap(" ".join(lines[1:]), width=room, break_long_words=False,
                             break_on_hyphens=False)
        lines = [lines[0], *rest]
    indent = "\n" + " " * _LEFT_COLUMN
    return left + indent.join(lines)


def _flag_line(flag, width: int) -> str:
    default = flag.default
    if flag.boolean:
        default = "true" if default else "false"
    elif isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return _one_line(flag.name, "" if default is None else str(default), flag.help, width)


def short_help(module) -> str:
    """The module's usage paragraph, then the flags it uses one per line, its own flags first.

    One command runs per process, so the shared flags defined so far (cli.shared_flags) are exactly
    the ones this command takes.
    """
    # A terminal's width; 100 columns when piped or captured.
    width = min(shutil.get_terminal_size((100, 24)).columns, 120) if sys.stdout.isatty() else 100
    groups = {"flags": FLAGS.get_flags_for_module(module),
              "data, model and hardware flags": FLAGS.get_flags_for_module(
                  "mri_tfdata.cli.shared_flags")}
    lines = [(module.__doc__ or "").strip().split("\n\n")[0], ""]
    for title, group in groups.items():
        if group:
            lines += [f"{title}:", *(_flag_line(f, width) for f in group)]
    lines += ["general flags:", *(_one_line(*general, width) for general in _GENERAL_FLAGS)]
    lines += ["", "--helpfull lists every flag with its whole help text."]
    return "\n".join(lines) + "\n"


def full_help(module) -> str:
    return (module.__doc__ or "").strip() + "\n\n" + FLAGS.get_help() + "\n"


def _expand_flagfiles(argv: list[str]) -> list[str]:
    """argv with ~ and $VARIABLES expanded in --flagfile values (no shell does it after `=`)."""
    expanded = list(argv[:1])
    for arg in argv[1:]:
        for spelling in ("--flagfile=", "-flagfile="):
            if arg.startswith(spelling):
                arg = spelling + os.path.expandvars(os.path.expanduser(arg[len(spelling):]))
        expanded.append(arg)
    return expanded


def _unreadable_flagfile(error: flags.Error) -> str:
    """The paragraph for a --flagfile absl cannot open: the file, why, and what to pass."""
    match = re.search(r"\[Errno \d+\] ([^:]+): '(.*)'", str(error))
    reason, path = (match.group(1), match.group(2)) if match else ("cannot be read", str(error))
    where = "" if os.path.isabs(path) else f" (looked for {os.path.abspath(path)})"
    return (f"--flagfile={path}: {reason.lower()}{where}. Pass the path of an existing flags "
            "file, e.g. --flagfile=configs/demo.flags from the repository's folder.")


def parse_flags(argv: list[str], module=None) -> list[str]:
    """Parses flags like absl, but a bad flag or flagfile exits 2 with one paragraph, and --help
    and --helpfull print to stdout and exit 0."""
    wanted = help_request(argv)
    if wanted:
        module = module or sys.modules["__main__"]
        sys.stdout.write(short_help(module) if wanted == "short" else full_help(module))
        sys.exit(0)
    try:
        return FLAGS(_expand_flagfiles(argv))
    except flags.CantOpenFlagFileError as e:
        print_error(_unreadable_flagfile(e))
        sys.exit(2)
    except flags.Error as e:
        # absl's "Did you mean: epochs ?" as a sentence naming the flag.
        message = re.sub(r"Did you mean: ([\w,\s]+?) \?", lambda m: "Did you mean " + ", ".join(
            f"--{name.strip()}" for name in m.group(1).split(",")) + "?", str(e))
        message = message if message.endswith(("?", ".")) else message + "."
        print_error(f"{message} Run with --helpfull to list the flags and their accepted values.")
        sys.exit(2)


def flag_spelling(name: str, *, value=NO_VALUE, setting: str | None = None,
                  flag_values: flags.FlagValues = FLAGS) -> str:
    """A library parameter as the command line sets it: --flag=value, --flag, --noflag.

    Parameters that no flag of `flag_values` sets keep their Python spelling.
    """
    flag, values = _FLAG_OF_PARAMETER.get(name, (name, {}))
    if flag not in flag_values:
        return python_spelling(name, value=value, setting=setting)
    if setting is not None:
        try:
            value = ast.literal_eval(setting)
        except (ValueError, SyntaxError):  # A placeholder such as NAME.
            return f"--{flag}={setting}"
    if value is NO_VALUE:
        return f"--{flag}"
    try:
        value = values.get(value, value)
    except TypeError:  # Unhashable, so no value of the table.
        pass
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no{flag}"
    return f"--{flag}={shlex.quote(str(value))}"


# name=value, not inside a word, a path or a flag: the value is quoted or runs to a space, comma,
# semicolon or parenthesis (a sentence's final dot is not part of it).
_ASSIGNMENT = re.compile(
    r"(?<![\w./-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)'\"]*[^\s,;).'\"])")


def assignments_as_flags(message: str, flag_names) -> str:
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


def in_flag_terms(error: UserError, flag_values: flags.FlagValues = FLAGS) -> UserError:
    """`error` restated for a command user: the parameters its flags set named as those flags.

    A templated message is spelled field by field; a plain one has its `name=value` phrases
    rewritten (assignments_as_flags).
    """
    if error.template is None:
        message = assignments_as_flags(str(error), set(flag_values))
    else:
        message = error.spell(functools.partial(flag_spelling, flag_values=flag_values))
    restated = UserError(message)
    restated.exit_code = error.exit_code
    return restated


def run(main, *, define_flags=None) -> None:
    """Runs `main(argv)` under absl; a UserError prints its message and exits with its code.

    `define_flags`, when given, is called first: a command that defines its flags only when run
    adds none to a program that merely imports it.

    Library errors name the parameters they are about (see errors.UserError); here they name the
    flags that set them instead. The same from `python -m mri_tfdata.train` and from the
    `mri-train` console script: the help shows the flags of main's own module.
    """
    if define_flags is not None:
        define_flags()
    module = sys.modules[main.__module__]

    def guarded_main(argv):
        try:
            status = main(argv)
        except UserError as e:
            restated = in_flag_terms(e)
            print_error(str(restated))
            sys.exit(restated.exit_code)
        end_process(status)

    app.run(guarded_main, flags_parser=lambda argv: parse_flags(argv, module))


def end_process(status=None) -> None:
    """Ends a command whose main returned: flushes the output streams and the log, then exits
    without the interpreter's teardown, TensorFlow's included (over a second after a training run).

    Every file a command writes is closed, and published whole, before its main returns, so the
    teardown has nothing left to save. A worker of a multi-worker cluster (TF_CONFIG set) exits
    normally: the cluster ends through TensorFlow's shutdown barrier, which waits for every worker.
    """
    if os.environ.get("TF_CONFIG") or not isinstance(status, (int, type(None))):
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status or 0)


def require(condition: bool, message: str) -> None:
    """Raises ParameterError(message) (exit status 2) unless `condition`; for validating flag
    values in entry points, whose messages name the flags themselves."""
    if not condition:
        raise ParameterError(message)


def refuse_existing(path: pathlib.Path, flag: str) -> None:
    """Raises a UserError when `path`, set by --`flag`, exists and --overwrite is not given."""
    if path.exists() and not FLAGS.overwrite:
        raise UserError(f"--{flag}={path} already exists; pass another --{flag}, or --overwrite "
                        "to replace it.")

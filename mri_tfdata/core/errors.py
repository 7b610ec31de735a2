"""The exception types for mistakes a user can fix, shown without a traceback."""

import os
import string
from typing import Callable

# spell(name, value=...) for `{name}`, spell(name) for `{name!n}`, spell(name, setting=text) for
# `{name:text}`; returns how a message writes that parameter.
Spelling = Callable[..., str]
NO_VALUE = object()  # `value` of a parameter named alone


def python_spelling(name: str, *, value=NO_VALUE, setting: str | None = None) -> str:
    """A parameter as a Python call writes it: name='value', name, or name=setting."""
    if setting is not None:
        return f"{name}={setting}"
    if value is NO_VALUE:
        return name
    return f"{name}={str(value)!r}" if isinstance(value, os.PathLike) else f"{name}={value!r}"


class UserError(Exception):
    """A bad input or setting. The message is one paragraph naming the problem and the fix.

    A message given with keyword values is a template that names the parameters of library
    functions: `{name}` is the parameter with its value (a keyword), `{name!n}` the parameter
    alone, `{name:text}` the parameter set to `text` (a Python literal, or a placeholder such as
    NAME), and `{key!s}` a value inserted as plain text; literal braces are doubled. str() spells
    parameters as Python arguments (`cache='/x'`); an entry point whose flags set them spells them
    as flags instead (`spell`). A message given without keywords is plain text.
    """

    exit_code = 1

    def __init__(self, message: str, /, **values):
        self.template = message if values else None
        self.values = values
        super().__init__(self.spell(python_spelling))

    def spell(self, spelling: Spelling) -> str:
        """The message with every parameter written by `spelling` (see `Spelling`)."""
        if self.template is None:
            return self.args[0] if self.args else ""
        parts = []
        for literal, name, setting, conversion in string.Formatter().parse(self.template):
            parts.append(literal)
            if name is None:
                continue
            if conversion not in (None, "s", "n"):
                raise ValueError(f"{{{name}!{conversion}}}: a template field takes !s or !n")
            if conversion == "s":
                parts.append(str(self.values[name]))
            elif conversion == "n":
                parts.append(spelling(name))
            elif setting:
                parts.append(spelling(name, setting=setting))
            else:
                parts.append(spelling(name, value=self.values[name]))
        return "".join(parts)

    def renamed(self, *, also: str = "", **names: str) -> "UserError":
        """This error as a caller states it: parameters renamed (old=new), `also` appended.

        For a caller that passed its own parameter's value on under another name, e.g.
        `e.renamed(data_dir="tfds_data_dir")`. A plain-text error is returned as it is.
        """
        if self.template is None:
            return self
        parts = []
        for literal, name, setting, conversion in string.Formatter().parse(self.template):
            parts.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is not None:
                parts.append("{" + names.get(name, name) + (f"!{conversion}" if conversion else "")
                             + (f":{setting}" if setting else "") + "}")
        values = {names.get(key, key): value for key, value in self.values.items()}
        return type(self)("".join(parts) + (f" {also}" if also else ""), **values)


class ParameterError(UserError, ValueError):
    """A bad argument value, or a bad combination of them, named in the message.

    Entry points exit with status 2 for it, as for a flag absl cannot parse.
    """

    exit_code = 2

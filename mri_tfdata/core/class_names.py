"""What makes class names usable: at least two, each non-empty printable text on one line, none twice."""


def _has_control_character(name: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in name)


def problem(names, num_outputs: int | None = None) -> str | None:
    """Why `names` cannot name a classifier's classes, or None when they can.

    A newline would shift the lines of the export's class_names.txt (and so every served
    class_name after it); a repeated name would merge two outputs into one entry of a
    prediction's probabilities.

    Args:
      names: the class names, in label order.
      num_outputs: the classifier's number of outputs, when known: there must be one name each.
    """
    names = list(names)
    if num_outputs is not None and len(names) != num_outputs:
        return f"{len(names)} class names for a model with {num_outputs} outputs"
    if len(names) < 2:
        return f"class names {names!r}: a classifier needs at least 2"
    bad = [n for n in names if not n.strip() or _has_control_character(n)]
    if bad:
        return (f"class names {bad!r} are empty or hold control characters (newlines, tabs); "
                "each must be printable text on one line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"class names {repeated!r} appear more than once; each class needs its own name"
    return None

"""Where a training run's time went: its parts, from the times its log lines were written."""

import re


def _first(lines, start: int, pattern: str) -> int | None:
    """The index of the first line at or after `start` matching `pattern`, or None."""
    return next((i for i in range(start, len(lines)) if re.search(pattern, lines[i][1])), None)


def breakdown(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Seconds per part of a run, from the times its log lines were written.

    start-up: Python, TensorFlow and Keras imports, up to the precision line; opening/checking:
    building the classifier, opening the splits and checking every file, up to the first split's
    features (a run that opens its splits without decoding them decodes each file in
    extraction, so its opening is header checks only); extraction: every "Features of ..." block
    up to its cache write (the backbone passes); head epochs: from the last features before the
    first epoch to the last epoch's summary; saving: calibration, model.keras, history plot, up
    to the test split's features or, when every split's features came before the epochs, the
    "Saved the model" line; evaluation: checking the saved model, the metrics, up to the
    accuracy line;
    reports: the run report, up to "Finished"; exit: interpreter shutdown.
    """
    times = [t for t, _ in lines]
    parts = {}
    started = _first(lines, 0, r"^Precision: ")
    first_features = _first(lines, 0, r"^Features of ")
    first_epoch = _first(lines, 0, r"^Epoch 1/")
    finished = _first(lines, 0, r"^Finished in ")
    if None in (started, first_features, first_epoch, finished):
        return parts
    parts["start-up"] = times[started]
    parts["opening/checking"] = times[first_features] - times[started]
    extraction, blocks, i = 0.0, [], first_features
    while i is not None:
        end = _first(lines, i + 1, r"^(Wrote feature cache|Features of |Epoch 1/|Extracted )")
        if end is not None and lines[end][1].startswith("Extracted "):
            after = _first(lines, end + 1, r"^(Wrote feature cache|Features of |Epoch 1/)")
            if after is not None and lines[after][1].startswith("Wrote feature cache"):
                end = after
        end = end if end is not None and not re.match(r"^(Features of |Epoch 1/)",
                                                      lines[end][1]) else i
        blocks.append((i, end))
        extraction += times[end] - times[i]
        i = _first(lines, end + 1, r"^Features of ")
    parts["extraction"] = extraction
    head_start = max(end for _, end in blocks if end < first_epoch)
    last_epoch = max(i for i, (_, line) in enumerate(lines) if re.search(r"/step - .*loss", line))
    parts["head epochs"] = times[last_epoch] - times[head_start]
    test = next(((i, end) for i, end in blocks if i > last_epoch), None)
    saved = _first(lines, last_epoch, r"^Saved the model in ")
    accuracy = _first(lines, last_epoch, r": accuracy .* on \d+ images\.")
    if test is not None and accuracy is not None:
        parts["saving"] = times[test[0]] - times[last_epoch]
        parts["evaluation"] = times[accuracy] - times[test[1]]
        parts["reports"] = times[finished] - times[accuracy]
    elif saved is not None and accuracy is not None:  # every split's features came first
        parts["saving"] = times[saved] - times[last_epoch]
        parts["evaluation"] = times[accuracy] - times[saved]
        parts["reports"] = times[finished] - times[accuracy]
    else:
        parts["saving, evaluation, reports"] = times[finished] - times[last_epoch]
    parts["exit"] = wall - times[finished]
    return {name: round(seconds, 2) for name, seconds in parts.items()}

"""Per-series verdicts from per-slice predictions: the class of highest mean probability, and votes.

A series is the slices that share a key (DICOM's SeriesInstanceUID, else their folder: the
caller decides). Its class is the one with the highest probability averaged over its readable
slices; the votes count, per class, the slices whose own prediction it is. Slices that could not
be read are counted, not averaged.
"""

from collections.abc import Callable, Iterable, Sequence

import numpy as np


def summarize(results: Iterable[dict], series_of: Callable[[str], str],
              class_names: Sequence[str]) -> list[dict]:
    """One summary per series, in the order the series first appear in `results`.

    Args:
      results: per-slice results as mri-predict gives them: {"file", "probabilities": {class:
        p}} for a classified slice, {"file", "error"} for one that could not be read.
      series_of: the series key of a result's "file".
      class_names: the classes, in the model's order.

    Returns:
      Dicts {"series", "slices" (classified), "unreadable", "class", "mean_probabilities":
      {class: p}, "votes": {class: slices}}; "class" is None and the means are absent for a
      series with no readable slice.
    """
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(series_of(result["file"]), []).append(result)
    summaries = []
    for key, members in groups.items():
        classified = [r for r in members if "probabilities" in r]
        summary = {"series": key, "slices": len(classified),
                   "unreadable": len(members) - len(classified), "class": None,
                   "votes": {name: 0 for name in class_names}}
        if classified:
            probabilities = np.array([[r["probabilities"][n] for n in class_names]
                                      for r in classified], np.float64)
            mean = probabilities.mean(axis=0)
            summary["class"] = class_names[int(np.argmax(mean))]
            summary["mean_probabilities"] = {n: round(float(p), 6)
                                             for n, p in zip(class_names, mean)}
            for index in probabilities.argmax(axis=1):
                summary["votes"][class_names[int(index)]] += 1
        summaries.append(summary)
    return summaries


def to_csv_rows(summaries: Sequence[dict], class_names: Sequence[str]) -> list[list]:
    """The summaries as CSV rows, header first: series, slices, unreadable, class, then a
    mean_<class> and a votes_<class> column per class."""
    rows = [["series", "slices", "unreadable", "class", *(f"mean_{n}" for n in class_names),
             *(f"votes_{n}" for n in class_names)]]
    for s in summaries:
        means = s.get("mean_probabilities", {})
        rows.append([s["series"], s["slices"], s["unreadable"], s["class"] or "",
                     *(means.get(n, "") for n in class_names),
                     *(s["votes"][n] for n in class_names)])
    return rows

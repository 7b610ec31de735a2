"""report.html: one self-contained page (a model card) of a run's evidence, for screen and print."""

import datetime
import html
import pathlib

from absl import logging

from mri_tfdata.core import atomic
from mri_tfdata.evaluation import report_results, report_sections, run_evidence

REPORT_FILE = "report.html"

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       max-width: 62rem; margin: 0 auto; padding: 0.8rem; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; } h2 { font-size: 1.2rem; margin: 1.4rem 0 0.4rem;
     border-bottom: 1px solid #ccc; } h3 { font-size: 1rem; margin: 0.8rem 0 0.3rem; }
p, li { margin: 0.25rem 0; } .muted { color: #555; } .absent { color: #555; font-style: italic; }
.warn { border-left: 4px solid #b35900; background: #fff4e5; padding: 0.3rem 0.6rem; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; margin: 0.3rem 0; }
th, td { border: 1px solid #ccc; padding: 0.15rem 0.45rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { font-size: 0.8em; color: #555; }
figure { margin: 0.5rem 0; display: inline-block; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; height: auto; display: block; } figcaption { font-size: 0.85rem; }
.figs figure { width: 32%; min-width: 16rem; } pre { white-space: pre-wrap; font-size: 0.8rem;
     background: #f6f6f6; padding: 0.4rem; margin: 0.3rem 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 0.8rem; margin: 0.3rem 0; }
pre.flags { columns: 17rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 40rem) { body { font-size: 14px; padding: 0.4rem; }
  .figs figure { width: 100%; min-width: 0; } dl { grid-template-columns: 1fr; } }
@media print { body { max-width: none; font-size: 10pt; padding: 0; }
  h2 { break-after: avoid; } figure, table, .warn, dl { break-inside: avoid; }
  .figs figure { width: 32%; min-width: 0; } pre { font-size: 7.5pt; }
  .warn { background: none; } .scroll { overflow: visible; } a { color: inherit; text-decoration: none; } }
"""


def _summary(evidence: run_evidence.Evidence) -> str:
    metrics = evidence.metrics
    if not metrics:
        return '<p class="absent">No metrics.json: this run has no evaluation.</p>'
    interval = ((metrics.get("intervals") or {}).get("accuracy"))
    return (f"<p>Accuracy <strong>{report_sections.number(metrics.get('accuracy'))}</strong>"
            f"{report_sections.interval_text(interval, metrics.get('intervals'))} on "
            f"{html.escape(str(metrics.get('num_examples', '?')))} images of split "
            f"<code>{html.escape(str(metrics.get('split', '?')))}</code>.</p>")


def build_html(evidence: run_evidence.Evidence, *, title: str) -> str:
    """The whole page: a header, the model card's sections, then the results'."""
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections = (*report_sections.SECTIONS, *report_results.SECTIONS)
    body = "\n".join(section(evidence) for section in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="muted">Generated {generated} from '
        f"{html.escape(', '.join(str(f) for f in evidence.folders))}.</p>\n"
        f"{_summary(evidence)}\n{body}\n</body>\n</html>\n")


def write_report(out_dir) -> pathlib.Path:
    """Writes out_dir/report.html from the files a run or an evaluation left in out_dir.

    Args:
      out_dir: a training workdir, or mri-evaluate's --out (the training workdir beside the model
        named in its metrics.json supplies the run's record, flags and curves).

    Returns:
      The path written.

    Raises:
      DiskError: the file could not be written (nothing is left behind).
    """
    out_dir = pathlib.Path(out_dir)
    evidence = run_evidence.gather(out_dir)
    title = f"Run report: {out_dir.resolve().name}"
    return atomic.write_atomic(out_dir / REPORT_FILE, build_html(evidence, title=title))


def write_report_or_warn(out_dir) -> pathlib.Path | None:
    """write_report, called after every other output: a failure is one warning, never a failure
    of the run, whose results are already on disk.

    Returns:
      The path written, or None when the report could not be written (the warning says why).
    """
    path = pathlib.Path(out_dir) / REPORT_FILE
    try:
        return write_report(out_dir)
    except Exception as e:  # noqa: BLE001 -- The report is a summary of files already written.
        logging.warning("Could not write %s (%s: %s); the run's other outputs are complete.",
                        path, type(e).__name__, e)
        return None

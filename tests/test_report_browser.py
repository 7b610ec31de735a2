"""report.html in a real browser (headless Chromium): every image loads, a phone fits, it prints."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import run_folders
from PIL import Image

from mri_tfdata.evaluation import run_evidence, run_report

pytestmark = pytest.mark.integration

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs "
                "it), so report.html cannot be rendered.", allow_module_level=True)

# Test-only probe, appended to a copy of the report (the report itself has no script): after the
# load event it records on <body> how many images there are, how many decoded, and whether the
# page is wider than the window.
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const body = document.body;
  body.dataset.images = images.length;
  body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  body.dataset.overflow = document.documentElement.scrollWidth - window.innerWidth;
});
</script>"""


def _chromium(tmp_path, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=timeout, check=True)


def _probe(tmp_path, page: str, width: int) -> dict:
    probe = tmp_path / f"probe-{width}.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, f"--window-size={width},900", "--virtual-time-budget=10000",
                    "--dump-dom", probe.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(-?\d+)"', body)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = run_folders.write_run(tmp_path_factory.mktemp("browser") / "run")
    return run_report.write_report(folder)


def test_every_image_decodes_in_the_browser_and_a_broken_one_is_caught(report, tmp_path):
    page = report.read_text()
    assert _probe(tmp_path, page, 1200) == {"images": len(run_evidence.PLOTS),
                                            "decoded": len(run_evidence.PLOTS),
                                            "overflow": 0}
    # The probe does see a broken image: one PNG whose signature is damaged does not decode.
    # (Chromium draws a PNG cut short as far as it goes; the Pillow check in test_run_report
    # catches those.)
    prefix = "data:image/png;base64,"
    uri = re.search(f'src="({prefix}[^"]*)"', page).group(1)
    broken = page.replace(uri, prefix + "AAAA" + uri[len(prefix) + 4:], 1)
    assert _probe(tmp_path, broken, 1200)["decoded"] == len(run_evidence.PLOTS) - 1


def test_on_a_phone_the_page_is_no_wider_than_the_screen(report, tmp_path):
    assert _probe(tmp_path, report.read_text(), 390)["overflow"] == 0


def test_the_screenshot_shows_the_page_and_it_prints(report, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels < 200).any(axis=2)
    assert 0.01 < ink.mean() < 0.5  # Text and tables drawn, not a blank (or black) page.
    pdf = tmp_path / "report.pdf"
    _chromium(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", report.as_uri())
    content = pdf.read_bytes()
    pages = len(re.findall(rb"/Type\s*/Page[^s]", content))
    assert content.startswith(b"%PDF") and 2 <= pages <= 8, pages
    assert len(content) > sum(len(run_folders.png("navy")) for _ in run_evidence.PLOTS)


def test_the_probe_sees_images_that_do_not_load_and_pages_that_overflow(tmp_path):
    # Guards the checks above: the same probe on a page with both faults reports them.
    page = ('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
            '<img src="missing.png"><div style="width: 1500px">wide</div></body></html>')
    found = _probe(tmp_path, page, 800)
    assert found["images"] == 2 and found["decoded"] == 0 and found["overflow"] >= 700

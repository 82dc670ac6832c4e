"""The HTML report in a real headless browser: every figure decodes and is visible."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess

import pytest

from analysis import report
from tests.study_factory import make_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the report: records, once the page has loaded, what the browser
# made of every image. The report itself has no script.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(img => {
    const r = img.getBoundingClientRect(), st = getComputedStyle(img);
    return {alt: img.alt, complete: img.complete, nw: img.naturalWidth, nh: img.naturalHeight,
            w: r.width, h: r.height, shown: st.display !== "none" && st.visibility !== "hidden"};
  });
  document.body.setAttribute("data-probe", JSON.stringify(
    {images, page: document.documentElement.clientWidth}));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                    "chromium); .ci/run installs it")
def test_every_figure_renders_in_a_headless_browser(tmp_path):
    study = make_study(tmp_path, "browser", methods=("slimming",), ok=6, failed=1, running=1)
    page = report.write_report([study], tmp_path / "out")
    text = page.read_text()
    expected = re.findall(r'<img src="data:image/png;base64,[^"]+"[^>]*alt="([^"]*)"', text)
    assert len(expected) >= 5  # fronts, hypervolume, parameters, channels, curves, gammas
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', run.stdout)
    assert found, f"no probe result; chromium said: {run.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    images = result["images"]
    assert [i["alt"] for i in images] == [html.unescape(a) for a in expected]
    sizes = {p.name: struct.unpack(">II", p.read_bytes()[16:24])
             for p in (tmp_path / "out").glob("*.png")}
    assert sorted((i["nw"], i["nh"]) for i in images) == sorted(sizes.values())
    for img in images:
        assert img["complete"] and img["nw"] > 0 and img["nh"] > 0, img  # decoded
        assert img["shown"] and img["w"] > 100 and img["h"] > 100, img  # laid out, visible
        assert img["w"] <= result["page"], img  # fits the window: no sideways scrolling

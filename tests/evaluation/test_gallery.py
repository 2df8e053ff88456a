"""The sweep gallery (vidgen/evaluation/gallery.py): the page's grid and relative links, and,
in headless Chromium (Debian's `chromium` driven by playwright), every <video> of it loads and
decodes our h264 mp4s from the file system. Set VIDGEN_NO_BROWSER=1 to skip the browser test
on a machine without Chromium; without that variable a missing browser fails the test."""

import os
import re

import numpy as np
import pytest

from vidgen.evaluation import gallery
from vidgen.io.video import write_video

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
FRAMES, HEIGHT, WIDTH, FPS = 9, 48, 64, 8.0
PROMPTS = ["a red ball moves <left> & down", "a blue square grows"]


def _clip(row: int, column: int) -> np.ndarray:
    """A square crossing the frame, its colour set by (row, column)."""
    video = np.full((FRAMES, HEIGHT, WIDTH, 3), 30 * column, np.uint8)
    for t in range(FRAMES):
        video[t, 16:32, 4 * t:4 * t + 16] = (200, 60 * row, 40)
    return video


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A 2-prompt x 3-column gallery with one empty slot, videos in a subfolder."""
    out = tmp_path_factory.mktemp("gallery")
    columns = []
    for c in range(3):
        slots = []
        for r in range(len(PROMPTS)):
            if (r, c) == (1, 2):
                slots.append(None)
                continue
            path = os.path.join("cells", f"cell {c}", f"{r:03d}.mp4")   # a space to quote
            os.makedirs(out / os.path.dirname(path), exist_ok=True)
            write_video(out / path, _clip(r, c), FPS)
            slots.append(gallery.Slot(path, gallery.format_metrics(
                {"temporal_consistency": 0.9 + r / 100, "grader": "3/4"},
                ("temporal_consistency", "grader"))))
        columns.append(gallery.Column(f"step {c}", gallery.format_metrics(
            {"fvd": 12.3456 * c, "grader_overall": float("nan")}, ("fvd", "grader_overall")),
            slots))
    gallery.write(str(out / "gallery.html"), "sweep <test>", ["a note"], PROMPTS, columns)
    return out


def test_page_is_the_grid_with_relative_escaped_links(page):
    text = (page / "gallery.html").read_text()
    sources = re.findall(r'<video src="([^"]+)"', text)
    assert sources == ["cells/cell%200/000.mp4", "cells/cell%201/000.mp4",
                       "cells/cell%202/000.mp4", "cells/cell%200/001.mp4",
                       "cells/cell%201/001.mp4"]          # row-major, the empty slot left out
    assert "a red ball moves &lt;left&gt; &amp; down" in text and "<left>" not in text
    assert "fvd 24.69" in text and "grader_overall" not in text      # NaN metrics are left out
    assert "temporal_consistency 0.91\ngrader 3/4" in text
    with pytest.raises(ValueError, match="relative"):
        gallery.write(str(page / "bad.html"), "t", [], ["p"],
                      [gallery.Column("c", [], [gallery.Slot(str(page / "x.mp4"))])])


def test_every_video_loads_in_chromium(page):
    if os.environ.get("VIDGEN_NO_BROWSER") == "1":
        pytest.skip("VIDGEN_NO_BROWSER=1")
    assert os.path.exists(CHROMIUM), ("no Chromium: apt-get install -y chromium "
                                      "(or set VIDGEN_NO_BROWSER=1 to skip this test)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 900, "height": 500})
            tab.goto((page / "gallery.html").as_uri())
            tab.wait_for_function("[...document.querySelectorAll('video')].every("
                                  "v => v.readyState >= 2 || v.error)", timeout=20_000)
            videos = tab.evaluate("[...document.querySelectorAll('video')].map(v => ({"
                                  "src: v.currentSrc, ready: v.readyState, error: v.error && "
                                  "v.error.code, width: v.videoWidth, height: v.videoHeight, "
                                  "duration: v.duration}))")
            tab.screenshot(path=str(page / "gallery.png"), full_page=True)
        finally:
            browser.close()
    print(f"chromium: {videos[0]}; screenshot {page / 'gallery.png'}")
    assert len(videos) == 5
    for v in videos:
        assert v["error"] is None and v["ready"] >= 2, v
        assert (v["width"], v["height"]) == (WIDTH, HEIGHT), v
        assert v["duration"] == pytest.approx(FRAMES / FPS, abs=0.2), v
    assert (page / "gallery.png").stat().st_size > 1000

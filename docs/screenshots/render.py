"""Render HTML pages to PNGs with headless Chromium at a fixed window width, and fail on any page that is wider
than the window (a reader would have to scroll sideways). `make screenshots` runs it on a demo run's
report.html and on runs.html.

    python docs/screenshots/render.py --out docs/screenshots --width 1280 PAGE.html [PAGE.html ...]

Each PAGE.html becomes OUT/<its name>.png (report.html -> report.png): the top --height px of the page (all of
it when shorter); the width check covers the whole page.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Appended to a copy of the page: after load, it writes the page's size and the elements that reach past the
# window's right edge into an attribute that --dump-dom prints.
MEASURE = """<script>window.addEventListener("load", function () {
  var root = document.documentElement, wide = [];
  document.querySelectorAll("body *").forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.right > window.innerWidth + 1) wide.push(e.tagName.toLowerCase() + " " + Math.round(r.right) + "px");
  });
  root.setAttribute("data-measured", root.scrollWidth + " " + root.scrollHeight + " " + wide.slice(0, 5).join(";"));
});</script>"""


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"no headless browser found ({', '.join(BROWSERS)}); `make screenshots` installs chromium with apt")


def chromium(binary: str, width: int, height: int, *args: str) -> subprocess.CompletedProcess:
    # root (a container) cannot use Chromium's sandbox; the pages are our own files
    flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--window-size={width},{height}", "--virtual-time-budget=5000",
             *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    result = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"{binary} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def measure(binary: str, page: Path, width: int) -> tuple[int, int, str]:
    """(scroll width, scroll height, elements past the right edge) of `page` in a window `width` px wide."""
    # the copy sits beside the page so that its relative images load and take their place in the layout
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=page.parent, delete=False, encoding="utf-8") as copy:
        copy.write(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"))
    try:
        dom = chromium(binary, width, 800, "--dump-dom", Path(copy.name).as_uri()).stdout
    finally:
        os.unlink(copy.name)
    found = re.search(r'data-measured="(\d+) (\d+) ?([^"]*)"', dom)
    if not found:
        raise SystemExit(f"could not measure {page}: the page's script did not run")
    return int(found.group(1)), int(found.group(2)), found.group(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000, help="the most of a page's height to show")
    args = parser.parse_args(argv)
    binary = browser()
    args.out.mkdir(parents=True, exist_ok=True)
    too_wide = []
    for page in args.pages:
        page = page.resolve()
        if not page.is_file():
            raise SystemExit(f"{page} does not exist; run `make demo` and `make compare` first")
        width, height, wide = measure(binary, page, args.width)
        png = args.out / f"{page.stem}.png"
        chromium(binary, args.width, min(height, args.height), f"--screenshot={png.resolve()}", page.as_uri())
        with Image.open(png) as image:  # Chromium writes unoptimised PNGs; these go into the repository
            image.load()
        image.save(png, optimize=True)
        print(f"{png}: {page} at {args.width} px wide, page {width} x {height} px")
        if width > args.width:
            too_wide.append(f"{page}: {width} px wide in a {args.width} px window ({wide or 'no single element'})")
    if too_wide:
        print("\n".join(["pages wider than the window:", *too_wide]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

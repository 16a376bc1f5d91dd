"""docs/report.png: the HTML audit report of the quickstart, as headless Chromium shows it.

    .venv/bin/python benchmarks/screenshot_report.py docs/report.png   (make screenshot)

Runs examples/quickstart.yml in a scratch home (the mock agent: retries and three
dead-lettered items), renders `engine audit report --format html`, opens it,
opens a retried item's details in the item table, and captures the page.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.browser import Browser, find_chromium  # noqa: E402


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: screenshot_report.py OUT.png", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    if find_chromium() is None:
        print("chromium is not installed: `make browser` installs it", file=sys.stderr)
        return 2
    engine = str(Path(sys.executable).with_name("engine"))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        home = str(tmp / "home")
        subprocess.run(
            [engine, "--home", home, "run", str(ROOT / "examples/quickstart.yml")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            check=False,  # the quickstart ends with items in the DLQ: exit code 1
        )
        page_path = tmp / "report.html"
        report = ["audit", "report", "latest", "--format", "html", "-o", str(page_path)]
        subprocess.run([engine, "--home", home, *report], check=True)
        with Browser(tmp, width=1200, height=1500) as browser:
            page = browser.open(page_path)
            page.click("#items-table th[data-key=attempts]")
            page.click("#items-table th[data-key=attempts]")  # the most attempts first
            page.click("#items-table tr.item-row", 3)
            page.js("document.getElementById('items-section').scrollIntoView()")
            page.screenshot(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the studio's pages in light and dark, on a desktop (1366×768) and a phone (390×844).

Run from the project root: .venv/bin/python bench/screenshots.py [--pages gallery,public] [--themes dark]
(or bench/lighthouse.py --screenshots, which takes them from the same server).

Uses bench/lighthouse.py's studio: its own database and media, gunicorn with production settings,
signed in through the login form. Saves the viewport only, as JPEG (quality 70) to keep the
committed files small, to bench/screenshots/<page>-<theme>-<desktop|phone>.jpg.
"""

import argparse
from pathlib import Path

from lighthouse import CHROMIUM, CHROMIUM_FLAGS, THEMES, Studio, studio

FOLDER = Path(__file__).resolve().parent / "screenshots"
DEVICES = {
    "desktop": {"viewport": {"width": 1366, "height": 768}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
              "has_touch": True},
}


def capture(site: Studio, themes: list[str], pages: list[str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    FOLDER.mkdir(exist_ok=True)
    saved = []
    host = site.base.split("//")[1].split(":")[0]
    with sync_playwright() as playwright:
        flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--headless")]  # Playwright adds its own
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            for theme in themes:
                for device, options in DEVICES.items():
                    context = browser.new_context(color_scheme=theme, **options)
                    page = context.new_page()
                    for name in pages or site.pages:
                        context.clear_cookies()
                        context.add_cookies([{"name": cookie, "value": value, "domain": host, "path": "/"}
                                             for cookie, value in site.cookies_for(name, theme).items()])
                        page.goto(site.base + site.pages[name], wait_until="networkidle")
                        path = FOLDER / f"{name}-{theme}-{device}.jpg"
                        page.screenshot(path=path, type="jpeg", quality=70)
                        saved.append(path)
                    context.close()
        finally:
            browser.close()
    print(f"{len(saved)} screenshots in {FOLDER.relative_to(FOLDER.parent.parent)}/")
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", help="comma-separated page names; all by default")
    parser.add_argument("--themes", default=",".join(THEMES))
    options = parser.parse_args()
    with studio() as site:
        capture(site, options.themes.split(","), options.pages.split(",") if options.pages else None)


if __name__ == "__main__":
    main()

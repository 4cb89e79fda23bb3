"""Open the built site's pages in headless Chromium and report what a reader's browser sees.

The browser is driven through the Chrome DevTools Protocol over a WebSocket
(``websocket-client``), with Debian's ``chromium`` package; nothing is downloaded.

Usage: python tests/chromium.py _build/html   (prints one line per page and width)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DESKTOP = (1280, 900)
PHONE = (390, 844)
# URL schemes a page may load from without leaving this machine.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
_REFRESH = re.compile(r"<meta[^>]+http-equiv=[\"']?refresh", re.IGNORECASE)


def find_browser() -> str | None:
    """Path of a Chromium-family browser: $CHROMIUM, or the first of BROWSERS on the PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def site_pages(site: Path) -> list[Path]:
    """Every page of the site (themes copy their Jinja templates into _static/: not pages)."""
    return [p for p in sorted(site.rglob("*.html")) if "_static" not in p.relative_to(site).parts]


@dataclasses.dataclass
class PageReport:
    """What loading one page produced."""

    page: str
    width: int
    errors: list[str]  # uncaught exceptions, console.error, failed loads
    remote: list[str]  # URLs requested from another host
    math_elements: int  # Sphinx math spans/divs
    math_unrendered: list[str]  # math elements without a MathJax SVG (their TeX)
    math_errors: list[str]  # MathJax error nodes (undefined macros, ...)
    raw_tex: list[str]  # TeX delimiters left in the text outside code
    images: int
    broken_images: list[str]
    cut_formulas: list[str]  # formulas clipped by a box that does not scroll
    needless_scroll: list[str]  # inline formulas that scroll although they fit their column
    page_overflow: int  # pixels the page is wider than the window

    def problems(self) -> list[str]:
        found = [f"console: {e}" for e in self.errors]
        found += [f"loads from another host: {u}" for u in self.remote]
        found += [f"math not rendered: {t}" for t in self.math_unrendered]
        found += [f"MathJax error: {t}" for t in self.math_errors]
        found += [f"raw TeX in the text: {t}" for t in self.raw_tex]
        found += [f"image not loaded: {s}" for s in self.broken_images]
        found += [f"formula cut off at {self.width} px: {t}" for t in self.cut_formulas]
        found += [f"formula scrolls although it fits at {self.width} px: {t}" for t in self.needless_scroll]
        if self.page_overflow > 0:
            found.append(f"page {self.page_overflow} px wider than a {self.width} px window")
        return found


# Runs in the page once MathJax has finished typesetting.
_INSPECT = r"""
(() => {
  const short = (s) => (s || "").replace(/\s+/g, " ").trim().slice(0, 90);
  const math = [...document.querySelectorAll("span.math, div.math")];
  const unrendered = math.filter((m) => !m.querySelector("mjx-container svg"))
    .map((m) => short(m.textContent));
  // MathJax errors, and undefined macros (MathJax's noundefined extension draws them in red).
  const merrors = [...document.querySelectorAll("mjx-merror, [data-mjx-error]")]
    .map((e) => short(e.getAttribute("data-mjx-error") || e.textContent))
    .concat([...document.querySelectorAll('g[data-mml-node="mtext"][fill="red"]')].map((e) => {
      const mml = e.closest("mjx-container").querySelector("mjx-assistive-mml");
      return short("undefined: " + (mml ? mml.textContent : ""));
    }));
  // Text a reader sees, without code, where TeX delimiters are legitimate.
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .math, textarea")
    .forEach((e) => e.remove());
  const text = clone.textContent;
  const raw = [];
  for (const pattern of [/\$\$/g, /\\\(/g, /\\\[/g, /\\begin\{/g, /(^|[^\\\w])\$[^\s$][^$\n]{0,80}\$/g]) {
    for (const m of text.matchAll(pattern)) {
      raw.push(short(text.slice(Math.max(0, m.index - 30), m.index + 40)));
    }
  }
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute("src"));
  // A formula is cut off when an ancestor that clips (overflow hidden/clip) hides part of it
  // before any ancestor that scrolls (overflow auto/scroll) lets the reader reach it.
  const cut = [];
  for (const c of document.querySelectorAll("mjx-container")) {
    const r = c.getBoundingClientRect();
    if (r.width === 0) continue;
    for (let a = c; a && a !== document.documentElement; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === "auto" || ox === "scroll") break;
      if (ox === "hidden" || ox === "clip") {
        const b = a.getBoundingClientRect();
        if (r.right > b.right + 1 || r.left < b.left - 1) {
          const math = c.closest(".math");
          const tex = math ? math.textContent : c.getAttribute("aria-label") || "";
          const box = a.className ? "." + String(a.className).split(" ")[0] : a.tagName.toLowerCase();
          cut.push(short(`${Math.round(r.right - b.right)} px beyond ${box}: ${tex}`));
        }
        break;
      }
    }
  }
  const needless = [...document.querySelectorAll("span.math")].filter((m) => {
    const svg = m.querySelector("svg");
    return svg && m.scrollWidth > m.clientWidth && svg.getBoundingClientRect().width <= m.clientWidth + 1;
  }).map((m) => short(`${m.scrollWidth - m.clientWidth} px: ${m.textContent}`));
  const overflow = document.documentElement.scrollWidth - window.innerWidth;
  return {
    math: math.length, unrendered, merrors, raw, images: images.length, broken, cut, needless, overflow,
  };
})()
"""


class Chromium:
    """One headless Chromium with one tab, driven through the DevTools protocol."""

    def __init__(self, binary: str, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="gradlab-chromium-")
        self._process = subprocess.Popen(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files", "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._id = 0
        self._events: list[dict] = []
        try:
            port = self._wait_for_port()
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(t for t in targets if t.get("type") == "page")
            self._ws = websocket.create_connection(
                page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True
            )
            for domain in ("Page", "Runtime", "Network", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self) -> int:
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode}")
            if port_file.is_file() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def _wait_event(self, name: str, count: int = 1) -> None:
        """Wait until ``count`` events called ``name`` have arrived since the events were cleared."""
        deadline = time.monotonic() + self.timeout
        while sum(e.get("method") == name for e in self._events) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} within {self.timeout} s")
            self._events.append(json.loads(self._ws.recv()))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating in the page failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def inspect(self, page: Path, site: Path, width: int, height: int) -> PageReport:
        """Load ``page`` at the given window size, wait for MathJax, and inspect it."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=width < 600)
        # Every page as on a first visit: the theme keeps its light/dark mode in localStorage.
        self.evaluate("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}; true")
        self._events.clear()
        self.call("Page.navigate", url=page.resolve().as_uri())
        # A redirect page (the site's root index.html) loads twice: itself, then its target.
        redirect = _REFRESH.search(page.read_text(encoding="utf-8", errors="replace")[:2000])
        self._wait_event("Page.loadEventFired", count=2 if redirect else 1)
        self.evaluate("(window.MathJax && MathJax.startup && MathJax.startup.promise)"
                      " ? MathJax.startup.promise.then(() => true) : true")
        self.evaluate("new Promise((done) => setTimeout(() => done(true), 100))")  # late scripts
        found = self.evaluate(_INSPECT)
        return PageReport(
            page=page.relative_to(site).as_posix(),
            width=width,
            errors=self._errors(),
            remote=sorted({
                e["params"]["request"]["url"] for e in self._events
                if e.get("method") == "Network.requestWillBeSent"
                and not e["params"]["request"]["url"].startswith(LOCAL_SCHEMES)
            }),
            math_elements=found["math"],
            math_unrendered=found["unrendered"],
            math_errors=found["merrors"],
            raw_tex=found["raw"],
            images=found["images"],
            broken_images=found["broken"],
            cut_formulas=found["cut"],
            needless_scroll=found["needless"],
            page_overflow=found["overflow"],
        )

    def _errors(self) -> list[str]:
        errors = []
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text", "")
                errors.append(f"{text.splitlines()[0] if text else 'exception'} "
                              f"({details.get('url', '')}:{details.get('lineNumber', 0) + 1})")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                errors.append(f"failed to load ({params.get('errorText', '')})")
        return errors

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    site = Path(argv[1])
    binary = find_browser()
    if binary is None:
        print("no Chromium found (apt-get install chromium)")
        return 2
    failed = 0
    with Chromium(binary) as browser:
        for page in site_pages(site):
            for width, height in (DESKTOP, PHONE):
                report = browser.inspect(page, site, width, height)
                problems = report.problems()
                failed += bool(problems)
                print(f"{report.page:<32} {width:>5} px  math {report.math_elements:>4}  "
                      f"images {report.images:>3}  {'ok' if not problems else 'FAIL'}")
                for problem in problems:
                    print(f"    {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

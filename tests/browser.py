"""Open an HTML page in headless Chromium and report which images failed to load and which errors occurred.

Chromium comes from Debian's ``chromium`` package. If it is missing, :func:`find_chromium` installs it
with apt-get where that is possible (root on Debian) and otherwise returns None with the reason, so
tests can skip with a clear message.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]

_PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var out = document.createElement('pre');
  out.id = '__flowood_check';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors});
  document.body.appendChild(out);
});
</script>
"""


@functools.lru_cache(maxsize=1)
def find_chromium() -> tuple[str | None, str]:
    """(path, "") if Chromium is available or could be installed, else (None, reason).

    The install is tried once per test session and given at most a few minutes, so a machine without
    access to Debian's mirrors skips the browser tests instead of hanging.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path, ""
    if not shutil.which("apt-get"):
        return None, "Chromium is not installed and this is not a Debian system (install Debian's chromium package)"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "Chromium is not installed; run: sudo apt-get install chromium"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    detail = ""
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            return None, f"installing Debian's chromium timed out ({' '.join(cmd)}); no access to the mirrors?"
        detail = result.stderr.strip()[-200:]
        if cmd[1] == "install" and result.returncode == 0 and shutil.which("chromium"):
            return shutil.which("chromium"), ""
    return None, f"could not install Debian's chromium package: {detail}"


def check_page(chromium: str, page: Path) -> dict:
    """Load ``page`` (with a probe script added to a copy) and return ``{"images", "broken", "errors"}``."""
    html = page.read_text(encoding="utf-8")
    probed = re.sub(r"</head>", _PROBE + "</head>", html, count=1) if "</head>" in html else _PROBE + html
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(page.parent) / f".probe-{page.name}"
        copy.write_text(probed, encoding="utf-8")
        try:
            result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}", "--dump-dom", copy.as_uri()],
                                    capture_output=True, text=True, timeout=120)
        finally:
            copy.unlink(missing_ok=True)
    match = re.search(r'<pre id="__flowood_check">(.*?)</pre>', result.stdout, re.S)
    if not match:
        raise AssertionError(f"the page did not finish loading in Chromium: {result.stderr[-500:]}")
    text = match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text)

"""Self-contained HTML pages: one stylesheet and PNGs embedded as data URIs, so a page works offline (tables come
from :mod:`flowood.tables`)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

__all__ = ["STYLE", "embed_png", "figure", "page"]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left} .best{font-weight:bold;background:#e8f4e8}
.bad{color:#a33} figure{display:inline-block;margin:.4em;vertical-align:top;max-width:48%}
figcaption{font-size:.85em;color:#555}
figure.wide{max-width:100%} img{max-width:100%} .note{color:#555;font-size:.9em}
"""


def embed_png(path: Path, alt: str) -> str:
    """An <img> whose PNG is inside the page."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def figure(path: Path, caption: str, wide: bool = False) -> str:
    """A captioned, embedded figure."""
    cls = " class='wide'" if wide else ""
    return f"<figure{cls}>{embed_png(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def page(title: str, body: list[str]) -> str:
    """A complete HTML document."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>")

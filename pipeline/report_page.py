"""The report's HTML: one static page, inline CSS and script, figures as PNG files beside it.

Nothing is loaded from the network: the Content-Security-Policy allows only the page's own inline
style and script and images from local files, so a stray external address would not load at all.
The page's only script (a) fills in the config name from the path it was opened by
(`runs/<config>/report/report.html`): a store entry is shared by every config with the same values,
so the name cannot be written into the entry itself; and (b) writes, once the page has loaded,
whether every figure loaded (`#page-status`, data-state ok/error), which the tests read back.
"""
from __future__ import annotations

import html
import json
from typing import Any, Iterable, Sequence

TEXT = ' class="text"'  # left-aligned cell
CSP = ("default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1320px; padding: 0 1.5em 2em;
       color: #1b1f24; line-height: 1.45; }
header { border-bottom: 2px solid #d0d7de; margin-bottom: 1em; }
h1 { margin: 0.6em 0 0.2em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.6em; }
.headline { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 0.8em 0 1em; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 0.9em; background: #f6f8fa; }
.card .label { font-size: 0.8em; color: #57606a; }
.card .value { font-size: 1.25em; font-weight: 600; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f8fa; }
td.text, th.text { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
pre, code { font-family: ui-monospace, monospace; font-size: 0.9em; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 0.8em; overflow-x: auto; }
.note { color: #57606a; }
footer { margin-top: 2em; font-size: 0.85em; color: #57606a; }
"""

SCRIPT = """
(function () {
  var m = /\\/runs\\/([^\\/]+)\\/report\\/[^\\/]+$/.exec(decodeURIComponent(location.pathname));
  if (m) {
    document.getElementById("config-name").textContent = m[1];
    document.title = m[1] + ": " + document.title;
  }
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return "figure " + i.getAttribute("src") + " did not load"; });
    var problems = errors.concat(bad);
    var status = document.getElementById("page-status");
    status.dataset.state = problems.length ? "error" : "ok";
    status.textContent = problems.length ? "page problems: " + problems.join("; ")
                                         : "page loaded: all " + imgs.length + " figures shown";
  });
})();
"""


def esc(v: Any) -> str:
    return html.escape(str(v))


def fmt_value(v: Any) -> str:
    """A config or summary value as text: lists comma-separated, floats without float noise."""
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "null"
    return json.dumps(v) if isinstance(v, bool) else str(v)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], text_cols: int = 1) -> str:
    """An HTML table; the first text_cols columns are left-aligned text, the rest numbers."""
    def cells(tag: str, row: Sequence[Any]) -> str:
        return "".join(f"<{tag}{TEXT if i < text_cols else ''}>{esc(c)}</{tag}>" for i, c in enumerate(row))
    body = "\n".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table>\n<tr>{cells('th', head)}</tr>\n{body}\n</table>"


def figure(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def card(label: str, value: str, elem_id: str = "") -> str:
    ident = f' id="{elem_id}"' if elem_id else ""
    return (f'<div class="card"><div class="label">{esc(label)}</div>'
            f'<div class="value"{ident}>{esc(value)}</div></div>')


def page(title: str, cards: Sequence[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; sections are (id, heading, inner HTML). Cards may hold #config-name."""
    nav = " · ".join(f'<a href="#{sid}">{esc(head)}</a>' for sid, head, _ in sections)
    body = "\n".join(f'<section id="{sid}">\n<h2>{esc(head)}</h2>\n{inner}\n</section>'
                     for sid, head, inner in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<div class="headline">
{chr(10).join(cards)}
</div>
<nav>{nav}</nav>
</header>
{body}
<footer><p id="page-status" data-state="pending">page script did not run</p></footer>
<script>{SCRIPT}</script>
</body>
</html>
"""

"""Tables as self-contained HTML pages, for the Snakemake report (which shows HTML results
inline) and for any browser: no network, no external script or style sheet.

Every table is sortable: click a column's header (numbers sort as numbers, blanks last).
Numbers are shown with 6 significant digits; the exact value is the cell's title (shown on
hover) and its sort key, so the CSV next to the page holds nothing the page hides.
Imports no torch.
"""

from __future__ import annotations

import html
from numbers import Number

import pandas as pd

from fmnist.report.formats import MISSING, format_number, is_missing

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; margin: 1.2em; }
h1 { font-size: 1.35em; margin: 0 0 .4em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p { max-width: 60em; }
.wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; vertical-align: top;
         white-space: nowrap; }
table.sortable td:first-child, table.sortable th:first-child { position: sticky; left: 0;
         z-index: 1; }
table.sortable td:first-child { background: #fff; font-weight: 600; }
th { background: #f3f4f6; position: sticky; top: 0; cursor: pointer; text-align: left; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.missing { color: #8c959f; text-align: center; }
table.kv td { white-space: normal; }
tr:nth-child(even) td { background: #f9fafb; }
tr.fail td { background: #ffebe9; color: #82071e; }
tr.pass td { background: #dafbe1; }
.banner { padding: .6em .9em; border-radius: 6px; font-weight: 600; max-width: 60em; }
.banner.fail { background: #ffebe9; color: #82071e; border: 1px solid #ff8182; }
.banner.pass { background: #dafbe1; color: #116329; border: 1px solid #4ac26b; }
.note { color: #57606a; }
table.kv td.num, table.kv td.missing { text-align: left; }
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], k = cell.getAttribute("data-sort");
        if (k === null) { return cell.textContent; }
        return k === "" ? null : Number(k);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var d = (typeof x === "number" && typeof y === "number") ? x - y
              : String(x).localeCompare(String(y), undefined, {numeric: true});
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def escape(text) -> str:
    return html.escape(str(text), quote=True)


def cell(value) -> str:
    """One <td>: numbers right-aligned with their exact value as sort key and title."""
    if is_missing(value):
        return f'<td class="missing" data-sort="">{MISSING}</td>'
    if isinstance(value, bool):
        return f"<td>{'true' if value else 'false'}</td>"
    if isinstance(value, Number):
        number = float(value)
        exact = repr(value.item() if hasattr(value, "item") else value)
        shown = str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else None
        return (
            f'<td class="num" data-sort="{number!r}" title="{escape(exact)}">'
            f"{shown if shown is not None else format_number(number)}</td>"
        )
    return f"<td>{escape(value)}</td>"


def table(df: pd.DataFrame, row_classes: list[str] | None = None, table_id: str = "") -> str:
    """The frame as a sortable <table> (its columns as headers, its index left out)."""
    head = "".join(f"<th>{escape(c)}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(df.to_numpy(dtype=object).tolist()):
        css = f' class="{escape(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(cell(v) for v in row) + "</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return (
        f'<div class="wrap"><table class="sortable"{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>"
    )


def key_values(pairs: dict) -> str:
    """A two-column table of names and values (not sortable: the order is the meaning)."""
    rows = "".join(f"<tr><th>{escape(k)}</th>{cell(v)}</tr>" for k, v in pairs.items())
    return f'<div class="wrap"><table class="kv">{rows}</table></div>'


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{escape(css)}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def page(title: str, *parts: str) -> str:
    """A whole HTML document: the title as heading, then ``parts`` (HTML) in order."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n" + "\n".join(parts) + f"\n<script>{SCRIPT}</script>"
        "</body></html>\n"
    )

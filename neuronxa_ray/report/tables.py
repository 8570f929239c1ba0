"""The report's small HTML tables: how a value prints in a cell, a table with its caption, a JSON setting shown
readably. Pure text helpers, no queries and no charts."""

from __future__ import annotations

import html
import json
import math
from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    """A value as a table cell: None and NaN as a dash, large numbers grouped, tiny ones in exponent form."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (-digits) or v == 0 else f"{v:.1e}"
    return str(v)


def table(head: list[str], body: list[list[str]], caption: str, wide: bool = False) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    cls = ' class="wide"' if wide else ""
    return (
        f'<div class="tablewrap"><table{cls}><caption>{html.escape(caption)}</caption>'
        f"<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"
    )


def pretty(text: str | None) -> str:
    """A JSON text indented with sorted keys; anything else as it is."""
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text

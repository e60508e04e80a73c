"""Print benchmark results as JSON, then as a table."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any


def report(name: str, rows: list[dict[str, Any]], notes: dict[str, Any] | None = None) -> None:
    """Print ``rows`` (dicts with the same keys) as one JSON document and a table."""
    doc = {
        "benchmark": name,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "results": rows,
        **({"notes": notes} if notes else {}),
    }
    print(json.dumps(doc, indent=2))
    if not rows:
        return
    keys = list(rows[0])
    cells = [[_fmt(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print()
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    print()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    return str(value)

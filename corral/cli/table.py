"""Plain-text tables and number formats for people reading a terminal.

Columns are left-aligned and separated by two spaces, like `kubectl get` and
`docker ps`, so that the output also survives `awk` and `column`.
"""

from __future__ import annotations

from collections.abc import Sequence

_GAP = "  "
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render `rows` under `headers`, each column as wide as its widest cell.

    Trailing spaces are stripped so that the last column is not padded.
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells; expected {len(headers)}")
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        _GAP.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines)


def format_amount(value: float) -> str:
    """A resource amount with at most three decimals, as Corral keeps them: 0.5, 2, 0.125."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_used(used: float, total: float) -> str:
    """`used/total`, the way agents' columns show allocation against capacity."""
    return f"{format_amount(used)}/{format_amount(total)}"


def format_bytes(count: int) -> str:
    """A byte count in binary units with one decimal: 512 B, 1.5 KiB, 12.3 MiB."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _BYTE_UNITS[1:-1]:
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} {_BYTE_UNITS[-1]}"

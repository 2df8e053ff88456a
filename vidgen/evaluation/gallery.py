"""A static HTML gallery of a sweep: one row per prompt (or eval clip), one column per cell
(checkpoint step x sampling settings), a <video> in every slot that plays in place, the cell's
metrics in its column head and each video's own metrics under it.

Everything is one self-contained file with relative links (videos, metrics.csv), so it opens
straight from the file system (file://.../gallery.html) and survives copying the folder.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence

STYLE = """
body { font-family: sans-serif; margin: 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px; vertical-align: top; font-size: 12px; }
th.row { max-width: 16em; text-align: left; font-weight: normal; }
video { display: block; width: 160px; background: #000; }
.metrics { color: #333; font-family: monospace; white-space: pre-line; }
"""


@dataclasses.dataclass(frozen=True)
class Slot:
    """One video of the grid: its path relative to the gallery and its metric lines."""
    video: str
    lines: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class Column:
    """A cell of the sweep: a title (its settings), metric lines, and one Slot (or None) per row."""
    title: str
    lines: Sequence[str]
    slots: Sequence[Slot | None]


def format_metrics(metrics: Mapping[str, float | None], names: Sequence[str]) -> list[str]:
    """'name value' lines (4 significant digits) for the names present and not None or NaN."""
    lines = []
    for name in names:
        value = metrics.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        lines.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return lines


def _metrics_div(lines: Sequence[str]) -> str:
    return f'<div class="metrics">{html.escape(chr(10).join(lines))}</div>' if lines else ""


def _slot_html(slot: Slot | None) -> str:
    if slot is None:
        return "<td></td>"
    src = html.escape(urllib.parse.quote(slot.video), quote=True)
    return (f'<td><video src="{src}" controls loop muted autoplay playsinline '
            f'preload="auto"></video>{_metrics_div(slot.lines)}</td>')


def render(title: str, notes: Sequence[str], row_labels: Sequence[str],
           columns: Sequence[Column]) -> str:
    """The gallery page: a rows x columns table of videos with metrics (module doc)."""
    for column in columns:
        if len(column.slots) != len(row_labels):
            raise ValueError(f"column {column.title!r} has {len(column.slots)} slots for "
                             f"{len(row_labels)} rows")
    head = "".join(f"<th>{html.escape(c.title)}{_metrics_div(c.lines)}</th>" for c in columns)
    rows = []
    for i, label in enumerate(row_labels):
        slots = "".join(_slot_html(c.slots[i]) for c in columns)
        rows.append(f'<tr><th class="row">{html.escape(label)}</th>{slots}</tr>')
    paragraphs = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>"
            f'{paragraphs}<p><a href="metrics.csv">metrics.csv</a> · '
            f'<a href="metrics.json">metrics.json</a></p>\n<div class="scroll"><table>\n'
            f"<thead><tr><th></th>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table></div></body></html>\n")


def write(path: str, title: str, notes: Sequence[str], row_labels: Sequence[str],
          columns: Sequence[Column]) -> None:
    """Writes the gallery page to path (its videos' paths are relative to path's folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    for column in columns:
        for slot in column.slots:
            if slot is not None and os.path.isabs(slot.video):
                raise ValueError(f"gallery video paths must be relative to {folder}: "
                                 f"{slot.video}")
    write_atomically(path, render(title, notes, row_labels, columns))


def write_atomically(path: str, text: str) -> None:
    """Writes text to path through a temporary file, so readers see the old or the new file,
    never a part."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)

"""Tables rendered as Markdown and as HTML from one description: a header, rows of text cells, and each column's
alignment.

Every table flowood prints or puts on a page (evaluation, comparison, reproduction, detector selection, inspection)
is a :class:`Table`, so the two renderings never disagree and cell text is escaped in one place.

Example:
    >>> t = Table(["set", "AUROC"], [["mnist", "0.123"], ["a|b", Cell("0.9", "best")]])
    >>> print(t.markdown())
    | set | AUROC |
    |---|---:|
    | mnist | 0.123 |
    | a\\|b | 0.9 |
    >>> print(Table(["set", "AUROC"], [["<b>", Cell("0.9", "best")]]).html())
    <table><tr><th>set</th><th>AUROC</th></tr><tr><td>&lt;b&gt;</td><td class='best'>0.9</td></tr></table>
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Cell", "Table"]

_MARKDOWN_RULES = {"l": "---", "r": "---:", "c": ":---:"}
_CSS_ALIGN = {"l": "left", "r": "right", "c": "center"}


@dataclass(frozen=True)
class Cell:
    """A cell with an HTML class (flowood's pages mark ``best`` and ``bad`` numbers); Markdown shows its text only.

    Attributes:
        text: what the cell shows.
        css_class: the HTML ``class`` of the cell (empty: none).
    """

    text: str
    css_class: str = ""


def _default_align(columns: int) -> str:
    """The first column (a name) left, the others (numbers) right: what flowood's page stylesheet does too."""
    return "l" + "r" * (columns - 1)


@dataclass(frozen=True)
class Table:
    """A table of text cells.

    Attributes:
        head: the column names.
        rows: the rows, each a text or a :class:`Cell` per column.
        align: one letter per column, ``l``, ``r`` or ``c`` (left, right, centre); default: the first column left, the
            others right.

    Raises:
        ValueError: no columns, a row of another length than the header, or an ``align`` that does not give one of
            ``l``, ``r``, ``c`` per column.
    """

    head: Sequence[str]
    rows: Sequence[Sequence[str | Cell]]
    align: str | None = None

    def __post_init__(self) -> None:
        if not self.head:
            raise ValueError("a table needs at least one column")
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.head)]
        if bad:
            raise ValueError(f"row {bad[0]} has {len(self.rows[bad[0]])} cells for {len(self.head)} columns")
        if self.align is not None and (len(self.align) != len(self.head) or set(self.align) - set(_MARKDOWN_RULES)):
            raise ValueError(f"align must give one of l, r, c for each of the {len(self.head)} columns, got "
                             f"{self.align!r}")

    @property
    def alignment(self) -> str:
        """Each column's alignment letter (``align``, or the default)."""
        return self.align or _default_align(len(self.head))

    def markdown(self) -> str:
        """The table in GitHub Markdown; ``|`` in a cell is escaped and a line break becomes a space."""
        lines = [_markdown_row(self.head), "|" + "".join(_MARKDOWN_RULES[a] + "|" for a in self.alignment)]
        lines += [_markdown_row(row) for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        """The table in HTML, every text escaped; a column aligned otherwise than the default says so in its cells'
        style (the default is what flowood's page stylesheet sets)."""
        default = _default_align(len(self.head))
        styles = ["" if a == d else f"text-align:{_CSS_ALIGN[a]}" for a, d in zip(self.alignment, default, strict=True)]
        out = "<table><tr>" + "".join(_html_cell("th", h, s) for h, s in zip(self.head, styles, strict=True)) + "</tr>"
        for row in self.rows:
            out += "<tr>" + "".join(_html_cell("td", c, s) for c, s in zip(row, styles, strict=True)) + "</tr>"
        return out + "</table>"


def _text(cell: str | Cell) -> str:
    return cell.text if isinstance(cell, Cell) else str(cell)


def _markdown_row(cells: Sequence[str | Cell]) -> str:
    return "| " + " | ".join(_text(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _html_cell(tag: str, cell: str | Cell, style: str) -> str:
    css = cell.css_class if isinstance(cell, Cell) else ""
    attributes = (f" class='{html.escape(css)}'" if css else "") + (f" style='{style}'" if style else "")
    return f"<{tag}{attributes}>{html.escape(_text(cell))}</{tag}>"

"""Renderers shared by every summary: the `Report` base and table helpers.

`Report` gives text, HTML, DataFrame, markdown and CSV."""
from __future__ import annotations

__all__ = ['Report', 'pretty_table', 'md_table', 'fmt_int', 'fmt_shape', 'fmt_shapes', 'html_table']

import html
from typing import Sequence


def fmt_int(n) -> str:
    "`n` with thousands separators, `--` for zero or None (torchinfo's convention)"
    return f'{n:,}' if n else '--'


def fmt_shape(shape) -> str:
    "A shape as torchinfo prints it: `[1, 32, 16, 16]`; several outputs joined with `, `"
    if shape is None: return '--'
    if shape and isinstance(shape[0], (list, tuple)): return ', '.join(fmt_shape(s) for s in shape)
    return str(list(shape))


def fmt_shapes(shapes: list) -> str:
    "The shapes of a module's tensors: one shape, several joined with `, `, or `--` for none"
    if not shapes: return '--'
    return fmt_shape(shapes[0] if len(shapes) == 1 else shapes)


def pretty_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    "A PrettyTable-style table (seed 000): `+---+` rules, cells centred with one space of padding"
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'
    line = lambda r: '|' + '|'.join(f' {c.center(w)} ' for c, w in zip(r, widths)) + '|'
    return '\n'.join([rule, line(headers), rule, *map(line, cells), rule])


def md_table(df) -> str:
    "A GitHub markdown table of DataFrame `df` (numbers right-aligned)"
    import pandas as pd
    cols = [str(c) for c in df.columns]
    num = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    esc = lambda v: str(v).replace('|', '\\|')
    rows = [' | '.join(esc(v) for v in r) for r in df.itertuples(index=False)]
    align = ' | '.join('---:' if n else '---' for n in num)
    return '\n'.join([f'| {" | ".join(cols)} |', f'| {align} |', *(f'| {r} |' for r in rows)])


def html_table(headers: Sequence[str], rows: Sequence[Sequence], caption: str = '',
               indent: Sequence[int] = ()) -> str:
    "A plain HTML table; `indent[i]` pads the first cell of row i (tree depth)"
    esc = lambda v: html.escape(str(v))
    head = ''.join(f'<th style="text-align:left">{esc(h)}</th>' for h in headers)
    body = []
    for i, r in enumerate(rows):
        pad = indent[i] if i < len(indent) else 0
        tds = [f'<td style="text-align:left;padding-left:{0.5 + 1.2 * pad}em">{esc(r[0])}</td>']
        tds += [f'<td style="text-align:{"right" if _numeric(v) else "left"}">{esc(v)}</td>' for v in r[1:]]
        body.append(f'<tr>{"".join(tds)}</tr>')
    cap = f'<caption style="text-align:left">{esc(caption)}</caption>' if caption else ''
    return f'<table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _numeric(v) -> bool:
    if isinstance(v, (int, float)): return True
    return isinstance(v, str) and v.replace(',', '').replace('.', '').replace('%', '').lstrip('-').isdigit()


class Report:
    "Base of every summary: subclasses give `to_text()` and `to_df()`; the rest derives from them"
    title = ''

    def to_text(self) -> str:
        "The plain-text table (what `print` shows)"
        raise NotImplementedError

    def to_df(self):
        "The table as a pandas DataFrame, one row per record"
        raise NotImplementedError

    def __str__(self) -> str: return self.to_text()
    def __repr__(self) -> str: return self.to_text()

    def _repr_html_(self) -> str:
        df = self.to_df()
        rows = [[_cell(v) for v in r] for r in df.itertuples(index=False)]
        return html_table([str(c) for c in df.columns], rows, caption=self.title)

    def to_markdown(self) -> str:
        "The DataFrame as a GitHub markdown table"
        return md_table(self.to_df())

    def to_csv(self, path=None, **kwargs):
        "The DataFrame as CSV: written to `path`, or returned as a string when `path` is None"
        return self.to_df().to_csv(path, index=False, **kwargs)


def _cell(v) -> str:
    if isinstance(v, bool): return str(v)
    if isinstance(v, int): return f'{v:,}'
    if isinstance(v, float): return f'{v:,.4g}'
    return '' if v is None else str(v)

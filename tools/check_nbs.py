"""Check that notebooks are ready to render as documentation: readable, executed, and free of errors.

The docs show the outputs stored in the notebooks (they are not re-executed), so a notebook that raised or
was never run would publish a traceback or an empty page. Each problem is one line naming the notebook and
the cell; the exit status is 1 if there is any. `make docs` runs this check (the MkDocs hook in
tools/docs_hooks.py), so a bad notebook stops the build with its name.

    python tools/check_nbs.py nbs            # a folder, or notebook files
"""
from __future__ import annotations

import pathlib, sys

import nbformat

__all__ = ['notebooks', 'problems', 'check']


def notebooks(paths: list[str | pathlib.Path]) -> list[pathlib.Path]:
    "The .ipynb files named by `paths` (folders are searched, checkpoints skipped), sorted"
    out = []
    for p in map(pathlib.Path, paths):
        out += sorted(p.glob('*.ipynb')) if p.is_dir() else [p]
    return [f for f in out if '.ipynb_checkpoints' not in f.parts]


def _cell_problem(i: int, cell) -> str | None:
    "What is wrong with code cell number `i` (1-based), or None"
    if not cell.source.strip(): return None
    errs = [o for o in cell.get('outputs', []) if o.output_type == 'error']
    if errs: return f"cell {i} has an error output: {errs[0].get('ename', '?')}: {errs[0].get('evalue', '')}"
    if cell.get('execution_count') is None and not cell.get('outputs'):
        return f'cell {i} was never executed (no outputs)'
    return None


def problems(path: pathlib.Path) -> list[str]:
    "Problems of the notebook at `path`, each a line starting with its path; empty when it can be rendered"
    try: nb = nbformat.read(path, as_version=4)
    except Exception as e: return [f'{path}: cannot be read as a notebook ({type(e).__name__}: {e})']
    code = [c for c in nb.cells if c.cell_type == 'code']
    found = [p for i, c in enumerate(code, 1) if (p := _cell_problem(i, c))]
    if code and not any(c.get('outputs') for c in code): found = ['no stored outputs (run `make nbs`)']
    return [f'{path}: {p}' for p in found]


def check(paths: list[str | pathlib.Path]) -> list[str]:
    "Problems of every notebook in `paths`; a path with no notebook is a problem too"
    nbs = notebooks(paths)
    if not nbs: return [f'no notebooks found in {", ".join(map(str, paths))}']
    return [p for f in nbs for p in problems(f)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    found = check(args or ['nbs'])
    for p in found: print(f'check_nbs: {p}', file=sys.stderr)
    return 1 if found else 0


if __name__ == '__main__': sys.exit(main())

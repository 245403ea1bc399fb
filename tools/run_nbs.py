"""Execute every notebook in the given folders (or files) top to bottom; exit non-zero on the first error.

By default outputs are discarded (the committed notebooks stay as they are); `--inplace` keeps the new
outputs.
"""
from __future__ import annotations

import argparse, pathlib, sys, time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from check_nbs import notebooks  # tools/, beside this script


def run(nb_path: pathlib.Path, inplace: bool, timeout: int) -> float:
    "Execute `nb_path` in its own folder; returns seconds taken"
    nb = nbformat.read(nb_path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name='python3',
                   resources={'metadata': {'path': str(nb_path.parent)}}).execute()
    if inplace: nbformat.write(nb, nb_path)
    return time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('paths', nargs='+')
    ap.add_argument('--inplace', action='store_true', help='write the new outputs back into the notebooks')
    ap.add_argument('--timeout', type=int, default=600, help='seconds allowed per cell')
    args = ap.parse_args()
    nbs = notebooks(args.paths)
    for f in nbs:
        try: print(f'{f}: ok in {run(f, args.inplace, args.timeout):.1f}s', flush=True)
        except CellExecutionError as e:
            print(f'{f}: FAILED\n{e}', file=sys.stderr)
            sys.exit(1)
    print(f'{len(nbs)} notebooks executed')


if __name__ == '__main__': main()

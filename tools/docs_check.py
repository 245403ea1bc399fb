"""Check the built documentation site in a real browser: no text output wraps, no table is cut off.

Each page of the site (`make docs` builds it into `_docs/`) is opened in headless Chromium, 1280 px wide,
and `tools/docs_check.js` measures every `<pre>` and `<table>` of its article: a `<pre>` whose lines wrap (a
table printed as text whose rows break in two), or a `<pre>` or table wider than the box that shows it with no
scroll bar (cut off at the right). Each problem is one line naming the page and the output (the notebook
cell's prompt, `In [3]`, or the heading above it, and the start of its text). Exit status: 0 when every page
is fine, 1 when an output wraps or is cut off, 2 when Chromium is missing or a page cannot be checked.

    python tools/docs_check.py _docs                # the site's folder, or pages
    python tools/docs_check.py _docs --width 1024
    python tools/docs_check.py --find               # which Chromium would run (exit 1: none)

Chromium: Debian's `chromium` package (`apt-get install chromium`); $CHROMIUM names another binary.
Nothing but Chromium is needed: the page is a copy of the built one with the script added, and
`chromium --headless --dump-dom` prints the DOM the script has written its findings into.
"""
from __future__ import annotations

import argparse, html, json, os, pathlib, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

__all__ = ['BROWSERS', 'chromium', 'pages', 'probe_page', 'check_page', 'check', 'main']

SCRIPT = pathlib.Path(__file__).with_suffix('.js')
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
WIDTH, HEIGHT = 1280, 900
SKIP = {'assets', 'search'}  # mkdocs' folders of theme files, no pages
RESULT = re.compile(r'<div id="docs-check-result" hidden="">(.*?)</div>', re.S)


class PageError(Exception):
    "A page that could not be checked (Chromium failed, or the page never finished loading)"


def chromium() -> str | None:
    "The Chromium to run: `$CHROMIUM`, else the first of `BROWSERS` on the PATH; None when there is none"
    if name := os.environ.get('CHROMIUM'): return shutil.which(name)
    return next((path for b in BROWSERS if (path := shutil.which(b))), None)


def pages(paths: list[str | pathlib.Path]) -> list[tuple[str, pathlib.Path]]:
    "`(name, file)` of the `.html` pages named by `paths`: folders are searched (not their assets), sorted"
    out = []
    for p in map(pathlib.Path, paths):
        if not p.is_dir(): out.append((p.name, p)); continue
        out += sorted((f.relative_to(p).as_posix(), f) for f in p.rglob('*.html')
                      if not SKIP & set(f.relative_to(p).parts[:-1]))
    return out


def probe_page(page: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    "Write to `dest` a copy of `page` that loads its files from beside the original and runs docs_check.js"
    text = page.read_text(encoding='utf-8')
    base = f'<base href="{page.resolve().parent.as_uri()}/">'
    run = ("<script>addEventListener('load', () => setTimeout(() => {\n"
           f'{SCRIPT.read_text(encoding="utf-8")}\n}}, 100));</script>')
    text = re.sub(r'<head\b[^>]*>', lambda m: m[0] + base, text, count=1)
    head, body, tail = text.rpartition('</body>')
    dest.write_text(head + run + body + tail if body else text + run, encoding='utf-8')
    return dest


def _browse(browser: str, url: str, width: int, profile: str) -> str:
    "The DOM of `url` after its scripts ran, as headless Chromium `width` px wide prints it"
    cmd = [browser, '--headless', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
           '--mute-audio', f'--user-data-dir={profile}', f'--window-size={width},{HEIGHT}',
           '--virtual-time-budget=20000', '--dump-dom', url]
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.insert(1, '--no-sandbox')  # root: no sandbox
    try: r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired: raise PageError('Chromium did not finish in 120 s') from None
    if r.returncode: raise PageError(f'Chromium failed ({r.returncode}): {r.stderr.strip()[-300:]}')
    return r.stdout


def check_page(browser: str, name: str, page: pathlib.Path, width: int = WIDTH) -> tuple[list[str], int]:
    "The problems of `page` (each a line starting with `name`) and how many outputs and tables were measured"
    with tempfile.TemporaryDirectory(prefix='docs_check_') as tmp:
        probe = probe_page(page, pathlib.Path(tmp) / 'page.html')
        found = RESULT.search(_browse(browser, probe.as_uri(), width, str(pathlib.Path(tmp) / 'profile')))
    if not found: raise PageError('the page did not finish loading (no result from docs_check.js)')
    res = json.loads(html.unescape(found[1]))
    return [f'{name}: {p}' for p in res['found']], res['pres'] + res['tables']


def check(paths: list[str | pathlib.Path], width: int = WIDTH, jobs: int = 2,
          browser: str | None = None) -> tuple[list[str], list[str], int]:
    "`(problems, pages not checked, elements measured)` of every page in `paths`, `jobs` Chromiums at a time"
    browser = browser or chromium()
    if browser is None: raise FileNotFoundError('Chromium not found')
    problems, errors, measured = [], [], 0
    with ThreadPoolExecutor(jobs) as pool:
        futures = {name: pool.submit(check_page, browser, name, f, width) for name, f in pages(paths)}
        for name, fut in futures.items():  # in page order, each page's problems in its order
            try: found, n = fut.result()
            except PageError as e: errors.append(f'{name}: not checked: {e}'); continue
            problems += found
            measured += n
    return problems, errors, measured


def main(argv: list[str] | None = None) -> int:
    "Check the pages named on the command line; print one line per problem; 0, 1 (problems) or 2 (no check)"
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('paths', nargs='*', default=['_docs'], help='the built site (default _docs) or pages')
    ap.add_argument('--width', type=int, default=WIDTH, help='window width, CSS pixels (default %(default)s)')
    ap.add_argument('--jobs', type=int, default=2, help='pages checked at a time (default %(default)s)')
    ap.add_argument('--find', action='store_true', help='only print the Chromium found; exit 1 if none')
    args, start = ap.parse_args(argv), time.perf_counter()
    if args.find:
        print(chromium() or 'docs_check: no Chromium on the PATH (Debian: apt-get install chromium)')
        return 0 if chromium() else 1
    if not (found := pages(args.paths)):
        print(f'docs_check: no pages in {" ".join(args.paths)} (build the site: make docs)', file=sys.stderr)
        return 2
    try: problems, errors, measured = check(args.paths, args.width, max(1, args.jobs))
    except FileNotFoundError:
        print('docs_check: Chromium not found: install it (Debian: apt-get install chromium) or name it '
              'in $CHROMIUM', file=sys.stderr)
        return 2
    for line in problems + errors: print(f'docs_check: {line}', file=sys.stderr)
    verdict = f'{len(problems)} outputs wrap or are cut off' if problems else 'none wraps or is cut off'
    print(f'docs_check: {len(found)} pages at {args.width} px, {measured} text outputs and tables: {verdict} '
          f'({time.perf_counter() - start:.0f} s)')
    return 2 if errors else 1 if problems else 0


if __name__ == '__main__': sys.exit(main())

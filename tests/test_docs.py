"The documentation site (`make docs`): a page per notebook, every public name in the API reference, the CLI."
from __future__ import annotations

import importlib.util, json, os, pathlib, re, subprocess, sys, types

import nbformat
import pytest
import yaml

import fast_impl

ROOT = pathlib.Path(__file__).parents[1]
NBS = sorted((ROOT / 'nbs').glob('*.ipynb'))
CHECK = ROOT / 'tools' / 'check_nbs.py'
ENV = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}


def mkdocs_build(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'mkdocs', 'build', *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> pathlib.Path:
    "The whole site, built as `make docs` builds it (mkdocs.yml, strict), into a temporary folder"
    out = tmp_path_factory.mktemp('docs') / 'site'
    r = mkdocs_build('--site-dir', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def outputs(nb_path: pathlib.Path, mime: str) -> list[str]:
    "The stored outputs of type `mime` in the notebook"
    nb = nbformat.read(nb_path, as_version=4)
    return [''.join(o['data'][mime]) for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if mime in o.get('data', {})]


def test_every_notebook_has_a_page(site):
    home = (site / 'index.html').read_text()
    for nb in NBS:
        page = site / f'{nb.stem}.html'
        assert page.exists(), f'no page for {nb.name}'
        assert f'href="{page.name}"' in home or nb.name == 'index.ipynb', f'{nb.name} not in the navigation'
        assert 'highlight-ipynb' in page.read_text(), f'{nb.name}: code is not highlighted'
    assert 'make demo' in home and 'make test' in home
    assert 'href="04_splitting.ipynb"' not in home  # the landing page's links to lessons go to their pages


def test_tables_are_html_and_plots_are_embedded(site):
    plots = 0
    for nb in NBS:
        html = (site / f'{nb.stem}.html').read_text()
        pngs = len(outputs(nb, 'image/png'))
        assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= pngs, f'{nb.name}: no plots'
        if any('<table' in t for t in outputs(nb, 'text/html')):
            assert '<table' in html, f'{nb.name}: HTML tables missing'
        plots += pngs
    assert plots >= 2  # 05_fine_tuning and 06_classic_architectures have plots


def test_api_reference_covers_all_public_names(site):
    "Each name of `fast_impl.__all__` (read now, as the build reads it) links to its entry"
    index = (site / 'api' / 'index.html').read_text()
    for name in fast_impl.__all__:
        links = re.findall(rf'<a[^>]*href="([^"]+)"[^>]*><code>{re.escape(name)}</code></a>', index)
        assert links, f'{name} is not in the API reference'
        page, _, anchor = links[0].partition('#')
        target = (site / 'api' / page).read_text()
        assert not anchor or f'id="{anchor}"' in target, f'{name}: no entry {anchor} in {page}'


def test_cli_page_has_every_command(site):
    from fast_impl.app.cli import COMMANDS
    page = (site / 'cli.html').read_text()
    assert 'usage: fast-impl COMMAND' in page
    for name in COMMANDS: assert f'usage: fast-impl {name}' in page, f'no --help text for fast-impl {name}'


def test_site_has_navigation_and_search(site):
    html = (site / 'index.html').read_text()
    for section in ['Lessons', 'API reference', 'Command line']: assert section in html
    index = json.loads((site / 'search' / 'search_index.json').read_text())
    assert any('layer_summary' in d['text'] for d in index['docs'])


def load_hooks():
    spec = importlib.util.spec_from_file_location('docs_hooks', ROOT / 'tools' / 'docs_hooks.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_is_generated_from_all(tmp_path, monkeypatch):
    "`__all__` alone decides the pages: a re-exported function and class, a public module; a bad name fails"
    pkg = tmp_path / 'pkgx'
    pkg.mkdir()
    (pkg / 'core.py').write_text('"Core."\n__all__ = ["f", "C"]\ndef f():\n    "Return 1"\n    return 1\n'
                                 'class C:\n    "A class"\n')
    (pkg / 'extra.py').write_text('"Extra things."\n')
    (pkg / '__init__.py').write_text('from .core import f, C\nfrom . import extra\n'
                                     '__all__ = ["f", "C", "extra"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = load_hooks()
    pages = hooks.api_pages('pkgx')
    assert list(pages) == ['api/index.md', 'api/core.md', 'api/extra.md']
    assert '| [`f`][pkgx.core.f] | [core](core.md) | Return 1 |' in pages['api/index.md']
    assert '::: pkgx.core.f' in pages['api/core.md'] and '::: pkgx.core.C' in pages['api/core.md']
    assert '::: pkgx.extra' in pages['api/extra.md']
    (pkg / '__init__.py').write_text('from .core import f\n__all__ = ["f", "gone"]\n')
    monkeypatch.delitem(sys.modules, 'pkgx')
    with pytest.raises(Exception, match="pkgx.__all__ lists 'gone'"): hooks.api_pages('pkgx')


def bad_notebooks(folder: pathlib.Path):
    "Write to `folder` a good notebook, one with an error output, one never executed, one not JSON"
    v4 = nbformat.v4
    result = v4.new_output('execute_result', data={'text/plain': '1'}, execution_count=1)
    error = v4.new_output('error', ename='ZeroDivisionError', evalue='division by zero', traceback=[])
    nbs = {'index.ipynb': [v4.new_markdown_cell('# Fine'),
                           v4.new_code_cell('1', execution_count=1, outputs=[result])],
           'raises.ipynb': [v4.new_markdown_cell('# Raises'),
                            v4.new_code_cell('1/0', execution_count=1, outputs=[error])],
           'never_run.ipynb': [v4.new_markdown_cell('# Never run'), v4.new_code_cell('1')]}
    for name, cells in nbs.items(): nbformat.write(v4.new_notebook(cells=cells), folder / name)
    (folder / 'broken.ipynb').write_text('{not json')


def test_check_names_each_bad_notebook(tmp_path):
    bad_notebooks(tmp_path)
    r = subprocess.run([sys.executable, str(CHECK), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 3 and 'Traceback' not in r.stderr, r.stderr
    assert 'raises.ipynb: cell 1 has an error output: ZeroDivisionError' in r.stderr
    assert 'never_run.ipynb' in r.stderr and 'broken.ipynb' in r.stderr and 'index.ipynb' not in r.stderr
    assert subprocess.run([sys.executable, str(CHECK), str(ROOT / 'nbs')]).returncode == 0


def test_bad_notebook_fails_the_build_with_its_name(tmp_path):
    "The docs build (mkdocs.yml, on a folder of notebooks with bad ones) stops with lines naming them"
    docs = tmp_path / 'nbs'
    docs.mkdir()
    bad_notebooks(docs)
    cfg = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
    cfg.update(docs_dir=str(docs), site_dir=str(tmp_path / 'site'),
               hooks=[str(ROOT / 'tools' / 'docs_hooks.py')])
    (tmp_path / 'mkdocs.yml').write_text(yaml.safe_dump(cfg))
    r = mkdocs_build('-f', str(tmp_path / 'mkdocs.yml'), cwd=tmp_path)
    assert r.returncode != 0
    assert 'raises.ipynb' in r.stderr and 'never_run.ipynb' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'site' / 'index.html').exists()


# ---------------------------------------------------------------- generated landing list, whole summaries

def test_summary_is_the_whole_first_paragraph(site):
    "A summary that wraps in the source is whole (fast_impl.optim's was cut after its first line)"
    hooks = load_hooks()
    assert hooks.summary('Layer groups for any optimizer,\n  the policy.\n\nMore.') == \
        'Layer groups for any optimizer, the policy.'
    index, optim = (site / 'api' / 'index.html').read_text(), (site / 'api' / 'optim.html').read_text()
    assert 'per-group statistics of a plain training loop.</p>' in optim
    assert 'the parameters with weight decay, then those without), in forward order, stem first.' in index


def test_landing_page_lists_every_lesson(site):
    home = (site / 'index.html').read_text()
    lessons = re.search(r'<ul class="lessons">(.*?)</ul>', home, re.S)
    assert lessons, 'the landing page has no list of lessons'
    links = re.findall(r'<a href="([^"]+)\.html">', lessons[1])
    assert links == [nb.stem for nb in NBS if nb.name != 'index.ipynb']
    assert '<!-- lessons -->' not in home


def test_lessons_list_is_made_from_the_notebooks(tmp_path):
    "A new notebook is listed with its `> summary` (else its first paragraph); no marker: the build fails"
    v4, hooks = nbformat.v4, load_hooks()
    cells = {'index.ipynb': '# Home\n\n<!-- lessons -->',
             '09_new.ipynb': '# New `thing`\n\n> What it does.\n\nMore.',
             '10_plain.ipynb': '# Plain\n\nFirst paragraph,\nwrapped.\n\nSecond.'}
    for name, text in cells.items():
        nbformat.write(v4.new_notebook(cells=[v4.new_markdown_cell(text)]), tmp_path / name)
    html = hooks.lessons_html(sorted(tmp_path.glob('*.ipynb')))
    assert html == ('<ul class="lessons">\n'
                    '<li><a href="09_new.html">New <code>thing</code></a>: What it does.</li>\n'
                    '<li><a href="10_plain.html">Plain</a>: First paragraph, wrapped.</li>\n</ul>')
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri='index.ipynb'))
    config = {'docs_dir': tmp_path}
    assert hooks.on_page_content('<p>x</p>\n<!-- lessons -->', page, config, None) == '<p>x</p>\n' + html
    with pytest.raises(Exception, match='index.ipynb has no <!-- lessons --> marker'):
        hooks.on_page_content('<p>x</p>', page, config, None)


# ---------------------------------------------------------------- the browser check (tools/docs_check.py)

def load_check():
    "tools/docs_check.py, imported as a module"
    spec = importlib.util.spec_from_file_location('docs_check', ROOT / 'tools' / 'docs_check.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


needs_chromium = pytest.mark.skipif(load_check().chromium() is None,
                                    reason='no Chromium on the PATH (Debian: apt-get install chromium)')
DOCS_CHECK = [sys.executable, str(ROOT / 'tools' / 'docs_check.py')]
LONG = 'Layer (type (var_name))' + ' ' * 30 + 'Kernel Shape   Output Shape   Param #        Mult-Adds' * 3


def tiny_site(tmp_path: pathlib.Path, css: bool) -> pathlib.Path:
    "A site built by mkdocs.yml from a notebook printing a 224-character line (without the site's CSS: `css`)"
    docs = tmp_path / 'nbs'
    docs.mkdir(parents=True)
    out = nbformat.v4.new_output('stream', name='stdout', text=LONG + '\nshort line\n')
    cells = [nbformat.v4.new_markdown_cell('# Tiny\n\n<!-- lessons -->'),
             nbformat.v4.new_code_cell('print(x)', execution_count=1, outputs=[out])]
    nb = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb, docs / 'index.ipynb')
    cfg = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
    cfg.update(docs_dir=str(docs), site_dir=str(tmp_path / 'site'),
               hooks=[str(ROOT / 'tools' / 'docs_hooks.py')])
    if not css: cfg.pop('extra_css')
    (tmp_path / 'mkdocs.yml').write_text(yaml.safe_dump(cfg))
    r = mkdocs_build('-f', str(tmp_path / 'mkdocs.yml'), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / 'site'


@needs_chromium
def test_browser_check_fails_on_a_page_that_wraps(tmp_path):
    "One notebook page: its long output line wraps without the site's CSS (fails, named), scrolls with it"
    bare = tiny_site(tmp_path / 'bare', css=False) / 'index.html'
    r = subprocess.run([*DOCS_CHECK, str(bare)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith('docs_check: index.html: output of In [1] (pre "Layer (type (var_name)) Kernel '
                           'Shape Output Shape "): text wraps (2 lines shown on '), line
    styled = tiny_site(tmp_path / 'styled', css=True) / 'index.html'
    r = subprocess.run([*DOCS_CHECK, str(styled)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'none wraps or is cut off' in r.stdout, r.stdout + r.stderr


@needs_chromium
def test_browser_check_finds_a_table_cut_off(tmp_path):
    "A table wider than a box that clips it is cut off; in a box that scrolls, or narrow enough, it is not"
    row = '<table><tr>' + '<td style="white-space:nowrap">column of a wide table</td>' * 12 + '</tr></table>'
    pages = {'cut.html': f'<div style="overflow:hidden">{row}</div>',
             'scrolls.html': f'<div style="overflow-x:auto">{row}</div>',
             'fits.html': '<table><tr><td>narrow</td></tr></table>'}
    for name, body in pages.items():
        (tmp_path / name).write_text(f'<html><body><div class="md-content" style="width:600px">{body}</div>'
                                     '</body></html>')
    r = subprocess.run([*DOCS_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert [line.split(' (')[0] for line in r.stderr.splitlines()] == ['docs_check: cut.html: page'], r.stderr
    assert 'cut off at the right' in r.stderr


@needs_chromium
def test_real_pages_pass_the_browser_check(site):
    "The pages the issue named (layer summaries, group tables, landing page) pass; `make docs-check` does all"
    names = ['index.html', '02_layer_summary.html', '05_fine_tuning.html', '08_param_groups.html']
    r = subprocess.run([*DOCS_CHECK, *[str(site / n) for n in names]], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'docs_check: 4 pages at 1280 px' in r.stdout and 'none wraps or is cut off' in r.stdout

"""MkDocs hooks (mkdocs.yml `hooks:`) that make the documentation site from `nbs/` and the library.

- `on_config` refuses notebooks that cannot be shown (an error output, never executed: tools/check_nbs.py),
  naming them, before anything is built.
- `on_files` adds the generated pages: `api/index.md` (each name in `fast_impl.__all__`, linked to its
  entry), `api/MODULE.md` (mkdocstrings entries of those names, by module) and `cli.md` (`--help` of each
  command); and sets the navigation: the landing notebook, the lessons, the API reference, the command line.
- `on_page_content` points links between notebooks (`04_splitting.ipynb`) to their pages, and writes the list
  of lessons into the landing page where it has the `<!-- lessons -->` marker.
- The site's own CSS (`docs_assets/`, named in mkdocs.yml `extra_css`) is added to the files.

All is computed at build time from `fast_impl.__all__`, `fast_impl.app.cli.COMMANDS` and the notebooks in
`nbs/`: a new public name, command or lesson gets its entry without editing any list.
"""
from __future__ import annotations

import contextlib, importlib, inspect, io, os, pathlib, re, sys, warnings

import griffe, markdown, nbformat
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from check_nbs import check, notebooks  # noqa: E402

__all__ = ['summary', 'api_entries', 'api_pages', 'cli_page', 'generated_pages', 'nb_title', 'nb_summary',
           'lessons_html', 'nav', 'nb_links', 'on_config', 'on_files', 'on_page_content']

LANDING = 'index.ipynb'
GUIDE = 'guide.md'  # the README's details: rules, command line, training, measured figures in full
LESSONS = '<!-- lessons -->'  # where the landing page lists the lessons (tools/docs_hooks.py writes the list)
ASSETS = pathlib.Path(__file__).parents[1] / 'docs_assets'  # the site's CSS, copied as docs_assets/...
HELP_COLUMNS = '100'  # argparse wraps help to $COLUMNS: fixed, so the page does not depend on the terminal
Entry = tuple[str, str, str]  # (public name, dotted path of its definition, docstring summary)


def _submodules(mod):
    for sub in mod.modules.values(): yield from [sub, *_submodules(sub)]


def _exported(tree) -> dict[str, list[str]]:
    "`{name: [module, ...]}`: the modules of the griffe `tree` that define `name` and list it in `__all__`"
    out: dict[str, list[str]] = {}
    for mod in [tree, *_submodules(tree)]:
        for name in map(str, mod.exports or []):
            member = mod.members.get(name)
            if member is not None and not member.is_alias: out.setdefault(name, []).append(mod.path)
    return out


def _import(package: str, name: str):
    "`package.name`, imported (for a name the sources do not place); a name that fails is a build error"
    try:
        with warnings.catch_warnings():  # deprecations raised by dependencies on import are not ours
            warnings.simplefilter('ignore')
            return getattr(importlib.import_module(package), name)
    except (AttributeError, ImportError) as e:
        raise PluginError(f'{package}.__all__ lists {name!r}, which cannot be imported: {e}') from None


def _ident(package: str, name: str, tree, exported: dict[str, list[str]]) -> str:
    "The dotted path where `name` of `package` is defined: from the sources, else from the imported object"
    if name in tree.modules: return f'{package}.{name}'
    if len(exported.get(name, [])) == 1: return f'{exported[name][0]}.{name}'
    obj = _import(package, name)
    return obj.__name__ if inspect.ismodule(obj) else f'{obj.__module__}.{name}'


def summary(text: str) -> str:
    "The summary of a docstring: its whole first paragraph (up to a blank line), on one line"
    return ' '.join(text.strip().split('\n\n')[0].split())


def _doc_line(tree, ident: str) -> str:
    "The docstring summary of the object at dotted `ident` in the griffe `tree`, escaped for a table cell"
    try: doc = tree[ident.partition('.')[2]].docstring
    except (KeyError, griffe.AliasResolutionError): doc = None
    return summary(doc.value).replace('|', '\\|') if doc and doc.value else ''


def api_entries(package: str, tree) -> dict[str, list[Entry]]:
    """`{module: [Entry, ...]}` for each name in `package.__all__`, by the top-level module defining it.

    Read from the sources (`tree`: griffe, as mkdocstrings reads them), so the library's heavy dependencies
    (fastai) are not imported; `__all__` itself comes from the package, whose imports are lazy."""
    exported, out = _exported(tree), {}
    for name in importlib.import_module(package).__all__:
        ident = _ident(package, name, tree, exported)
        out.setdefault(ident.split('.')[1], []).append((name, ident, _doc_line(tree, ident)))
    return out


def _module_page(package: str, module: str, entries: list[Entry], summary: str) -> str:
    "A page of mkdocstrings entries; a module that is itself public (`fast_impl.models`) is shown whole"
    full = f'{package}.{module}'
    if any(ident == full for _, ident, _ in entries):
        return f'# {full}\n\n::: {full}\n    options:\n      show_root_heading: false\n'
    return '\n'.join([f'# {full}', '', summary, ''] + [f'::: {ident}\n' for _, ident, _ in entries])


def _index_page(package: str, entries: dict[str, list[Entry]]) -> str:
    "The table of every public name, linked (mkdocs-autorefs) to its entry"
    lines = ['# API reference', '', f'Every public name of `{package}` (its `__all__`), by module; each is '
             f'importable from the package: `from {package} import NAME`.', '',
             '| name | module | summary |', '| --- | --- | --- |']
    lines += [f'| [`{name}`][{ident}] | [{module}]({module}.md) | {doc} |'
              for module, items in entries.items() for name, ident, doc in items]
    return '\n'.join(lines + ['', 'The command line has its own page: [Command line](../cli.md).', ''])


def api_pages(package: str = 'fast_impl') -> dict[str, str]:
    "`{uri: markdown}` of the API reference: an index, then one page per module"
    tree = griffe.load(package)
    entries = api_entries(package, tree)
    pages = {'api/index.md': _index_page(package, entries)}
    pages.update({f'api/{m}.md': _module_page(package, m, items, _doc_line(tree, f'{package}.{m}'))
                  for m, items in entries.items()})
    return pages


def _help(argv: list[str]) -> str:
    "What `fast-impl ARGV` prints (run in-process, at a fixed width)"
    from fast_impl.app.cli import main
    old, buf = os.environ.get('COLUMNS'), io.StringIO()
    os.environ['COLUMNS'] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(buf): main(argv)
    finally:
        if old is None: os.environ.pop('COLUMNS')
        else: os.environ['COLUMNS'] = old
    return buf.getvalue().rstrip('\n')


def cli_page() -> str:
    "The command-line page: `fast-impl --help`, then `fast-impl COMMAND --help` for every command"
    from fast_impl.app.cli import COMMANDS
    lines = ['# Command line', '', 'The `fast-impl` command is installed with the package; each section '
             'below is the `--help` text of one subcommand.', '',
             '```text', '$ fast-impl --help', _help(['--help']), '```', '']
    for name in COMMANDS:
        lines += [f'## fast-impl {name}', '', '```text', f'$ fast-impl {name} --help',
                  _help([name, '--help']), '```', '']
    return '\n'.join(lines)


def generated_pages() -> dict[str, str]:
    "Every generated page: the API reference and the command line"
    return {**api_pages(), 'cli.md': cli_page()}


def _heading(path: pathlib.Path) -> tuple[str, str]:
    "`(first # heading, the text after it in its cell)` of the notebook at `path`; empty strings if none"
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != 'markdown': continue
        _, sep, rest = ('\n' + cell.source).partition('\n# ')
        if sep: return rest.partition('\n')[0].strip(), rest.partition('\n')[2]
    return '', ''


def nb_title(path: pathlib.Path) -> str:
    "The notebook's title: its first `# heading`, inline code marks dropped (else the file name)"
    return _heading(path)[0].replace('`', '') or path.stem


def nb_summary(path: pathlib.Path) -> str:
    "What the notebook is about: the `> quote` under its title, else the first paragraph there (markdown)"
    paras = [p.strip() for p in _heading(path)[1].split('\n\n') if p.strip()]
    quote = next((p for p in paras if p.startswith('>')), None)
    text = re.sub(r'^> ?', '', quote, flags=re.M) if quote else paras[0] if paras else ''
    return ' '.join(text.split())


def lessons_html(nbs: list[pathlib.Path]) -> str:
    "The landing page's list of lessons: every notebook but the landing one, linked to its page, summarised"
    items = [f'- [{_heading(f)[0] or f.stem}]({f.stem}.html)' + (f': {s}' if (s := nb_summary(f)) else '')
             for f in nbs if f.name != LANDING]
    return markdown.markdown('\n'.join(items)).replace('<ul>', '<ul class="lessons">', 1)


def nav(nbs: list[pathlib.Path], api_uris: list[str]) -> list:
    "The site navigation: the landing notebook, the lessons, the guide (`nbs/guide.md`), the API, the CLI"
    home = [{nb_title(f): f.name} for f in nbs if f.name == LANDING]
    lessons = [{nb_title(f): f.name} for f in nbs if f.name != LANDING]
    api = [{'All names': api_uris[0]}, *api_uris[1:]]
    guide = [{'Guide': GUIDE}] if (nbs and (nbs[0].parent / GUIDE).exists()) else []
    return [*home, *([{'Lessons': lessons}] if lessons else []), *guide, {'API reference': api},
            {'Command line': 'cli.md'}]


def nb_links(html: str, names: set[str]) -> str:
    "`html` with links to the notebooks `names` (`01_x.ipynb`, as a notebook links) pointing to their pages"
    def page(m): return f'href="{m[1]}.html{m[2] or ""}"' if f'{m[1]}.ipynb' in names else m[0]
    return re.sub(r'href="([^"/#:]+)\.ipynb(#[^"]*)?"', page, html)


def _nbs(config) -> list[pathlib.Path]: return notebooks([pathlib.Path(config['docs_dir'])])


def on_config(config):
    "Refuse notebooks that cannot be rendered, naming them (before anything else is done)"
    if found := check([pathlib.Path(config['docs_dir'])]):
        raise PluginError('notebooks not ready for the docs (fix them, or re-run them with `make nbs`):\n  '
                          + '\n  '.join(found))
    return config


def on_files(files, config):
    "Add the generated pages and the site's CSS; set the navigation (read after this event)"
    pages = generated_pages()
    for uri, text in pages.items(): files.append(File.generated(config, uri, content=text))
    for f in sorted(ASSETS.rglob('*.css')):
        uri = f'docs_assets/{f.relative_to(ASSETS).as_posix()}'
        files.append(File.generated(config, uri, abs_src_path=str(f)))
    config['nav'] = nav(_nbs(config), [uri for uri in pages if uri.startswith('api/')])
    return files


def on_page_content(html, page, config, files):
    "Links between notebooks go to their pages; the landing page gets the list of lessons at its marker"
    nbs = _nbs(config)
    if page.file.src_uri == LANDING:
        if LESSONS not in html: raise PluginError(f'{LANDING} has no {LESSONS} marker for the lessons list')
        html = html.replace(LESSONS, lessons_html(nbs), 1)
    return nb_links(html, {f.name for f in nbs})

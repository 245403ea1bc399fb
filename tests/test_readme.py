"The README is a front page: within 150 lines, and every command in it runs as written."
from __future__ import annotations

import pathlib, re, shlex

import pytest

README = pathlib.Path(__file__).parents[1] / 'README.md'
TEXT = README.read_text()
BLOCKS = re.findall(r'```(\w*)\n(.*?)```', TEXT, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == 'python']
SHELL = [line.split('#')[0].strip() for lang, code in BLOCKS if lang == '' for line in code.splitlines()]


def test_front_page_length_and_sections():
    assert len(TEXT.splitlines()) <= 150
    heads = re.findall(r'^## (.+)$', TEXT, re.M)
    assert heads[:3] == ['Two commands', 'Examples', 'Measured']
    assert {'make demo', 'make test'} <= set(SHELL)  # the two set-up commands (make test runs this file)


@pytest.mark.parametrize('i', range(len(PYTHON)))
def test_python_examples_run(i, capsys):
    "Each Python block runs as written, in a fresh namespace, with no network"
    exec(compile(PYTHON[i], f'README python block {i + 1}', 'exec'), {})


@pytest.mark.parametrize('line', [s for s in SHELL if s.startswith('fast-impl ')])
def test_shell_commands_run(line, capsys):
    "Each `fast-impl` line exits 0 and prints something"
    from fast_impl.app.cli import main
    assert main(shlex.split(line)[1:]) == 0
    assert capsys.readouterr().out.strip()


def test_every_shell_line_is_a_known_command():
    "No shell line in the README escapes the tests above: each is `make demo/test` or a `fast-impl` command"
    assert all(s in ('', 'make demo', 'make test') or s.startswith('fast-impl ') for s in SHELL), SHELL

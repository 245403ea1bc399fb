"Shared fixtures: golden text files (regenerate with `pytest --regen-golden`), tiny models, meta checks."
from __future__ import annotations

import os, pathlib

import pytest
from hypothesis import settings

# CI replays the same examples every run (a failure there is reproducible, never flaky); locally they vary
settings.register_profile('ci', derandomize=True, print_blob=True)
if os.environ.get('CI'): settings.load_profile('ci')

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def pytest_addoption(parser):
    parser.addoption('--regen-golden', action='store_true', default=False,
                     help='rewrite tests/golden/*.txt from the current output instead of comparing')


@pytest.fixture
def golden(request):
    "Compare text with tests/golden/NAME.txt: `golden('name', text)`; `--regen-golden` rewrites the file"
    regen = request.config.getoption('--regen-golden')

    def check(name: str, text: str):
        path = GOLDEN / f'{name}.txt'
        text = text.rstrip('\n') + '\n'
        if regen or not path.exists():
            if not regen:
                pytest.fail(f'golden file {path} is missing; run pytest --regen-golden to create it')
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        assert text == path.read_text(), f'output differs from {path} (pytest --regen-golden rewrites it)'
    return check

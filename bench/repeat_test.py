"""Run one pytest test N times in a row, each in a fresh process, and write how many passed (proof for a flaky
test).

    python bench/repeat_test.py tests/test_learner.py::test_distributed_groups_and_step -n 20
"""
from __future__ import annotations

import argparse, pathlib, subprocess, sys, time

ROOT = pathlib.Path(__file__).parents[1]


def run_once(test: str, timeout: int) -> tuple[bool, float, str]:
    "Run `test` once in a fresh pytest process: passed, seconds, the last line of its output"
    start = time.time()
    try:
        r = subprocess.run([sys.executable, '-m', 'pytest', test, '-q', '-p', 'no:cacheprovider'], cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
        ok, last = r.returncode == 0, (r.stdout.strip().splitlines() or [''])[-1]
    except subprocess.TimeoutExpired: ok, last = False, f'timed out after {timeout} s'
    return ok, time.time() - start, last


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('test', help='a pytest node id')
    ap.add_argument('-n', type=int, default=20, help='consecutive runs')
    ap.add_argument('--timeout', type=int, default=600, help='seconds allowed per run')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'repeat_test.md'), help='report file')
    args = ap.parse_args()
    rows, passed = [], 0
    for i in range(1, args.n + 1):
        ok, secs, last = run_once(args.test, args.timeout)
        passed += ok
        rows.append(f'| {i} | {"pass" if ok else "FAIL"} | {secs:.1f} | {last} |')
        print(rows[-1], flush=True)
    head = [f'# {args.test}: {passed}/{args.n} consecutive runs passed', '',
            f'{time.strftime("%Y-%m-%d %H:%M")}, each run a fresh `pytest` process.', '',
            '| run | result | seconds | pytest summary |', '| ---: | --- | ---: | --- |']
    pathlib.Path(args.out).write_text('\n'.join(head + rows) + '\n')
    print(f'{passed}/{args.n} passed; report: {args.out}')
    sys.exit(0 if passed == args.n else 1)


if __name__ == '__main__': main()

"""Splitting and summarising against the floor: building the model on meta plus one bare meta forward pass.

For each model, in one process and interleaved (so the machine's load hits every column alike), the median of
`--repeats` runs of: the floor (build on meta + `model(x)` under `no_grad` on meta), `split_stages` (build +
split), and `layer_summary` (build + summary). Targets: split <= 1.2x the floor, summary <= 1.3x. Writes
bench/results/floor.md.

    python bench/floor.py      # the models of bench/summary_bench.py plus two torchvision ones
    python bench/floor.py --models resnet50 --repeats 3 --out /tmp/floor.md
"""
from __future__ import annotations

import argparse, gc, pathlib, platform, statistics, sys, time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from summary_bench import MODELS as SUMMARY_MODELS  # noqa: E402  (the models of the summary benchmark)

MODELS = {**SUMMARY_MODELS, 'mobilenet_v3_large': 'torchvision', 'swin_t': 'torchvision'}
SIZE = (1, 3, 224, 224)
TARGETS = {'split': 1.2, 'summary': 1.3}


def _build(name: str):
    import timm, torch, torchvision
    with torch.device('meta'):
        if MODELS[name] == 'timm': return timm.create_model(name)
        return torchvision.models.get_model(name)


def floor(name: str) -> None:
    "Build on meta and run one bare forward pass on a meta input"
    import torch
    m = _build(name).eval()
    with torch.no_grad(): m(torch.zeros(SIZE, device='meta'))


def split(name: str) -> None:
    "Build on meta and cut into stage groups (one recorded pass inside)"
    from fast_impl import split_stages
    split_stages(_build(name))


def summary(name: str) -> None:
    "Build on meta and summarise every layer down to depth 3 (one recorded pass inside)"
    from fast_impl import layer_summary
    layer_summary(_build(name), input_size=SIZE, depth=3)


JOBS = {'floor': floor, 'split': split, 'summary': summary}


def measure(name: str, repeats: int) -> dict[str, float]:
    """Median seconds of each job on `name`, the jobs interleaved within each repeat (after one warm-up each);
    as `timeit` does, the garbage collector is off while a job runs (collected before each), so that a
    collection left by one job does not land in the next one's time"""
    for f in JOBS.values(): f(name)
    times = {k: [] for k in JOBS}
    for _ in range(repeats):
        for k, f in JOBS.items():
            gc.collect()
            gc.disable()
            try:
                t = time.perf_counter()
                f(name)
                times[k].append(time.perf_counter() - t)
            finally: gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: dict[str, dict[str, float]]) -> list[str]:
    out = ['| model | floor (s) | split (s) | split / floor | summary (s) | summary / floor |',
           '|---|---|---|---|---|---|']
    for name, t in rows.items():
        out.append(f"| {name} | {t['floor']:.3f} | {t['split']:.3f} | {t['split'] / t['floor']:.2f} | "
                   f"{t['summary']:.3f} | {t['summary'] / t['floor']:.2f} |")
    return out


def verdict(rows: dict[str, dict[str, float]]) -> list[str]:
    "The worst and the total ratio of each job against its target"
    out = []
    for job, target in TARGETS.items():
        worst = max(rows, key=lambda n: rows[n][job] / rows[n]['floor'])
        total = sum(t[job] for t in rows.values()) / sum(t['floor'] for t in rows.values())
        ok = 'within' if rows[worst][job] / rows[worst]['floor'] <= target else 'over'
        out.append(f"- {job}: worst {rows[worst][job] / rows[worst]['floor']:.2f}x ({worst}), all models "
                   f"together {total:.2f}x; target <= {target}x: {ok} on every model" if ok == 'within' else
                   f"- {job}: worst {rows[worst][job] / rows[worst]['floor']:.2f}x ({worst}), "
                   f"all models together {total:.2f}x; target <= {target}x: over on {worst}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='*', default=list(MODELS))
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--out', default=str(HERE / 'results' / 'floor.md'))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    rows = {}
    for name in a.models:
        rows[name] = measure(name, a.repeats)
        print(name, {k: round(v, 3) for k, v in rows[name].items()}, flush=True)
    text = ['# Splitting and summarising against the floor', '',
            f'Medians of {a.repeats} interleaved runs in one process (garbage collector off within a run, as '
            f'timeit), one torch thread, input {list(SIZE)}, '
            f'torch {torch.__version__}, {platform.processor() or platform.machine()}. The floor is building '
            f'the model on meta plus one bare meta forward pass; split is `split_stages` of a fresh meta '
            f'build, summary `layer_summary(depth=3)` of one.', '', *table(rows), '', *verdict(rows), '']
    pathlib.Path(a.out).write_text('\n'.join(text))
    print('\n'.join(text))


if __name__ == '__main__': main()

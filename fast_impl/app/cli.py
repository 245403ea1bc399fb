"The `fast-impl` command line: one subcommand per function below, parsers by `fastcore.script.anno_parser`."
from __future__ import annotations

__all__ = ['main', 'COMMANDS']

import inspect, sys, warnings
from enum import Enum
from typing import Annotated, Callable

from fastcore.script import anno_parser, store_true

from ..enums import Norm, Opt, Schedule, values
from ..registry import Registry

COMMANDS = Registry('command')
ARCH_HELP = 'a timm name, torchvision:NAME, fastai:xresnet18 or fast_impl:Plain18Layer'


class CliError(Exception):
    "Bad input from the command line: printed as one line, exit status 2"


class Fmt(str, Enum):
    "The output formats of the table commands (`--format`)"
    text = 'text'; markdown = 'markdown'; csv = 'csv'; html = 'html'


FmtArg = Annotated[str, {'choices': [f.value for f in Fmt]}]  # argparse lists the valid choices on a bad one


def command(f: Callable) -> Callable:
    "Register `f` as the subcommand `f.__name__` (a name taken twice is an error)"
    return COMMANDS.register()(f)


def _ints(s: str | None, what: str) -> tuple[int, ...] | None:
    "`--input 1,3,224,224` as a tuple of positive ints (None when not given: the model's own size)"
    if s is None: return None
    try: out = tuple(int(x) for x in s.split(','))
    except ValueError: out = ()
    if not out or min(out) < 1:
        raise CliError(f"{what} must be comma-separated positive integers such as 1,3,224,224, got {s!r}")
    return out


def _path(pieces) -> list:
    "A module path from command-line pieces: `4 0`, `4.0`, `layer1.0`, `layer1 0` all work; indices as ints"
    steps = [x.strip() for p in pieces for x in str(p).split('.')]
    if any(x == '' for x in steps):
        raise CliError(f"a module path has an empty step: {'.'.join(map(str, pieces))!r}")
    return [int(x) if x.lstrip('-').isdigit() else x for x in steps]


def _paths(at: str) -> list[list]:
    "`--at 'layer2, layer4'` (comma-separated module paths, spaces ignored) as a list of paths"
    paths = [_path([p]) for p in at.split(',') if p.strip()]
    if not paths:
        raise CliError(f"--at must be comma-separated module paths such as layer2,layer4 or 5,7; got {at!r}")
    return paths


def _render(report, fmt: Fmt) -> str:
    return {Fmt.text: str, Fmt.markdown: lambda r: r.to_markdown(),
            Fmt.csv: lambda r: r.to_csv().rstrip('\n'), Fmt.html: lambda r: r._repr_html_()}[Fmt(fmt)](report)


@command
def summary(arch: str,  # the architecture: a timm name, torchvision:NAME, fastai:NAME or fast_impl:NAME
            *path: str,  # the module whose children to list: index path `4 0` or `4.0`, or name `layer1.0`
            verbose: store_true = False):  # list each child's own children beneath it
    "List the children of ARCH, or of its module at PATH, with their layer counts (no weights are allocated)"
    from ..summary import arch_summary
    print(arch_summary(arch, _path(path), verbose=verbose))


@command
def layers(arch: str,  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
           input: str = None,  # input size, comma-separated, e.g. 1,3,224,224 (default: ARCH's own size)
           depth: int = 3,  # how many levels of the module tree to show
           format: FmtArg = 'text'):  # output format
    "Per-layer kernel shape, output shape, parameters and mult-adds of ARCH, from one pass on the meta device"
    from ..summary import layer_summary
    print(_render(layer_summary(arch, input_size=_ints(input, '--input'), depth=depth), format))


@command
def params(arch: str):  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
    "Table of the trainable parameter tensors of ARCH and their total (tied weights once)"
    from ..summary import count_parameters
    count_parameters(arch)


@command
def compare(*archs: str,  # two or more architectures
            input: str = None,  # input size for all, comma-separated (default: each ARCH's own size)
            format: FmtArg = 'text'):  # output format
    "Compare ARCHs: parameters, mult-adds, depth, output shape, parameters per stage, change from the first"
    if len(archs) < 2:
        raise CliError(f"compare needs two or more ARCHs, got {len(archs)}; for one: fast-impl layers ARCH")
    from ..summary import compare_archs
    print(_render(compare_archs(list(archs), input_size=_ints(input, '--input')), format))


def _lr_range(lr: str, warn: bool = True) -> tuple[float | None, float]:
    """`--lr LO:HI` or `--lr HI` as (lo or None, hi), each a positive, finite rate; a reversed range warns
    (with `warn`: not where the API that takes the rates warns itself)"""
    from ..checks import check_lr
    lo, _, hi = lr.rpartition(':')
    try: lo, hi = (check_lr(float(lo)) if lo else None), check_lr(float(hi))
    except ValueError:
        raise CliError(f"--lr must be LO:HI or HI with positive, finite rates, such as 1e-5:1e-3; "
                       f"got {lr!r}") from None
    if warn and lo is not None and lo > hi:
        warnings.warn(f"--lr {lr} is reversed: the stem gets the higher rate; "
                      f"write {hi:g}:{lo:g} for the usual order")
    return lo, hi


def _rates(lr: str | None, decay: float | None, warn: bool = True) -> tuple | None:
    "`--lr` and `--decay` checked, as (lo or None, hi, decay or None); None when neither is given"
    if lr is None and decay is None: return None
    lo, hi = _lr_range(lr or '1e-3', warn)
    if decay is not None and lo is not None:
        raise CliError('give either --lr LO:HI or --decay D (with an optional --lr HI), not both')
    if decay is not None:
        from ..checks import check_decay
        check_decay(decay)
    return lo, hi, decay


def _lrs(n: int, rates: tuple | None) -> list[float] | None:
    "Per-group learning rates from `_rates`: geometric from LO to HI (as fastai spreads a slice), or decaying"
    if rates is None: return None
    from ..lr import layer_decay, lr_spread
    lo, hi, decay = rates
    if decay is not None: return [float(x) for x in layer_decay(hi, n, decay)]
    return [hi] * n if lo is None else lr_spread(lo, hi, n)  # a single group: the slice's upper end (fastai)


@command
def groups(arch: str,  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
           stages: store_true = False,  # stem, one group per stage, head (the default)
           blocks: store_true = False,  # one group per block (BEiT-style layer decay; timm's own for timm)
           n: int = None,  # N contiguous groups balanced by parameters
           at: str = None,  # cut before these modules: comma-separated paths, e.g. `layer2,layer4` or `4,6`
           lr: str = None,  # learning rates LO:HI spread geometrically over the groups (or HI with --decay)
           decay: float = None,  # layer decay: each group gets D times the next group's rate
           format: FmtArg = 'text'):  # output format
    "Layer groups of ARCH for discriminative learning rates, with each group's name and learning rate"
    if sum([stages, blocks, n is not None, at is not None]) > 1:
        raise CliError('give one of --stages, --blocks, --n N, --at PATHS')
    rates = _rates(lr, decay)  # bad rates fail before the model is built
    from ..archs import resolve
    from ..split import group_table, named_groups
    model = resolve(arch)
    kind = n if n is not None else _paths(at) if at is not None else 'blocks' if blocks else 'stages'
    named = named_groups(model, kind)
    gs = [g for _, g in named]
    print(_render(group_table(model, gs, lrs=_lrs(len(gs), rates), names=[x for x, _ in named]), format))


NormArg = Annotated[str, {'choices': values(Norm)}]
OptArg = Annotated[str, {'choices': values(Opt)}]
ScheduleArg = Annotated[str, {'choices': values(Schedule)}]


def _groups_arg(groups: str) -> str | int:
    "`--groups stages|blocks|N` as the Learner takes it: a strategy name, or a number of groups"
    if groups in ('stages', 'blocks'): return groups
    if groups.isdigit() and int(groups) >= 1: return int(groups)
    raise CliError(f"--groups must be stages, blocks or a number of groups such as 4; got {groups!r}")


def _train_lr(lr: str, decay: float | None) -> float | slice:
    """`--lr HI` or `--lr LO:HI` (not with --decay) as the rate or the slice `train_archs` takes (which
    warns on a reversed slice: the warning comes once, from there)"""
    lo, hi, _ = _rates(lr, decay, warn=False)
    return hi if lo is None else slice(lo, hi)


@command
def train(*archs: str,  # architectures to train and compare
          data: str = None,  # cifar10, digits (the default), or an image folder with train/ and valid/
          digits: store_true = False,  # use the embedded scikit-learn digits (the default)
          epochs: int = 3,  # epochs per architecture
          lr: str = '3e-3',  # peak learning rate HI, or LO:HI spread over the layer groups (stem LO, head HI)
          decay: float = None,  # layer decay: the head's group gets --lr, each earlier group D times the next
          groups: str = 'stages',  # layer groups for the rates: stages, blocks, or a number of groups N
          pretrained: store_true = False,  # fine-tune from the registry's weights (every group, LR/100 to LR)
          weights: str = None,  # fine-tune from a local weights file, e.g. the best.pth of an earlier run
          bs: int = 64,  # batch size (smaller when there are fewer training images)
          size: int = 32,  # image size (seed 003: 224); too small for a model: an error names its smallest
          limit: int = None,  # at most N images per class (training and validation each) for a quick run
          norm: NormArg = None,  # normalisation; default: the arch's with weights, 0.5 on cifar10 (seed 003)
          opt: OptArg = 'adam',  # optimizer: fastai's Adam, or SGD with momentum 0.9 (seed 003)
          schedule: ScheduleArg = 'one_cycle',  # one_cycle (fastai), or constant (the seeds' fixed rate)
          device: str = None,  # cpu, cuda, cuda:1, ... (default: the GPU when there is one)
          out: str = 'fast_impl_train'):  # folder for the table, the plot and each ARCH's history and weights
    "Train ARCHs with fastai on the same data: per-epoch loss and accuracy, best weights, table and plot"
    if not archs: raise CliError('train needs at least one ARCH')
    if data and digits: raise CliError('give either --data FOLDER or --digits, not both')
    if pretrained and weights: raise CliError('give either --pretrained or --weights FILE, not both')
    rate = _train_lr(lr, decay)
    from .train import train_archs
    train_archs(list(archs), data=data, epochs=epochs, lr=rate, size=size, bs=bs, out=out, limit=limit,
                groups=_groups_arg(groups), decay=decay, pretrained=weights or pretrained, norm=norm, opt=opt,
                schedule=schedule, device=device)


@command
def demo(out: str = 'demo_out',  # folder for the results table and the plot
         seeds: int = 5,  # repeats of each fine-tuning method (each draws other labelled images)
         quick: store_true = False):  # a smaller run (for tests)
    "The main job on the embedded digits: summary, layer groups, discriminative fine-tuning, baselines, plot"
    from .demo import demo as run_demo
    run_demo(out=out, seeds=seeds, quick=quick)


def _usage() -> str:
    lines = ['usage: fast-impl COMMAND [options]   (fast-impl COMMAND --help for details)', '', 'commands:']
    lines += [f'  {k:<9} {f.__doc__}' for k, f in COMMANDS.items()]
    return '\n'.join(lines)


def _parser(name: str):
    p = anno_parser(COMMANDS[name], prog=f'fast-impl {name}')
    def error(msg): raise CliError(msg)
    p.error = error
    return p


def run(argv: list[str]) -> int:
    "Run the command line `argv` (without the program name); returns the exit status"
    if not argv or argv[0] in ('-h', '--help'): print(_usage()); return 0
    if argv[0] in ('-V', '--version'):
        from .. import __version__
        print(f'fast-impl {__version__}'); return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise CliError(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}")
    args = vars(_parser(name).parse_args(rest))
    args.pop('pdb', None); args.pop('xtra', None)
    f, pargs = COMMANDS[name], []
    for k, v in inspect.signature(COMMANDS[name]).parameters.items():  # positionals, in signature order
        if v.kind == v.VAR_POSITIONAL: pargs += args.pop(k) or []; break
        if v.default is v.empty: pargs.append(args.pop(k))
    return f(*pargs, **args) or 0


def _user_errors() -> tuple[type, ...]:
    """Exceptions that mean bad input (an unknown arch is a ValueError), a forward pass failing on the given
    input, or pretrained weights that cannot be fetched"""
    errs = [CliError, IndexError, KeyError, ValueError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError]
    stats, resolve = sys.modules.get('fast_impl.forward'), sys.modules.get('fast_impl.archs')
    if stats: errs.append(stats.ForwardError)
    if resolve: errs.append(resolve.WeightsUnavailableError)
    return tuple(errs)


class _OneLine:
    "`warnings.showwarning` for the CLI: each warning as one line (`fast-impl: warning: ...`), each line once"
    def __init__(self): self.seen = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        first = str(message).splitlines()[0] if str(message) else category.__name__
        if first in self.seen: return  # the same warning from another arch, phase or caller
        self.seen.add(first)
        print(f'fast-impl: warning: {first}', file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    "Entry point of `fast-impl`: bad input prints one line and exits with status 2; a warning is one line"
    with warnings.catch_warnings():
        warnings.showwarning = _OneLine()
        for cat in (DeprecationWarning, FutureWarning):  # meant for developers, not for users of the CLI
            warnings.filterwarnings('ignore', category=cat)
        try: return run(sys.argv[1:] if argv is None else argv)
        except SystemExit as e: return int(e.code or 0)  # --help
        except Exception as e:
            if not isinstance(e, _user_errors()): raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f'fast-impl: error: {msg}', file=sys.stderr)
            return 2


if __name__ == '__main__': sys.exit(main())

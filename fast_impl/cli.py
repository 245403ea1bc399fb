"The `fast-impl` command line: one subcommand per function below, parsers built by `fastcore.script.anno_parser`."
from __future__ import annotations

__all__ = ['main', 'COMMANDS']

import inspect, sys
from enum import Enum
from typing import Annotated, Callable

from fastcore.script import anno_parser, store_true

from .registry import Registry

COMMANDS = Registry('command')
ARCH_HELP = 'a timm name, torchvision:NAME, fastai:xresnet18 or fast_impl:Plain18Layer'


class CliError(Exception):
    "Bad input from the command line: printed as one line, exit status 2"


class Fmt(str, Enum):
    text = 'text'; markdown = 'markdown'; csv = 'csv'; html = 'html'


FmtArg = Annotated[str, {'choices': [f.value for f in Fmt]}]  # argparse lists the valid choices on a bad one


def command(f: Callable) -> Callable:
    "Register `f` as the subcommand `f.__name__` (a name taken twice is an error)"
    return COMMANDS.register()(f)


def _ints(s: str, what: str) -> tuple[int, ...]:
    try: out = tuple(int(x) for x in s.split(','))
    except ValueError: out = ()
    if not out or min(out) < 1: raise CliError(f"{what} must be comma-separated positive integers such as 1,3,224,224, got {s!r}")
    return out


def _path(steps) -> list:
    "Command-line path pieces (`4 0`, `layer1.0`) as a path for `get_module`"
    return [int(s) if s.lstrip('-').isdigit() else s for s in steps]


def _render(report, fmt: Fmt) -> str:
    return {Fmt.text: str, Fmt.markdown: lambda r: r.to_markdown(), Fmt.csv: lambda r: r.to_csv().rstrip('\n'),
            Fmt.html: lambda r: r._repr_html_()}[Fmt(fmt)](report)


@command
def summary(arch: str,  # the architecture: a timm name, torchvision:NAME, fastai:xresnet18 or fast_impl:Plain18Layer
            *path: str,  # index path (`4 0`) or dotted name (`layer1.0`) of the module whose children to list
            verbose: store_true = False):  # list each child's own children beneath it
    "List the children of ARCH, or of its module at PATH, with their layer counts (no weights are allocated)"
    from .summary import arch_summary
    print(arch_summary(arch, _path(path), verbose=verbose))


@command
def layers(arch: str,  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
           input: str = '1,3,224,224',  # input size, comma-separated
           depth: int = 3,  # how many levels of the module tree to show
           format: FmtArg = 'text'):  # output format
    "Per-layer kernel shape, output shape, parameters and mult-adds of ARCH, from one pass on the meta device"
    from .stats import layer_summary
    print(_render(layer_summary(arch, input_size=_ints(input, '--input'), depth=depth), format))


@command
def params(arch: str):  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
    "Table of the trainable parameter tensors of ARCH and their total (tied weights once)"
    from .summary import count_parameters
    count_parameters(arch)


@command
def compare(*archs: str,  # two or more architectures
            input: str = '1,3,224,224',  # input size, comma-separated
            format: FmtArg = 'text'):  # output format
    "Compare ARCHs: parameters, mult-adds, depth, output shape, parameters per stage, change against the first"
    if len(archs) < 1: raise CliError('compare needs at least one ARCH')
    from .stats import compare_archs
    print(_render(compare_archs(list(archs), input_size=_ints(input, '--input')), format))


def _lrs(n: int, lr: str | None, decay: float | None) -> list[float] | None:
    "Per-group learning rates from `--lr LO:HI` (geometric, as fastai spreads a slice) or `--lr HI --decay D`"
    if lr is None and decay is None: return None
    try: lo, _, hi = (lr or '1e-3').rpartition(':'); hi = float(hi); lo = float(lo) if lo else None
    except ValueError: raise CliError(f"--lr must be LO:HI or HI, such as 1e-5:1e-3, got {lr!r}") from None
    if decay is not None:
        if lo is not None: raise CliError('give either --lr LO:HI or --decay D (with an optional --lr HI), not both')
        from .learner import layer_decay
        return [float(x) for x in layer_decay(hi, n, decay)]
    if lo is None or n == 1: return [hi] * n  # fastai gives a single group the slice's upper end
    from fastcore.basics import even_mults  # how fastai spreads slice(lo, hi) over the groups
    return [float(x) for x in even_mults(lo, hi, n)]


@command
def groups(arch: str,  # the architecture (timm name, torchvision:NAME, fastai:NAME, fast_impl:NAME)
           stages: store_true = False,  # stem, one group per stage, head (the default)
           n: int = None,  # N contiguous groups balanced by parameters
           at: str = None,  # cut before these modules: comma-separated paths, e.g. `layer2,layer4` or `4,6`
           lr: str = None,  # learning rates LO:HI spread geometrically over the groups (or HI with --decay)
           decay: float = None,  # layer decay: each group gets D times the next group's rate
           format: FmtArg = 'text'):  # output format
    "Layer groups of ARCH for discriminative learning rates, with the learning rate each group gets"
    if sum([stages, n is not None, at is not None]) > 1: raise CliError('give one of --stages, --n N, --at PATHS')
    from .resolve import resolve
    from .split import group_table, split_at, split_n, split_stages
    model = resolve(arch)
    gs = split_n(model, n) if n is not None else split_at(model, [_path(p.split('.')) for p in at.split(',')]) \
        if at is not None else split_stages(model)
    print(_render(group_table(model, gs, lrs=_lrs(len(gs), lr, decay)), format))


@command
def train(*archs: str,  # architectures to train and compare
          data: str = None,  # an image folder with train/ and valid/ subfolders (one folder per class)
          digits: store_true = False,  # use the embedded scikit-learn digits (the default)
          epochs: int = 3,  # epochs per architecture
          lr: float = 3e-3,  # peak learning rate of the one-cycle schedule
          size: int = 32,  # image size
          out: str = 'fast_impl_train'):  # folder for the results table and the plot
    "Train ARCHs with fastai on the same data and compare them: results table and a plot of the curves"
    if not archs: raise CliError('train needs at least one ARCH')
    if data and digits: raise CliError('give either --data FOLDER or --digits, not both')
    from .experiments import train_archs
    train_archs(list(archs), data=data, epochs=epochs, lr=lr, size=size, out=out)


@command
def demo(out: str = 'demo_out',  # folder for the results table and the plot
         seeds: int = 5,  # repeats of each fine-tuning method (each draws other labelled images)
         quick: store_true = False):  # a smaller run (for tests)
    "The main job on the embedded digits: summary, layer groups, discriminative fine-tuning vs baselines, plot"
    from .experiments import demo as run_demo
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
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS: raise CliError(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}")
    args = vars(_parser(name).parse_args(rest))
    args.pop('pdb', None); args.pop('xtra', None)
    f, pargs = COMMANDS[name], []
    for k, v in inspect.signature(COMMANDS[name]).parameters.items():  # positionals, in signature order
        if v.kind == v.VAR_POSITIONAL: pargs += args.pop(k) or []; break
        if v.default is v.empty: pargs.append(args.pop(k))
    return f(*pargs, **args) or 0


def _user_errors() -> tuple[type, ...]:
    "Exceptions that mean bad input (an unknown arch is a ValueError), plus a forward pass failing on the given input"
    errs = [CliError, IndexError, KeyError, ValueError, FileNotFoundError]
    stats = sys.modules.get('fast_impl.stats')
    return tuple(errs + ([stats.ForwardError] if stats else []))


def main(argv: list[str] | None = None) -> int:
    "Entry point of `fast-impl`: bad input prints one line and exits with status 2"
    import warnings
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised inside fastai's import
    try: return run(sys.argv[1:] if argv is None else argv)
    except SystemExit as e: return int(e.code or 0)  # --help
    except Exception as e:
        if not isinstance(e, _user_errors()): raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f'fast-impl: error: {msg}', file=sys.stderr)
        return 2


if __name__ == '__main__': sys.exit(main())

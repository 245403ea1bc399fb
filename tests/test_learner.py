"fastai integration: Learners for hard archs, per-group LRs reaching the optimizer, freezing, wd policy, DDP."
from __future__ import annotations

import contextlib, time, warnings

import numpy as np
import pytest
import torch
from torch import nn

from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, Normalize
from fastai.optimizer import SGD
from fastai.torch_core import TensorImage

from fast_impl.fastai import (DiscriminativeLearner, arch_stats, build_model, classifier_name,
                              discriminative_learner)
from fast_impl.layers import is_norm
from fast_impl.lr import layer_decay
from fast_impl.optim import no_decay_params
from fast_impl.archs import resolve
from fast_impl.split import GroupError

torch.set_num_threads(1)  # tiny models; on a busy machine 2 threads spin (10x slower)


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        yield


class _Get:
    "Index -> item of a tensor (picklable)"
    def __init__(self, t, image=False): self.t, self.image = t, image
    def __call__(self, i): return TensorImage(self.t[i]) if self.image else int(self.t[i])


def synth_dls(n_train=4, n_valid=2, size=32, n_classes=2, bs=4, seed=0):
    "Tiny random images: one training batch of `n_train`, one validation batch"
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_valid
    x, y = torch.rand(n, 3, size, size, generator=g), torch.arange(n) % n_classes
    dsets = Datasets(range(n), tfms=[[_Get(x, True)], [_Get(y), Categorize(vocab=list(range(n_classes)))]],
                     splits=[list(range(n_train)), list(range(n_train, n))])
    return dsets.dataloaders(bs=bs, shuffle=False, drop_last=False, num_workers=0)


class LRProbe(Callback):
    "Record the scheduler's peak LR per group and the LRs each optimizer step used"
    order = 100
    def before_fit(self):
        sched = [cb for cb in self.learn.cbs if isinstance(cb, ParamScheduler)]
        self.peak = np.array(sched[0].scheds['lr'](0.25)) if sched else None
        self.used = []
    def before_step(self): self.used.append(np.array([h['lr'] for h in self.opt.hypers]))


ARCHS = {'convnext_nano': {}, 'timm:swin_tiny_patch4_window7_224': dict(img_size=32, window_size=2),
         'torchvision:vit_b_16': dict(image_size=32), 'torchvision:mobilenet_v2': {}, 'fastai:xresnet18': {}}


def trainable_ok(learn, k):
    "Groups >= k fully trainable; in groups < k exactly the no-decay (norm, scale, token) tensors train"
    keep = {id(p) for p in no_decay_params(learn.model, with_bias=False)}
    for i, g in enumerate(learn.opt.param_lists):
        want = [True] * len(g) if i >= k else [id(p) in keep for p in g]
        assert [p.requires_grad for p in g] == want, f'group {i} after freeze_to({k})'


@pytest.mark.parametrize('arch', list(ARCHS))
def test_arch(arch):
    learn = discriminative_learner(synth_dls(), arch, groups='stages', **ARCHS[arch])
    assert isinstance(learn.model(torch.rand(2, 3, 32, 32)), torch.Tensor)
    probe = LRProbe()
    learn.fit_one_cycle(1, lr_max=slice(1e-5, 1e-3), cbs=probe)
    n = len(learn.opt.param_lists)
    assert n >= 3, f'{arch}: only {n} groups'
    np.testing.assert_allclose(probe.peak, np.geomspace(1e-5, 1e-3, n), rtol=1e-9)
    assert len(probe.used) == 1  # one batch ran, at the start of the cycle: peak / div
    np.testing.assert_allclose(probe.used[0], np.geomspace(1e-5, 1e-3, n) / 25, rtol=1e-6)
    for k in (n - 1, 1, 0):
        learn.freeze_to(k)
        trainable_ok(learn, k)
    lrs = layer_decay(1e-3, n, 0.5)
    learn.fit_one_cycle(1, lr_max=lrs, cbs=probe)
    np.testing.assert_allclose(probe.peak, lrs, rtol=1e-9)
    np.testing.assert_allclose(probe.used[0], lrs / 25, rtol=1e-6)


class Toy(nn.Module):
    "A small CNN with a root-held parameter, tied conv weights and GroupNorm"
    def __init__(self, n_out=2):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))  # root-held (`scale` would hit the late-use rule)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8),
                                                    nn.ReLU()) for _ in range(4)])
        self.blocks[3][0].weight = self.blocks[1][0].weight
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, n_out)

    def forward(self, x): return self.fc(self.pool(self.blocks(self.stem(x) * self.alpha)))


class StepProbe(Callback):
    "Before each step, keep every parameter with a gradient, its gradient and its group's LR"
    def before_step(self):
        self.before = {id(p): (p.detach().clone(), p.grad.detach().clone(), h['lr'])
                       for pg, h in zip(self.opt.param_lists, self.opt.hypers) for p in pg
                       if p.grad is not None}
        self.others = {id(p): p.detach().clone() for p in self.learn.model.parameters() if p.grad is None}


def test_step_updates_each_param_once():
    learn = discriminative_learner(synth_dls(), Toy(), groups=3, opt_func=SGD)
    probe = StepProbe()
    learn.fit(1, lr=slice(1e-3, 1e-1), cbs=probe)
    params = {id(p): p for p in learn.model.parameters()}
    assert len(learn.opt.param_lists) == 3 and len({lr for *_, lr in probe.before.values()}) == 3
    assert len(probe.before) == len(params)  # tied weight counted once, root `alpha` included
    for i, (old, g, lr) in probe.before.items():  # plain SGD, wd 0: p <- p - lr * grad, once
        torch.testing.assert_close(params[i].detach(), old - lr * g, rtol=0, atol=1e-7)


def test_bad_splitter_raises_with_names():
    with pytest.raises(GroupError, match='fc.weight'):  # checked at construction, not at the first fit
        twice = lambda m: [list(m.parameters()), list(m.fc.parameters())]
        discriminative_learner(synth_dls(), Toy(), groups=twice)
    learn = discriminative_learner(synth_dls(), Toy(), groups=3)
    learn.splitter = lambda m: [list(m.fc.parameters())]  # a splitter set later is checked by create_opt
    with pytest.raises(GroupError, match='stem.0.weight'): learn.create_opt()


def test_freeze_single_group_warns():
    learn = discriminative_learner(synth_dls(), Toy(), groups=lambda m: [list(m.parameters())])
    with pytest.warns(UserWarning, match='single parameter group'): learn.freeze()


def test_layer_decay():
    np.testing.assert_allclose(layer_decay(1e-3, 4, 0.5), [1.25e-4, 2.5e-4, 5e-4, 1e-3])
    assert layer_decay(1e-2, 1).tolist() == [1e-2]
    for bad in (0, -1, 2.5, 'x'):
        with pytest.raises(ValueError, match='n_groups'): layer_decay(1e-3, bad)
    with pytest.raises(ValueError, match='decay'): layer_decay(1e-3, 3, 0)


def test_no_decay_policy():
    import timm.layers as tl
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), tl.BatchNormAct2d(4), tl.LayerNorm2d(4),
                      tl.LayerScale2d(4), nn.RMSNorm(4), nn.Linear(4, 4, bias=False))
    names = lambda ps: sorted(n for n, p in m.named_parameters() if any(p is q for q in ps))
    assert names(no_decay_params(m, with_bias=False)) == ['1.bias', '1.weight', '2.bias', '2.weight',
                                                         '3.bias', '3.weight', '4.gamma', '5.weight']
    assert names(no_decay_params(m)) == ['0.bias'] + names(no_decay_params(m, with_bias=False))
    assert all(is_norm(l) for l in m[1:4]) and not is_norm(m[0]) and not is_norm(m[6])
    vit = resolve('vit_small_patch14_reg4_dinov2')  # on meta: the policy needs no weights
    nd = {n for n, p in vit.named_parameters() if any(p is q for q in no_decay_params(vit, False))}
    assert {'cls_token', 'reg_token', 'pos_embed', 'blocks.0.norm1.weight'} <= nd
    assert 'blocks.0.attn.qkv.weight' not in nd
    swin = resolve('swin_tiny_patch4_window7_224')  # timm's no_weight_decay() names
    assert 'layers.0.blocks.0.attn.relative_position_bias_table' in {
        n for n, p in swin.named_parameters() if any(p is q for q in no_decay_params(swin, False))}


def test_wd_policy_reaches_optimizer():
    learn = discriminative_learner(synth_dls(), Toy(), groups=3)
    learn.create_opt()
    no_wd = {id(p) for p in no_decay_params(learn.model)}
    for p in learn.model.parameters():
        assert learn.opt.state[p].get('do_wd', True) == (id(p) not in no_wd)
    learn.freeze()
    gn = learn.model.blocks[0][1].weight  # GroupNorm: fastai's own list would freeze it
    assert gn.requires_grad and not learn.model.blocks[0][0].weight.requires_grad


def test_pretrained_from_file(tmp_path):
    src = Toy(n_out=7)
    path = tmp_path / 'toy.pth'
    torch.save(src.state_dict(), path)
    dls = synth_dls()
    learn = discriminative_learner(dls, Toy, groups=3, pretrained=path)
    torch.testing.assert_close(learn.model.stem[0].weight, src.stem[0].weight)
    assert learn.model.fc.out_features == 2
    assert learn.opt.frozen_idx == len(learn.opt.param_lists) - 1  # freeze() applied
    norm = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(norm) == 1 and torch.allclose(norm[0].mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.save({'model': {f'module.{k}': v for k, v in src.state_dict().items()}}, path)  # a DDP checkpoint
    build_model(Toy, 2, pretrained=path)
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith('stem')}, path)
    with pytest.raises(ValueError, match='stem.0.weight'): build_model(Toy, 2, pretrained=path)


def test_heads_and_stats():
    m = build_model('torchvision:googlenet', 3)  # aux classifiers dropped: forward gives logits in training
    assert m.aux1 is None and m(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    assert classifier_name(resolve('torchvision:squeezenet1_0')) == 'classifier.1'
    assert classifier_name(resolve('torchvision:maxvit_t')) == 'classifier.5'
    assert arch_stats(resolve('vit_tiny_patch16_224'))[0] == [0.5, 0.5, 0.5]
    assert arch_stats(resolve('torchvision:resnet18'))[1] == [0.229, 0.224, 0.225]
    with pytest.raises(ValueError, match='meta'): build_model(resolve('fastai:xresnet18'), 2)


def test_show_and_plot_groups():
    learn = discriminative_learner(synth_dls(), Toy(), groups=3)
    learn.freeze()
    rep = learn.show_groups()
    df = rep.to_df()
    assert len(df) == 3 and df.params.sum() == sum(p.numel() for p in learn.model.parameters())
    assert df.frozen.tolist() == [True, True, False] and df['last'].iloc[-1] == 'fc'
    assert df.name.tolist() == ['group 1', 'group 2', 'head'] and df.no_wd.tolist()[-1] == 1  # fc.bias
    assert 'Total params' in str(rep) and '<table>' in rep._repr_html_() and '| group |' in rep.to_markdown()
    fig = learn.plot_groups()
    assert len(fig.axes) == 2


def _ddp_train(rank: int, world: int):
    "Train DDP on this rank's own images; returns plain data only: the Learner and DDP die with this frame"
    import torch.distributed as dist
    torch.manual_seed(0)  # each rank trains on its own images: equal weights need synchronised gradients
    learn = discriminative_learner(synth_dls(seed=rank), 'fastai:xresnet18', groups='stages', widen=0.25)
    learn.model = nn.parallel.DistributedDataParallel(learn.model)  # as fastai's DistributedTrainer does
    learn.create_opt()
    names = {id(p): n for n, p in learn.model.module.named_parameters()}
    mine = [[names[id(p)] for p in g] for g in learn.opt.param_lists]
    every = [None] * world
    dist.all_gather_object(every, mine)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=slice(1e-4, 1e-2))
    sums = [None] * world
    dist.all_gather_object(sums, [float(p.detach().double().sum()) for p in learn.model.parameters()])
    return rank, every, sums, len(mine)


def _ddp_worker(rank, world, store, q):
    """One rank. Clean shutdown order: the DDP model (which holds the process group) is freed, then every
    rank waits at a barrier, then the group is destroyed (a rank that exits with it alive aborts in gloo)"""
    import datetime, gc
    import torch.distributed as dist
    torch.set_num_threads(1)  # two ranks on a small machine: no oversubscription
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # a file store: no port to collide on
    try:
        q.put(_ddp_train(rank, world))
        gc.collect()  # the Learner's reference cycles hold the DDP model and, through it, the process group
        dist.barrier()
    finally: dist.destroy_process_group()


def test_distributed_groups_and_step(tmp_path):
    import torch.multiprocessing as mp
    q = mp.get_context('spawn').Queue()
    procs = mp.start_processes(_ddp_worker, args=(2, tmp_path / 'store', q), nprocs=2, join=False,
                               start_method='spawn')
    try:
        res = [q.get(timeout=300) for _ in range(2)]  # a rank that dies early fails the test here, no hang
        deadline = time.monotonic() + 120
        while not procs.join(timeout=5):  # raises if a rank exits non-zero (SIGABRT at teardown included)
            assert time.monotonic() < deadline, 'a rank did not exit within 2 minutes of training'
    finally:
        for p in procs.processes:
            if p.is_alive(): p.kill()
    for rank, every, sums, n in res:
        assert n >= 3 and every[0] == every[1]  # identical groups, by name, on both ranks
        assert sums[0] == sums[1]  # one synchronised step: identical weights


def test_export_roundtrip(tmp_path):
    from fastai.learner import load_learner
    learn = discriminative_learner(synth_dls(), 'fastai:xresnet18', groups='stages', widen=0.25)
    learn.freeze()
    learn.export(tmp_path / 'learn.pkl')  # the splitter must pickle (a closure would not)
    back = load_learner(tmp_path / 'learn.pkl')
    assert isinstance(back, DiscriminativeLearner) and back.splitter.groups == 'stages'
    back.create_opt()
    assert len(back.opt.param_lists) == len(learn.opt.param_lists)


def test_vision_learner_with_stage_splitter():
    from fastai.vision.learner import vision_learner
    from fastai.vision.models.xresnet import xresnet18
    from fast_impl.split import stage_splitter
    learn = vision_learner(synth_dls(), xresnet18, pretrained=False, normalize=False,
                           splitter=stage_splitter())
    learn.freeze()  # fastai's Sequential(body, head): the head group is fastai's whole head
    n = len(learn.opt.param_lists)
    assert n >= 5 and all(p.requires_grad for p in learn.model[1].parameters())
    assert set(map(id, learn.opt.param_lists[-1])) == set(map(id, learn.model[1].parameters()))
    probe = LRProbe()
    learn.fit_one_cycle(1, lr_max=slice(1e-5, 1e-3), cbs=probe)
    np.testing.assert_allclose(probe.peak, np.geomspace(1e-5, 1e-3, n), rtol=1e-9)


class _MlpHead(nn.Module):
    "A torchvision backbone without its classifier and a new MLP head (Linear, BatchNorm1d, ...)"
    def __init__(self):
        super().__init__()
        import torchvision
        self.backbone = torchvision.models.resnet18()
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(64, 2))

    def forward(self, x): return self.head(self.backbone(x))


def test_new_head_trains_while_frozen():
    "Every layer of a new MLP head is in the head group, so freeze() leaves it trainable; head= adds modules"
    learn = discriminative_learner(synth_dls(), _MlpHead())
    learn.freeze()
    m = learn.model
    assert all(p.requires_grad for p in m.head.parameters())
    assert not m.backbone.layer4[0].conv1.weight.requires_grad
    learn = discriminative_learner(synth_dls(), _MlpHead(), head='backbone.layer4')
    learn.freeze()
    assert learn.model.backbone.layer4[0].conv1.weight.requires_grad
    assert learn.n_groups == 5  # layer4 joined the head
    assert learn.splitter.head == 'backbone.layer4'
    with pytest.raises(ValueError, match='head= applies to'):
        discriminative_learner(synth_dls(), _MlpHead(), groups=lambda m: [list(m.parameters())], head='head')
    with pytest.raises(KeyError, match="no child named 'nope'"):
        discriminative_learner(synth_dls(), _MlpHead(), head='nope')

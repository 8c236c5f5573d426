import copy
import itertools
import json

import pytest
import torch
from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
from torch.utils.flop_counter import FlopCounterMode

from supernets import (Architecture, ArchitectureError, Block, CheckpointError, Subnet, Supernet, arch_cost,
                       default_space, load_ofa_state_dict, recalibrate_bn)
from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

from supernets.layers import stage_forward

VARIANTS = list(itertools.product([False, True], [False, True], [False, True]))  # dense, parallel, early_exits


def _ids(v):
    dense, parallel, ee = v
    return ("D" if dense else "") + ("P" if parallel else "") + ("" if dense or parallel else "B") + ("-EE" if ee else "-SE")


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def _perturb(net):
    """Random BN statistics and affine values, so that equality checks see every tensor."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
        for name, p in net.named_parameters():
            if name.endswith("matrix"):
                p.add_(torch.randn_like(p) * 0.05)


@pytest.fixture(scope="module", params=VARIANTS, ids=_ids)
def supernet(request):
    dense, parallel, ee = request.param
    torch.manual_seed(1)
    net = Supernet(7, 1.0, dense=dense, parallel=parallel, early_exits=ee)
    _perturb(net)
    return net


def _extraction_modes(net, arch):
    if not net.early_exits:
        return [None]
    modes = [None, "all"]
    if arch.exit > 1:
        modes.append([1, arch.exit])
    return modes


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_supernet_equals_extracted_subnet(supernet, mode, rng):
    x = torch.randn(3, 3, 32, 32)
    archs = [supernet.space.min_arch(), supernet.space.max_arch()] + supernet.space.sample(rng, 3)
    for arch in archs:
        for exits in _extraction_modes(supernet, arch):
            supernet.train(mode == "train")
            supernet.set_active(arch, exits)
            subnet = supernet.extract(arch, exits)
            torch.manual_seed(5)
            expected = _as_tuple(supernet(x))
            torch.manual_seed(5)
            got = _as_tuple(subnet(x))
            assert len(got) == len(expected) == len(subnet.exit_list)
            for a, b in zip(expected, got):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_extracted_subnet_is_standalone_and_owns_its_weights(supernet, rng):
    arch = supernet.space.sample(rng, 1)[0]
    subnet = supernet.extract(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    before = subnet(x)
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(1.0)
    torch.testing.assert_close(subnet(x), before)
    with torch.no_grad():
        for p in supernet.parameters():
            p.sub_(1.0)


def test_rebuilt_from_config_and_weights_gives_same_output(supernet, rng, tmp_path):
    arch = supernet.space.sample(rng, 1)[0]
    subnet = supernet.extract(arch, "all" if supernet.early_exits else None).eval()
    (tmp_path / "config.json").write_text(json.dumps(subnet.config))
    torch.save(subnet.state_dict(), tmp_path / "weights.pt")
    rebuilt = Subnet(**json.loads((tmp_path / "config.json").read_text()))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    rebuilt.eval()
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(_as_tuple(subnet(x)), _as_tuple(rebuilt(x))):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_analytic_costs_equal_counted_costs(supernet, rng):
    for arch in [supernet.space.min_arch(), supernet.space.max_arch()] + supernet.space.sample(rng, 4):
        for exits in _extraction_modes(supernet, arch):
            subnet = supernet.extract(arch, exits).eval()
            with FlopCounterMode(display=False) as counter:
                subnet(torch.randn(1, 3, arch.resolution, arch.resolution))
            cost = arch_cost(arch, supernet.n_classes, exits)
            assert cost.params == sum(p.numel() for p in subnet.parameters())
            assert cost.macs * 2 == counter.get_total_flops()


def test_costs_at_other_resolution_and_width(rng):
    net = Supernet(10, 1.2, parallel=True, space=default_space(True, False, 1.2, resolutions=(40, 57)))
    for arch in net.space.sample(rng, 3):
        subnet = net.extract(arch).eval()
        with FlopCounterMode(display=False) as counter:
            subnet(torch.randn(1, 3, arch.resolution, arch.resolution))
        assert arch_cost(arch, 10).macs * 2 == counter.get_total_flops()
        assert arch_cost(arch, 10).params == sum(p.numel() for p in subnet.parameters())


def test_width_multiplier_is_applied_once_to_heads():
    net = Supernet(10, 1.2)
    head = net.exits["5"]
    assert head.final_expand.conv.out_channels == 1152  # make_divisible(960 * 1.2)
    assert head.classifier.in_features == 1536  # make_divisible(1280 * 1.2)
    ee = Supernet(10, 1.0, early_exits=True)
    assert sorted(ee.exits) == ["1", "2", "3", "4", "5"]
    assert ee.exits["1"].final_expand.conv.out_channels == 144  # 6 x 24
    assert ee.exits["5"].classifier.in_features == 1280


def test_parallel_block_sums_the_branches_of_its_key():
    net = Supernet(10, parallel=True).eval()
    block = net.stages[1][2]
    x = torch.randn(2, block.mbconv.in_channels, 8, 8)
    mb = block.mbconv(x) + x
    c1 = block.conv1x1(x)
    tr = block.transform(x)
    for key, expected in [(4, mb), (7, mb + c1 + tr), (1, tr), (2, c1), (3, c1 + tr), (5, mb + tr), (6, mb + c1)]:
        block.key = key
        torch.testing.assert_close(block(x), expected)
    first = net.stages[2][0].transform
    assert isinstance(first.pool, torch.nn.MaxPool2d) and first.pool.ceil_mode
    assert first.conv.bias is not None


def test_dense_stage_forward_follows_the_ofav2_paper():
    outs = []

    class Record(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, x):
            y = x * 10 + self.i
            outs.append(y)
            return y

    blocks = [Record(i) for i in range(4)]
    for depth in (2, 3, 4):
        outs.clear()
        y = stage_forward(blocks[:depth], torch.tensor([1.0]), dense=True)
        o = outs
        expected = o[1] if depth == 2 else o[2] + o[0] if depth == 3 else o[3] + o[0] + o[1]
        torch.testing.assert_close(y, expected)
        if depth == 4:  # input of block 3 = o_2 + o_0
            torch.testing.assert_close(o[3], (o[2] + o[0]) * 10 + 3)


def test_early_exit_subnet_has_no_later_stages():
    net = Supernet(10, early_exits=True)
    arch = Architecture(32, 1.0, [[Block(3, 3)] * 2, [Block(5, 4)] * 3])
    subnet = net.extract(arch)
    assert len(subnet.stages) == 2 and list(subnet.exits) == ["2"]
    assert subnet(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_set_active_rejects_architectures_outside_the_space():
    net = Supernet(10)
    bad_key = Architecture(32, 1.0, [[Block(3, 3, key=7)] * 2] * 5)
    with pytest.raises(ArchitectureError, match=r"key of stage 1 block 1 = 7.*\(4,\)"):
        net.set_active(bad_key)
    with pytest.raises(ArchitectureError, match=r"width = 1.2"):
        net.set_active(Architecture(32, 1.2, [[Block(3, 3)] * 2] * 5))
    with pytest.raises(ArchitectureError, match=r"exit = 3"):
        net.set_active(Architecture(32, 1.0, [[Block(3, 3)] * 2] * 3))
    with pytest.raises(ArchitectureError, match=r"exits = 'all' needs an early-exit"):
        net.extract(net.space.max_arch(), "all")
    ee = Supernet(10, early_exits=True)
    for bad in ([1, 3], [3, 2, 5], ["1", 5], []):
        with pytest.raises(ArchitectureError, match=r"ending at 5"):
            ee.extract(ee.space.max_arch(), bad)


def test_sample_active_set_max_set_min(rng):
    net = Supernet(10, dense=True, parallel=True, early_exits=True)
    arch = net.sample_active(rng)
    assert net.active_arch == arch
    net.set_max()
    assert net.active_arch.depths == (4,) * 5 and net.active_arch.stages[0][0] == Block(7, 6, 7)
    net.set_min()
    assert net.active_arch.exit == 1 and net.active_arch.stages[0] == (Block(3, 3, 4),) * 2


def test_reset_heads_changes_every_exit():
    net = Supernet(10, early_exits=True)
    net.reset_heads(3)
    net.eval().set_active(net.space.max_arch(), "all")
    assert [y.shape for y in net(torch.randn(1, 3, 32, 32))] == [(1, 3)] * 5


def _ofa_args(arch):
    ks, es = [], []
    for stage in arch.stages:
        ks += [b.kernel for b in stage] + [3] * (4 - len(stage))
        es += [b.expand for b in stage] + [3] * (4 - len(stage))
    return dict(ks=ks, e=es, d=list(arch.depths))


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_ofa_weights_give_identical_outputs(width, rng):
    torch.manual_seed(3)
    ofa_net = OFAMobileNetV3(n_classes=10, width_mult=width, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                             depth_list=[2, 3, 4])
    _perturb(ofa_net)
    ours = Supernet(10, width)
    load_ofa_state_dict(ours, ofa_net.state_dict())
    ours.eval()
    ofa_net.eval()
    x = torch.randn(2, 3, 32, 32)
    for arch in [ours.space.min_arch(), ours.space.max_arch()] + ours.space.sample(rng, 3):
        ofa_net.set_active_subnet(**_ofa_args(arch))
        ours.set_active(arch)
        torch.testing.assert_close(ours(x), ofa_net(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.extract(arch)(x), ofa_net.get_active_subnet().eval()(x), rtol=1e-4, atol=1e-5)


def test_ofa_checkpoint_with_wrong_shape_is_rejected():
    ofa_net = OFAMobileNetV3(n_classes=1000, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    with pytest.raises(CheckpointError, match=r"classifier.linear.weight.*reset_heads"):
        load_ofa_state_dict(Supernet(10), ofa_net.state_dict())
    with pytest.raises(CheckpointError, match=r"unexpected key 'foo.weight'"):
        load_ofa_state_dict(Supernet(10), {"foo.weight": torch.zeros(1)})


def test_bn_recalibration_sets_statistics_of_the_calibration_data(rng):
    net = Supernet(10)
    arch = net.space.sample(rng, 1)[0]
    subnet = net.extract(arch).eval()
    images = torch.randn(40, 3, 32, 32) * 3 + 2
    loader = [(images[i:i + 10], torch.zeros(10)) for i in range(0, 40, 10)]
    recalibrate_bn(subnet, loader)
    stem = subnet.stem
    with torch.no_grad():
        feats = stem.conv(images)
    torch.testing.assert_close(stem.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not subnet.training
    net.set_active(arch)
    recalibrate_bn(net, loader)
    torch.testing.assert_close(net.extract(arch).eval()(images[:4]), subnet(images[:4]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_bn(subnet, [])


@pytest.mark.parametrize("variant", [(True, True, True), (False, False, False)], ids=_ids)
def test_bn_recalibration_in_place_equals_ofas_and_copies_nothing(variant, rng, monkeypatch):
    """The active subnet's statistics equal `ofa`'s set_running_statistics on the same batches
    (to 1e-6), the rest keep theirs, the mode is kept, and the supernet is not deep-copied."""
    dense, parallel, ee = variant
    net = Supernet(10, dense=dense, parallel=parallel, early_exits=ee, space=default_space(parallel, ee, 1.0, (24,)))
    _perturb(net)
    net.set_active(net.space.sample(rng, 1)[0])
    reference = copy.deepcopy(net)
    before = {k: v.clone() for k, v in net.named_buffers()}
    images = torch.randn(30, 3, 24, 24) * 2 + 1
    loader = [(images[i:i + 8], None) for i in range(0, 30, 8)]   # a short last batch
    set_running_statistics(reference, loader)
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("recalibrate_bn copied the model"))
    net.train()
    recalibrate_bn(net, loader)
    assert net.training
    ours, theirs = dict(net.named_buffers()), dict(reference.named_buffers())
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-6)
    assert not torch.equal(ours["stem.bn.running_mean"], before["stem.bn.running_mean"])


def test_bn_recalibration_restores_the_layers_when_a_forward_fails():
    from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicBatchNorm2d

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            self.bn(x)
            raise RuntimeError("broken batch")
    model = Failing()
    with pytest.raises(RuntimeError, match="broken batch"):
        recalibrate_bn(model, [(torch.randn(2, 3, 4, 4), None)])
    assert "forward" not in model.bn.__dict__ and not DynamicBatchNorm2d.SET_RUNNING_STATISTICS
    assert torch.equal(model.bn.running_mean, torch.zeros(3))

"""Training-free scores: ICD against a direct numpy computation, Synflow against hand computations,
no overflow on a deep OFAv2 subnet, and the scored network left untouched."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from supernets import Supernet, default_space
from supernets.zero_cost import activation_layers, icd, synflow, training_free_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.Hardswish(), nn.Linear(6, 3))


def _numpy_icd(codes_per_layer: list[np.ndarray]) -> float:
    total = sum(((c - c.mean(axis=0)) ** 2).sum(axis=1) for c in codes_per_layer)
    return float(np.sqrt(total).mean())


@pytest.mark.parametrize("n", [2, 5, 100])
def test_icd_equals_a_direct_numpy_computation(n):
    net = _toy().eval()
    x = torch.randn(n, 3, 5, 5)
    with torch.no_grad():
        a1 = net[2](net[1](net[0](x)))
        a2 = net[5](net[4](net[3](a1)))
    codes = [(a > 0).flatten(1).double().numpy() for a in (a1, a2)]
    assert icd(net, x) == pytest.approx(_numpy_icd(codes), rel=1e-12)
    assert icd(net, x, layers=[net[2]]) == pytest.approx(_numpy_icd(codes[:1]), rel=1e-12)


def test_icd_hooks_activation_modules_and_restores_the_model():
    net = _toy().train()
    assert activation_layers(net) == [net[2], net[5]]
    x = torch.randn(4, 3, 5, 5)
    first = icd(net, x)
    assert net.training and all(not m._forward_hooks for m in net.modules())
    assert icd(net, x) == first  # eval mode: BN statistics were not updated by the first call
    same = torch.zeros(4, 3, 5, 5)
    assert icd(net, same) == 0.0  # identical images share every code


def test_icd_rejects_bad_input_and_never_hides_errors():
    net = _toy()
    with pytest.raises(ValueError, match="at least 2 images"):
        icd(net, torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="no layer to hook"):
        icd(nn.Sequential(nn.Flatten(), nn.Linear(75, 2)), torch.randn(3, 3, 5, 5))
    with pytest.raises(RuntimeError):  # wrong image size: the model's own error, hooks removed
        icd(net, torch.randn(3, 3, 6, 6))
    assert all(not m._forward_hooks for m in net.modules())


def test_synflow_of_a_two_layer_linear_network_by_hand():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    w1, w2 = (np.abs(m.weight.detach().double().numpy()) for m in (net[1], net[3]))
    # R = 1' |W2| |W1| 1; dR/dW1 = (1'|W2|)' 1', dR/dW2 = 1 (|W1| 1)'
    g1 = np.outer(w2.sum(axis=0), np.ones(3))
    g2 = np.outer(np.ones(2), w1.sum(axis=1))
    expected = (w1 * g1).sum() + (w2 * g2).sum()
    assert synflow(net, 1, in_channels=3) == pytest.approx(math.log10(expected), abs=1e-12)


def _convnet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.Conv2d(5, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3, bias=False))


def test_synflow_of_a_conv_network_removes_bn_and_is_layers_times_r():
    """Without biases the abs network is positively homogeneous in every layer, so each layer's
    sum |theta * dR/dtheta| equals R: the score is (number of layers) x R."""
    net = _convnet()
    with torch.no_grad():
        net[1].weight.fill_(7.0)  # BN must be gone: its scale would change R
        net[1].running_var.fill_(0.01)
    w = [m.weight.detach().double().abs() for m in (net[0], net[3], net[6])]
    x = torch.ones(1, 3, 6, 6, dtype=torch.float64)
    h = torch.nn.functional.conv2d(x, w[0], padding=1)
    h = torch.nn.functional.conv2d(h, w[1], padding=1)
    r = float((h.flatten(1) @ w[2].T).sum())
    assert synflow(net, 6) == pytest.approx(math.log10(3 * r), abs=1e-10)


def test_synflow_does_not_overflow_and_leaves_a_deep_subnet_untouched():
    supernet = Supernet(10, 1.2, dense=True, parallel=True, space=default_space(True, False, 1.2, (32,)))
    subnet = supernet.extract(supernet.space.max_arch()).train()
    before = {k: v.clone() for k, v in subnet.state_dict().items()}
    score = synflow(subnet, 32)
    assert math.isfinite(score) and score > 10
    assert subnet.training
    for k, v in subnet.state_dict().items():
        assert v.dtype == before[k].dtype and v.device == before[k].device and torch.equal(v, before[k])
    assert all(p.grad is None for p in subnet.parameters())


def test_training_free_metrics_are_repeatable():
    net = _toy()
    x = torch.randn(8, 3, 5, 5)
    first = training_free_metrics(net, x)
    assert set(first) == {"icd", "synflow"} and first == training_free_metrics(net, x)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        training_free_metrics(net, x[0])


def test_icd_refuses_a_dynamic_supernet():
    """Its elastic blocks call functional activations the hooks never see: extract the subnet first."""
    supernet = Supernet(10, 1.0, space=default_space(False, False, 1.0, (32,)))
    x = torch.randn(2, 3, 32, 32)
    for model in (supernet, nn.Sequential(supernet)):
        with pytest.raises(TypeError, match=r"dynamic Supernet.*extract"):
            icd(model, x)
    subnet = supernet.extract(supernet.space.max_arch())
    assert icd(subnet, x) > 0  # the static subnet runs every hooked activation


class _FunctionalReLU(nn.Module):
    """Holds a ReLU module but calls the functional one, as a dynamic block does."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.act = nn.Linear(4, 4), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(self.linear(x))


def test_icd_raises_when_an_expected_activation_is_not_seen():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _FunctionalReLU())
    with pytest.raises(ValueError, match=r"1 of 2 hooked layers did not run .*2\.act"):
        icd(net, torch.randn(5, 3))
    assert all(not m._forward_hooks for m in net.modules())
    toy = _toy()
    with pytest.raises(ValueError, match="1 of 2 hooked layers did not run"):  # a layer the model never runs
        icd(toy, torch.randn(3, 3, 5, 5), layers=[toy[2], nn.ReLU()])

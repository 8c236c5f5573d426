"""The elastic MBConv: `ofa`'s DynamicMBConvLayer with a leaner forward and static extraction.
The parameters, their names, the kernel transformation matrices and the channel sorting
(`re_organize_middle_weights`) are `ofa`'s, so OFA checkpoints load unchanged. The forward slices
weights only when a dimension is smaller than its maximum and uses fused activations; it computes
the same function as `ofa`'s."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from ofa.imagenet_classification.elastic_nn.modules.dynamic_layers import DynamicMBConvLayer
from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicBatchNorm2d

from .layers import ACTIVATION_FNS, Position, middle_channels, se_channels

_bn = DynamicBatchNorm2d.bn_forward


def _take(weight: torch.Tensor, out: int, cin: int) -> torch.Tensor:
    return weight if weight.size(0) == out and weight.size(1) == cin else weight[:out, :cin]


@lru_cache(maxsize=None)
def _crop_index(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """Flat indices of the centred dst x dst window of a src x src kernel."""
    start = (src - dst) // 2
    rows = torch.arange(start, start + dst)
    return (rows[:, None] * src + rows[None, :]).flatten().to(device)


class ElasticMBConv(DynamicMBConvLayer):
    def __init__(self, pos: Position, kernels: tuple[int, ...], expands: tuple[int, ...]) -> None:
        super().__init__([pos.in_channels], [pos.out_channels], list(kernels), list(expands),
                         pos.stride, pos.act, pos.se)
        self._act = ACTIVATION_FNS[pos.act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout, k = x.size(1), self.active_out_channel, self.active_kernel_size
        mid = middle_channels(cin, self.active_expand_ratio)
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        x = F.conv2d(x, _take(ib.conv.conv.weight, mid, cin))
        x = self._act(_bn(x, ib.bn.bn, mid))
        x = F.conv2d(x, self._depthwise_filter(mid, k), None, self.stride, k // 2, 1, mid)
        x = self._act(_bn(x, dc.bn.bn, mid))
        if self.use_se:
            x = self._se(x, mid)
        x = F.conv2d(x, _take(pl.conv.conv.weight, cout, mid))
        return _bn(x, pl.bn.bn, cout)

    def _depthwise_filter(self, mid: int, kernel: int) -> torch.Tensor:
        """The active depthwise filter: centre crops of the 7x7 weight, each followed by `ofa`'s
        learned kernel transformation matrix (7->5, then 5->3), as `get_active_filter` does,
        in fewer autograd nodes."""
        conv = self.depth_conv.conv
        weight = conv.conv.weight if mid == conv.max_in_channels else conv.conv.weight[:mid]
        src = weight.size(-1)
        if kernel == src:
            return weight
        flat = weight.reshape(mid, src * src)
        for dst in sorted((k for k in conv._ks_set if kernel <= k < src), reverse=True):
            flat = F.linear(flat.index_select(1, _crop_index(src, dst, flat.device)),
                            getattr(conv, f"{src}to{dst}_matrix"))
            src = dst
        return flat.view(mid, 1, kernel, kernel)

    def _se(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        fc = self.depth_conv.se.fc
        se_mid = se_channels(mid)
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, _take(fc.reduce.weight, se_mid, mid), fc.reduce.bias[:se_mid]))
        y = F.conv2d(y, _take(fc.expand.weight, mid, se_mid), fc.expand.bias[:mid])
        return x * F.hardsigmoid(y)

    def active_state(self, cin: int, kernel: int, expand: int) -> dict[str, torch.Tensor]:
        """Weights of the static `layers.MBConv` for (kernel, expand), under its parameter names."""
        mid, cout = middle_channels(cin, expand), self.active_out_channel
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        state = {"inverted_bottleneck.conv.weight": ib.conv.conv.weight[:mid, :cin],
                 "depth_conv.conv.weight": self._depthwise_filter(mid, kernel),
                 "point_linear.conv.weight": pl.conv.conv.weight[:cout, :mid]}
        for name, channels in (("inverted_bottleneck", mid), ("depth_conv", mid), ("point_linear", cout)):
            bn = getattr(self, name).bn.bn
            state.update({f"{name}.bn.{key}": getattr(bn, key)[:channels]
                          for key in ("weight", "bias", "running_mean", "running_var")})
            state[f"{name}.bn.num_batches_tracked"] = bn.num_batches_tracked
        if self.use_se:
            fc, se_mid = dc.se.fc, se_channels(mid)
            state.update({"depth_conv.se.reduce.weight": fc.reduce.weight[:se_mid, :mid],
                          "depth_conv.se.reduce.bias": fc.reduce.bias[:se_mid],
                          "depth_conv.se.expand.weight": fc.expand.weight[:mid, :se_mid],
                          "depth_conv.se.expand.bias": fc.expand.bias[:mid]})
        return state

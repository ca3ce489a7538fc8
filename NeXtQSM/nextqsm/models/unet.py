"""A small configurable 3D U-Net (PyTorch).

Tensors are (B, C, i, j, k). The network pads its input internally to a multiple of
``2 ** depth`` (replicate-free zero padding, centred) and crops the output back, so any
spatial size works.

Default choice (measured on the dev machines, see ``benchmarks/results_nextqsm.md``):
narrow (``base=8``), ``depth=3``, no normalisation layer. Without normalisation and with
``bias=False`` the network is positively homogeneous of degree 1 (``f(a x) = a f(x)``
for ``a > 0``, LeakyReLU), which keeps it exactly scale-equivariant; it also avoids the
train/test mismatch of instance/group statistics between small training patches and
whole-volume inference. ``norm='instance'`` or ``'group'`` are available.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Conv3dFastGrad(torch.autograd.Function):
    """Stride-1 'same' 3D convolution with a faster CPU weight gradient.

    PyTorch's CPU weight gradient of ``conv3d`` (``conv3d_weight``) was measured 10-15x slower
    than the forward on the dev machines (2.3 s for 16->8 channels at 64^3); computing it as one
    forward convolution with swapped roles takes 0.22 s, and is exact to float rounding (tested
    against autograd of ``F.conv3d``).
    """

    @staticmethod
    def forward(ctx, x, w, pad: int):
        ctx.save_for_backward(x, w)
        ctx.pad = pad
        return F.conv3d(x, w, padding=pad)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        pad = ctx.pad
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv3d_input(x.shape, w, g, padding=pad)
        if ctx.needs_input_grad[1]:
            # dW[o, i] = correlation of the padded input with the output gradient: a convolution with
            # the batch as channels, the input channels as batch and grad_output as the (big) kernel.
            xp = F.pad(x, [pad] * 6) if pad else x
            gw = F.conv3d(xp.transpose(0, 1), g.transpose(0, 1)).transpose(0, 1)
        return gx, gw, None


def _cpu_autocast() -> bool:
    """Is CPU autocast on (bfloat16 training, ``train.amp_cpu``)? Then the convolutions take autocast's path."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:   # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (stride 1, 'same' padding, no bias) using :class:`_Conv3dFastGrad` when training on the CPU in
    float32 (under bfloat16 autocast the standard convolution is faster)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.bias is None and x.device.type == "cpu" and torch.is_grad_enabled()
                and self.weight.requires_grad and x.dtype == torch.float32 and not _cpu_autocast()):
            return _Conv3dFastGrad.apply(x, self.weight, self.padding[0])
        return super().forward(x)


class Up(nn.Module):
    """2x nearest-neighbour up-sampling followed by a 1x1x1 convolution (cin -> cout), computed in the other order
    (the two commute exactly): the convolution on 8x fewer voxels and the up-sampling of cout < cin channels."""

    def __init__(self, cin: int, cout: int, bias: bool = False):
        super().__init__()
        self.conv = Conv3d(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="nearest")


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(4, ch), ch)
    if kind in ("none", None):
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (use 'none', 'instance' or 'group')")


class ConvBlock(nn.Sequential):
    """``n`` x (3x3x3 conv -> norm -> LeakyReLU(0.1))."""

    def __init__(self, cin: int, cout: int, n: int = 2, norm: str = "none", bias: bool = False):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [Conv3d(cin if i == 0 else cout, cout, 3, padding=1, bias=bias),
                       _norm(norm, cout), nn.LeakyReLU(0.1, inplace=True)]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """3D U-Net: ``in_ch`` -> ``out_ch`` channels, same spatial size as the input.

    Args:
        in_ch, out_ch: channels of input and output.
        base: channels at the top level; level ``l`` has ``base * 2**l`` (capped at ``max_ch``).
        depth: number of 2x down-samplings (the input is padded to a multiple of ``2**depth``).
        convs: convolutions per block.
        norm: 'none' | 'instance' | 'group'.
        bias: conv biases (``False`` keeps the net positively homogeneous when ``norm='none'``).
        residual: add the (first ``out_ch`` channels of the) input to the output.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, base: int = 8, depth: int = 3, convs: int = 2,
                 norm: str = "none", bias: bool = False, residual: bool = False, max_ch: int = 256):
        super().__init__()
        self.config = dict(in_ch=in_ch, out_ch=out_ch, base=base, depth=depth, convs=convs, norm=norm,
                           bias=bias, residual=residual, max_ch=max_ch)
        self.depth = depth
        self.residual = residual
        chs = [min(base * 2 ** level, max_ch) for level in range(depth + 1)]
        self.enc = nn.ModuleList([ConvBlock(in_ch if l == 0 else chs[l - 1], chs[l], convs, norm, bias)
                                  for l in range(depth)])
        self.bottom = ConvBlock(chs[depth - 1] if depth else in_ch, chs[depth], convs, norm, bias)
        self.up = nn.ModuleList([Up(chs[l + 1], chs[l], bias) for l in range(depth)])
        self.dec = nn.ModuleList([ConvBlock(2 * chs[l], chs[l], convs, norm, bias) for l in range(depth)])
        self.head = Conv3d(chs[0], out_ch, 1, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=1e-3)  # start close to the identity / zero map

    #: inference-time compute precision (not saved): ``None`` = the input's dtype; ``torch.bfloat16`` runs the
    #: convolutions under autocast and returns the input's dtype (``run_nextqsm(..., precision=...)``)
    compute_dtype: torch.dtype | None = None

    @property
    def multiple(self) -> int:
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None and self.compute_dtype != x.dtype:
            with torch.autocast(x.device.type, dtype=self.compute_dtype):
                return self._forward(x).to(x.dtype)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[-3:]
        m = self.multiple
        pads = []
        for n in reversed(shape):
            extra = (-n) % m
            pads += [extra // 2, extra - extra // 2]
        h = F.pad(x, pads) if any(pads) else x
        skips = []
        for enc in self.enc:
            h = enc(h)
            skips.append(h)
            h = F.max_pool3d(h, 2)
        h = self.bottom(h)
        for l in reversed(range(self.depth)):
            h = self.up[l](h)
            h = self.dec[l](torch.cat([h, skips[l]], dim=1))
        out = self.head(h)
        if any(pads):
            out = out[..., pads[4]:pads[4] + shape[0], pads[2]:pads[2] + shape[1], pads[0]:pads[0] + shape[2]]
        if self.residual:
            out = out + x[:, : out.shape[1]]
        return out


def tiled_apply(net, x: torch.Tensor, tile: int = 128, overlap: int = 16) -> torch.Tensor:
    """Apply a local network (B, C, i, j, k) -> (B, C', i, j, k) tile by tile.

    The input is first zero-padded (centred) to the network's multiple ``m`` exactly as the
    network itself would pad it; tiles start on multiples of ``m`` and have sizes that are
    multiples of ``m``, so the pooling grids of all tiles coincide with the untiled call.
    Each output voxel comes from the tile where it lies at least ``overlap`` voxels (rounded
    up to ``m``) from a cut, so the result equals the untiled network (to float rounding)
    whenever ``overlap`` covers the receptive-field radius; beyond that it is an approximation.
    """
    shape = x.shape[-3:]
    m = int(getattr(net, "multiple", 1))
    up = lambda v: -(-int(v) // m) * m
    if all(n <= tile for n in shape):
        return net(x)
    pads = []
    for n in reversed(shape):
        extra = (-n) % m
        pads += [extra // 2, extra - extra // 2]
    xp = F.pad(x, pads) if any(pads) else x
    pshape = xp.shape[-3:]
    ov = up(overlap)
    core = max(up(tile) - 2 * ov, m)
    out = None
    for a in range(0, pshape[0], core):
        for b in range(0, pshape[1], core):
            for c in range(0, pshape[2], core):
                st = (a, b, c)
                lo = [max(s - ov, 0) for s in st]
                hi = [min(s + core + ov, n) for s, n in zip(st, pshape)]
                y = net(xp[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
                if out is None:
                    out = xp.new_zeros((*y.shape[:2], *pshape))
                e = [min(s + core, n) for s, n in zip(st, pshape)]
                out[..., a:e[0], b:e[1], c:e[2]] = y[..., a - lo[0]:e[0] - lo[0], b - lo[1]:e[1] - lo[1],
                                                     c - lo[2]:e[2] - lo[2]]
    return out[..., pads[4]:pads[4] + shape[0], pads[2]:pads[2] + shape[1], pads[0]:pads[0] + shape[2]]

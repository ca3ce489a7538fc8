"""NeXtQSM networks: variational network (VN) for dipole inversion and the U-Net wrappers.

All public modules take and return **ppm** tensors (B, 1, i, j, k) and are *scale-aware*:
each normalises its input inside the forward pass by a robust per-sample scale
``s`` = standard deviation of the input inside the mask (:func:`robust_scale`), runs on
``x / s`` and multiplies its output by ``s``. Scaling the input by ``a > 0`` therefore
scales the output by ``a`` (exactly up to float rounding; tested to 1e-4 relative).

VN (Lai et al. style learned proximal gradient, as in the NeXtQSM release)::

    f  = local field / s            (masked)
    x0 = f                          (``init='field'``: chi initialised with the local field, as released)
    x0 = M TKD(f)                   (``init='tkd'``: truncated k-space division of the local field,
                                     threshold 0.19 -- a linear, physics-only start; used by the shipped
                                     weights because the CPU training budget was a few hundred steps)
    x_{t+1} = x_t - lambda_t * D^T M (D x_t - f) - R(x_t),   t = 0..S-1
    chi = s * M x_S

``D`` is the true dipole kernel (``nextqsm.dipole.dipole_kernel_torch``) of the volume's
voxel size and B0 direction, applied on a zero-padded grid (``nextqsm.dipole.padded_shape``)
so the convolution does not wrap around; ``D^T = D`` (real, even kernel) and the adjoint of
pad-then-crop is pad-then-crop, so ``D^T M (D x - f)`` is the exact gradient of
``0.5 ||M (D x - f)||^2``. ``lambda_t = softplus(rho_t)`` >= 0, initialised to 0.1.
``R`` is ONE U-Net shared by all steps.

Noise conditioning (``noise_cond=True``, FFDNet-style): a dipole field has no energy on the magic
cone (D = 0), so the share of the masked field's power spectrum where |D| < 0.1, divided by the
share of the spectrum that region covers (:func:`cone_energy`), measures how much of the input the
dipole model cannot explain (noise, model errors): about 0.04-0.14 for clean simulated local fields
(mask truncation leaks a little), 0.11-0.12 for V-SHARP fields of clean heads, 0.37 at white-noise
SNR 1.5, 0.40 for the 2016 challenge's field. With ``q = c / 0.1`` (:data:`CONE_UNIT`; order 1, so
the new weights learn at the pace of the others), the regulariser gets ``q * M`` as a second input
channel and each step size becomes ``lambda_t * exp(-a_t * q)`` (``a_t`` learned, initialised 0), so
one network can regularise harder on noisy or model-inconsistent data without blurring clean data.
``c`` is scale-free, so scale awareness is kept. A VN without conditioning loads into one with it
(the new weights start at zero: same function), see :meth:`VariationalNetwork.forward`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..dipole import dipole_kernel_torch, padded_shape
from .unet import UNet3D, tiled_apply

Vec3s = torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


def robust_scale(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample scale (B, 1, 1, 1, 1): std of ``x`` inside ``mask`` (ppm), at least ``eps``."""
    m = mask.to(x.dtype)
    n = m.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=(1, 2, 3, 4), keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=(1, 2, 3, 4), keepdim=True) / n
    return var.sqrt().clamp_min(eps)


def _per_sample(v: Vec3s, batch: int) -> list[tuple[float, float, float]]:
    t = torch.as_tensor(v, dtype=torch.float64).reshape(-1, 3)
    if t.shape[0] == 1:
        t = t.expand(batch, 3)
    if t.shape[0] != batch:
        raise ValueError(f"expected {batch} vectors of 3, got shape {tuple(t.shape)}")
    return [tuple(float(a) for a in row) for row in t.cpu()]


def batch_kernels(shape: Sequence[int], voxel_size: Vec3s, b0_dir: Vec3s, batch: int, pad=None,
                  device=None) -> torch.Tensor:
    """Half-spectrum dipole kernels of the padded grid, (B or 1, 1, P0, P1, P2//2+1) float32.

    The padded grid is :func:`even_padded_shape`; kernels come from ``nextqsm.dipole.dipole_kernel_torch``
    for each sample's voxel size and B0 direction (shared when all samples agree).
    """
    pshape = even_padded_shape(shape, pad)
    vs, bs = _per_sample(voxel_size, batch), _per_sample(b0_dir, batch)
    cache: dict = {}
    ks = []
    for v, b in zip(vs, bs):
        if (v, b) not in cache:
            cache[(v, b)] = half_kernel(dipole_kernel_torch(pshape, v, b, device=device))
        ks.append(cache[(v, b)])
    if len(cache) == 1:
        return ks[0][None, None]
    return torch.stack(ks)[:, None]


CONE_UNIT = 0.1  # the noise-conditioned VN sees cone_energy / CONE_UNIT


def cone_energy(f: torch.Tensor, khalf: torch.Tensor, pshape: Sequence[int] | None = None,
                eps: float = 0.1) -> torch.Tensor:
    """Magic-cone energy ratio (B, 1, 1, 1, 1) of masked fields ``f`` (B, 1, i, j, k), unitless.

    (power of the zero-padded field's spectrum where |D| < ``eps``) / (power outside k = 0), divided by
    the fraction of the (half) spectrum where |D| < ``eps``: ~1 for white noise, near 0 for a dipole field.
    ``khalf`` is the half-spectrum kernel of the padded grid (:func:`half_kernel`), as in :func:`dipole_conv`.
    """
    if pshape is None:
        pshape = (khalf.shape[-3], khalf.shape[-2], 2 * (khalf.shape[-1] - 1))
    with torch.no_grad():
        spec = torch.fft.rfftn(f.float(), s=tuple(pshape), dim=(-3, -2, -1)).abs().square()
        spec[..., 0, 0, 0] = 0.0
        cone = (khalf.abs() < eps).to(spec.dtype)
        frac = cone.mean(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-6)
        num = (spec * cone).sum(dim=(-3, -2, -1), keepdim=True)
        den = spec.sum(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-30)
        return (num / den / frac).to(f.dtype)


def _call(net, x: torch.Tensor, ckpt: bool, tile: tuple[int, int] | None) -> torch.Tensor:
    """net(x), with gradient checkpointing (training) or tiling (inference) when asked."""
    if ckpt and torch.is_grad_enabled():
        return checkpoint(net, x, use_reentrant=False)
    if tile is not None:
        return tiled_apply(net, x, *tile)
    return net(x)


def half_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Restrict a full FFT-order kernel (..., P0, P1, P2) to the rfft half spectrum (..., P0, P1, P2//2+1).

    ``P2`` must be even (see :func:`even_padded_shape`) so that :func:`dipole_conv` can recover it.
    """
    return kernel[..., : kernel.shape[-1] // 2 + 1]


def _pad_central(x: torch.Tensor, khalf: torch.Tensor, pshape: Sequence[int] | None):
    """Zero-pad ``x`` (..., i, j, k) centrally to the padded grid of ``khalf``; returns (padded, pshape, crop)."""
    shape = x.shape[-3:]
    if pshape is None:
        pshape = (khalf.shape[-3], khalf.shape[-2], 2 * (khalf.shape[-1] - 1))
    before = [(t - n) // 2 for n, t in zip(shape, pshape)]
    widths: list[int] = []
    for b, n, t in reversed(list(zip(before, shape, pshape))):
        widths += [b, t - n - b]
    crop = (Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(before, shape))
    return F.pad(x, widths), tuple(pshape), crop


def dipole_conv(x: torch.Tensor, khalf: torch.Tensor, pshape: Sequence[int] | None = None) -> torch.Tensor:
    """Field [ppm] of ``x`` [ppm] (..., i, j, k): zero-pad centrally to the padded grid, multiply by D, crop.

    ``khalf`` is the rfft half spectrum of the kernel of the padded grid ``pshape`` (default: the
    padded shape is (khalf.shape[-3], khalf.shape[-2], 2 * (khalf.shape[-1] - 1)), i.e. an even last axis).
    The same operation is its own adjoint (D real and even, crop = pad^T).
    """
    xp, pshape, crop = _pad_central(x, khalf, pshape)
    y = torch.fft.irfftn(torch.fft.rfftn(xp, dim=(-3, -2, -1)) * khalf, s=pshape, dim=(-3, -2, -1))
    return y[crop]


def highpass_noise(f: torch.Tensor, mask: torch.Tensor, sigma: float = 1.0, erode: int = 2) -> torch.Tensor:
    """Robust white-noise level of the fields ``f`` (B, 1, i, j, k), relative to their std in ``mask``.

    1.4826 x the median absolute deviation of ``f - G_sigma * f`` (Gaussian of ``sigma`` voxels, 4 sigma
    support, zero outside the array) over the mask eroded by ``erode`` voxels, divided by the std of ``f``
    in the mask: (B,) unitless, scale-free. Measured with the shipped V-SHARP pipeline at 64^3 (2.8 mm):
    0.34-0.39 for clean simulated heads, 0.45 / 0.60 / 0.73 with white noise of variance 0.0005 / 0.002 /
    0.005 of the total field's; 0.35 for the 2016 challenge's local field (1.06 mm).
    """
    r = max(1, int(math.ceil(4 * sigma)))
    t = torch.arange(-r, r + 1, dtype=f.dtype, device=f.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    m = mask.to(f.dtype)
    y = f * m
    for ax in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + ax] = -1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = r
        y = F.conv3d(F.pad(y, pad), g.view(shape))
    hp = f * m - y
    inner = 1.0 - m
    for ks in ((2 * erode + 1, 1, 1), (1, 2 * erode + 1, 1), (1, 1, 2 * erode + 1)) if erode else ():
        inner = F.max_pool3d(inner, ks, stride=1, padding=tuple(k // 2 for k in ks))   # separable: a cube
    inner = 1.0 - inner
    out = []
    for b in range(f.shape[0]):
        sel = inner[b] > 0.5
        if int(sel.sum()) < 10:
            sel = m[b] > 0.5
        v = hp[b][sel]
        mad = (v - v.median()).abs().median() * 1.4826
        out.append(mad / f[b][m[b] > 0.5].std().clamp_min(1e-12))
    return torch.stack(out)


def consistency_step(x: torch.Tensor, f: torch.Tensor, khalf: torch.Tensor, mu) -> torch.Tensor:
    """Closed-form data consistency: argmin_y ||D y - f||^2 + mu ||y - x||^2 on the zero-padded grid.

    ``x`` (B, 1, i, j, k) is the prior estimate (the VN's chi), ``f`` the local field, zero outside
    its mask, so the field of ``y`` is asked to vanish outside the mask as well (the unweighted data
    term of TV-QSM, Bilgic et al. 2014). Per frequency ``Y = (D F + mu X) / (D^2 + mu)``: where |D| is
    large (away from the magic cone) the data decide, on the cone (D = 0) ``y`` keeps ``x``, and so
    does the mean (D(0) = 0). Linear in (x, f) jointly, hence scale-aware; ``mu`` is unitless, a float or
    one per sample (B,).
    """
    if torch.is_tensor(mu):
        mu = mu.to(x.dtype).view(-1, 1, 1, 1, 1)
    xp, pshape, crop = _pad_central(x, khalf, None)
    fp = _pad_central(f, khalf, pshape)[0]
    dims = (-3, -2, -1)
    Y = (torch.fft.rfftn(fp, dim=dims) * khalf + mu * torch.fft.rfftn(xp, dim=dims)) / (khalf * khalf + mu)
    return torch.fft.irfftn(Y, s=pshape, dim=dims)[crop]


def even_padded_shape(shape: Sequence[int], pad=None) -> tuple[int, ...]:
    """``nextqsm.dipole.padded_shape`` with the last axis made even (needed by :func:`dipole_conv`)."""
    p = list(padded_shape(shape, pad))
    if p[-1] % 2:
        p[-1] = padded_shape([p[-1] + 1], 0)[0]
        while p[-1] % 2:
            p[-1] = padded_shape([p[-1] + 1], 0)[0]
    return tuple(p)


class VariationalNetwork(nn.Module):
    """Local field [ppm] -> chi [ppm]; ``steps`` unrolled proximal-gradient steps, one shared U-Net.

    Args:
        steps: number of unrolled steps S (release: 6).
        unet: kwargs of the shared regulariser :class:`UNet3D` (1 -> 1 channels).
        lambda_init: initial data-term step size of every step (0.1), kept >= 0 by softplus.
        pad: zero padding (voxels per side) for the dipole convolution; ``None`` = ``padded_shape`` default.
        checkpointing: gradient checkpointing of the regulariser (saves memory while training).
        init: 'field' (x0 = local field) or 'tkd' (x0 = TKD of the local field, ``tkd_threshold``).
        lambda_max: optional smooth upper bound of the step sizes (see :attr:`lambdas`).
        noise_cond: condition the regulariser and the step sizes on :func:`cone_energy` (module doc).
        fill_rim: trained to also predict chi in a rim around the data mask (``out_mask`` of
            :meth:`forward`): the voxels V-SHARP erodes, where the local field is unknown.
        outside_weight: weight ``w`` of the data term outside ``out_mask`` (the brain), where the
            local field is taken as zero: the data term becomes 0.5 sum W (D x - f)^2 with W = 1 on
            the data mask, 0 on the rim between it and ``out_mask`` (field unknown there), ``w`` on the
            rest of the (cropped) grid. ``0`` (default, as released): the data term sees the mask only.
            ``1`` is the unweighted form of TV-QSM (Bilgic et al. 2014), which also asks the chi map's
            field to vanish outside the brain; that suppresses smooth chi errors driven by
            non-dipole residuals of real local fields (2016 challenge: TV 57.6 % unweighted vs 61.7 %
            weighted, :mod:`nextqsm.methods.tv`; benchmarks/results_diag_challenge.md).
        dc_mu: weight ``mu`` of a final closed-form data-consistency step after the S steps
            (:func:`consistency_step`: argmin_y ||D y - f||^2 + mu ||y - x_S||^2, field zero outside the
            mask); ``0`` (default, as released) = no such step. Smaller ``mu`` trusts the measured field
            more away from the magic cone. Not learned; ``run_nextqsm(..., dc_mu=...)`` overrides it.
        dc_noise: ``(s0, p)``: raise the consistency weight on noisy input, ``mu = dc_mu * max(1,
            q / s0) ** p`` with ``q`` the input's :func:`highpass_noise` (the data term then trusts a
            noisy field less); ``None``: a fixed ``mu``.
        level: chi's level, added to the normalised chi inside the output mask after the last step
            (unitless, in units of the input's :func:`robust_scale`, so scale awareness is kept).
            The field of a constant chi inside the mask is harmonic there, so background removal
            takes it away and the VN sets the level from its prior alone; ``level`` corrects that
            prior's bias, fitted on generator data by ``nextqsm-train calibrate-level``. Not learned.
    """

    def __init__(self, steps: int = 6, unet: dict | None = None, lambda_init: float = 0.1, pad=None,
                 checkpointing: bool = False, init: str = "field", tkd_threshold: float = 0.19,
                 lambda_max: float | None = None, noise_cond: bool = False, fill_rim: bool = False,
                 outside_weight: float = 0.0, dc_mu: float = 0.0, dc_noise: Sequence[float] | None = None,
                 level: float = 0.0):
        super().__init__()
        unet = dict(unet or {})
        in_ch = 2 if noise_cond else 1   # chi (+ the noise-level map)
        unet.setdefault("in_ch", in_ch)
        if unet["in_ch"] != in_ch:
            raise ValueError(f"the regulariser takes {in_ch} input channels, got in_ch={unet['in_ch']}")
        unet.setdefault("out_ch", 1)
        if init not in ("field", "tkd"):
            raise ValueError(f"unknown init {init!r} (use 'field' or 'tkd')")
        self.config = dict(steps=steps, unet=unet, lambda_init=lambda_init, pad=pad, init=init,
                           tkd_threshold=tkd_threshold)
        if lambda_max is not None:
            self.config["lambda_max"] = float(lambda_max)
        self.noise_cond = bool(noise_cond)
        if noise_cond:
            self.config["noise_cond"] = True
        self.fill_rim = bool(fill_rim)
        if fill_rim:
            self.config["fill_rim"] = True
        if not (0.0 <= float(outside_weight) <= 1.0):
            raise ValueError(f"outside_weight must lie in [0, 1], got {outside_weight!r}")
        self.outside_weight = float(outside_weight)
        if self.outside_weight:
            self.config["outside_weight"] = self.outside_weight
        self.set_consistency(dc_mu, dc_noise)
        self.set_level(level)
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        self.init = init
        self.tkd_threshold = float(tkd_threshold)
        self.steps = steps
        self.pad = pad
        self.checkpointing = checkpointing
        self.tile: tuple[int, int] | None = None  # (tile, overlap): tiled regulariser calls at inference
        self.reg = UNet3D(**unet)
        rho = math.log(math.expm1(lambda_init))  # softplus^-1
        self.rho = nn.Parameter(torch.full((steps,), rho, dtype=torch.float32))
        if noise_cond:
            self.lam_gain = nn.Parameter(torch.zeros(steps))
            self.register_load_state_dict_pre_hook(_grow_unconditioned)

    def set_consistency(self, dc_mu: float = 0.0, dc_noise: Sequence[float] | None = None) -> None:
        """Set the final consistency step's ``dc_mu`` and ``dc_noise`` (inference settings, not learned; see the
        class doc) and record them in :attr:`config` (the manifest's ``arch``)."""
        if not float(dc_mu) >= 0.0:
            raise ValueError(f"dc_mu must be >= 0, got {dc_mu!r}")
        self.dc_mu = float(dc_mu)
        self.config.pop("dc_mu", None)
        self.config.pop("dc_noise", None)
        if self.dc_mu:
            self.config["dc_mu"] = self.dc_mu
        self.dc_noise = None if dc_noise is None else tuple(float(v) for v in dc_noise)
        if self.dc_noise is not None:
            if len(self.dc_noise) != 2 or not (self.dc_noise[0] > 0 and self.dc_noise[1] >= 0):
                raise ValueError(f"dc_noise must be (s0 > 0, p >= 0), got {dc_noise!r}")
            self.config["dc_noise"] = list(self.dc_noise)

    def set_level(self, level: float = 0.0) -> None:
        """Set chi's calibrated level (see the class doc) and record it in :attr:`config`."""
        if not math.isfinite(float(level)):
            raise ValueError(f"level must be finite, got {level!r}")
        self.level = float(level)
        self.config.pop("level", None)
        if self.level:
            self.config["level"] = self.level

    @property
    def multiple(self) -> int:
        return self.reg.multiple

    @property
    def lambdas(self) -> torch.Tensor:
        """Step sizes: softplus(rho) >= 0, smoothly capped at ``lambda_max`` when set (``lambda_max *
        tanh(softplus(rho) / lambda_max)``). The data term's gradient has Lipschitz constant max|D|^2
        = 4/9 on the normalised field, so steps above 2 / (4/9) = 4.5 overshoot: on synthetic (exactly
        dipolar) training data that costs nothing, on real data it amplifies every model error."""
        lam = F.softplus(self.rho)
        if self.lambda_max is not None:
            lam = self.lambda_max * torch.tanh(lam / self.lambda_max)
        return lam

    def data_grad(self, x: torch.Tensor, f: torch.Tensor, m: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """D^T M (D x - f): analytic gradient of 0.5 ||M (D x - f)||^2 (zero-padded FFT convolution).

        ``m`` is the data term's weight map W (B, 1, i, j, k): the data mask, or :meth:`data_weights`
        with ``outside_weight``; the gradient is that of the weighted least squares 0.5 sum W (D x - f)^2.

        ``kernel`` is the half spectrum (last axis ``n // 2 + 1``) of the padded-grid kernel, see
        :func:`half_kernel`; real FFTs halve the cost of the full complex FFT.
        """
        r = m * (dipole_conv(x, kernel) - f)
        return dipole_conv(r, kernel)

    def tkd(self, f: torch.Tensor, m: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Truncated k-space division of ``f`` (masked): 1/D where |D| > t, sign(D)/t elsewhere (linear in f)."""
        t = self.tkd_threshold
        big = kernel.abs() > t
        inv = torch.where(big, 1.0 / torch.where(big, kernel, torch.ones_like(kernel)), torch.sign(kernel) / t)
        return dipole_conv(f * m, inv) * m

    def consistency_weight(self, f: torch.Tensor, m: torch.Tensor):
        """``mu`` of the final :func:`consistency_step`: ``dc_mu``, or per sample (B,) with ``dc_noise``."""
        if self.dc_noise is None:
            return self.dc_mu
        s0, p = self.dc_noise
        with torch.no_grad():
            q = highpass_noise(f, m)
        return self.dc_mu * torch.clamp(q / s0, min=1.0) ** p

    def data_weights(self, m: torch.Tensor, out_mask: torch.Tensor | None) -> torch.Tensor:
        """Data-term weights (B, 1, i, j, k): 1 on the data mask ``m``; with ``outside_weight`` w > 0
        also w outside ``out_mask`` (default ``m``), where the local field is zero by definition."""
        if not self.outside_weight:
            return m
        om = m if out_mask is None else torch.maximum(out_mask.to(m.dtype), m)
        return m + self.outside_weight * (1.0 - om)

    def forward(self, field: torch.Tensor, mask: torch.Tensor, voxel_size: Vec3s = (1.0, 1.0, 1.0),
                b0_dir: Vec3s = (0.0, 0.0, 1.0), kernel: torch.Tensor | None = None,
                out_mask: torch.Tensor | None = None) -> torch.Tensor:
        """field: local field (B, 1, i, j, k) ppm; mask (B, 1, i, j, k) {0,1}, where the field is known
        (the data term's mask); returns chi (B, 1, i, j, k) ppm, zero outside ``out_mask`` (default
        ``mask``; a larger one, e.g. the brain mask around V-SHARP's eroded mask, for a ``fill_rim`` VN).

        voxel_size (mm) and b0_dir (unit, voxel axes) are one 3-vector or one per sample (B, 3).
        """
        m = mask.to(field.dtype)
        s = robust_scale(field, m)
        f = field / s * m
        if kernel is None:
            kernel = batch_kernels(field.shape[-3:], voxel_size, b0_dir, field.shape[0], self.pad, field.device)
        lam = self.lambdas.view(1, -1).expand(field.shape[0], -1)            # (B, S)
        w = self.data_weights(m, out_mask)
        if self.noise_cond:
            c = cone_energy(f, kernel) / CONE_UNIT
            lam = lam * torch.exp(-self.lam_gain.view(1, -1) * c.view(-1, 1))
            cmap = c * m
        x = f if self.init == "field" else self.tkd(f, m, kernel)
        for t in range(self.steps):
            g = self.data_grad(x, f, w, kernel)
            inp = torch.cat([x, cmap], dim=1) if self.noise_cond else x
            r = _call(self.reg, inp, self.checkpointing and self.training, self.tile)
            x = x - lam[:, t].view(-1, 1, 1, 1, 1) * g - r
        if self.dc_mu > 0:
            x = consistency_step(x, f, kernel, self.consistency_weight(f, m))
        if self.level:
            x = x + self.level
        return x * s * (m if out_mask is None else out_mask.to(field.dtype))


def _grow_unconditioned(module: "VariationalNetwork", state_dict: dict, prefix: str, *unused) -> None:
    """Load-state pre-hook: turn an unconditioned VN's weights into a conditioned one's (same function).

    The regulariser's first convolution gets a zero-weighted second input channel, and the step-size
    gains ``lam_gain`` start at 0, so fine-tuning starts exactly from the unconditioned network.
    """
    key = prefix + "reg.enc.0.0.weight"
    w = state_dict.get(key)
    if w is not None and w.shape[1] == 1:
        state_dict[key] = torch.cat([w, torch.zeros_like(w)], dim=1)
        state_dict.setdefault(prefix + "lam_gain", torch.zeros_like(module.lam_gain))


class ScaledUNet(nn.Module):
    """U-Net mapping one ppm map to another, normalised inside by :func:`robust_scale` of its input.

    Used for background-field removal (total field -> local field, ``residual=False``) and for
    the model-agnostic baseline inversion (local field -> chi).
    """

    def __init__(self, unet: dict | None = None, checkpointing: bool = False):
        super().__init__()
        unet = dict(unet or {})
        unet.setdefault("in_ch", 1)
        unet.setdefault("out_ch", 1)
        self.config = dict(unet=unet)
        self.net = UNet3D(**unet)
        self.checkpointing = checkpointing
        self.tile: tuple[int, int] | None = None  # (tile, overlap): tiled U-Net calls at inference

    @property
    def multiple(self) -> int:
        return self.net.multiple

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *unused) -> torch.Tensor:
        """x (B, 1, i, j, k) ppm, mask (B, 1, i, j, k); returns (B, 1, i, j, k) ppm, zero outside the mask."""
        m = mask.to(x.dtype)
        s = robust_scale(x, m)
        h = x / s * m
        y = _call(self.net, h, self.checkpointing and self.training, self.tile)
        return y * s * m


class NeXtQSM(nn.Module):
    """Background-field U-Net followed by the VN: total field [ppm] -> (chi, local field) [ppm]."""

    def __init__(self, bfr: dict | None = None, vn: dict | None = None, checkpointing: bool = False):
        super().__init__()
        self.bfr = ScaledUNet(bfr, checkpointing)
        self.vn = VariationalNetwork(**(vn or {}), checkpointing=checkpointing)

    def forward(self, total: torch.Tensor, mask: torch.Tensor, voxel_size: Vec3s = (1.0, 1.0, 1.0),
                b0_dir: Vec3s = (0.0, 0.0, 1.0)):
        lf = self.bfr(total, mask)
        return self.vn(lf, mask, voxel_size, b0_dir), lf

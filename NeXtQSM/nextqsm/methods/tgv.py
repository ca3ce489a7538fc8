"""Single-step TGV-QSM (Bredies et al. ISMRM 2014; Langkammer et al. NeuroImage 2015), in torch.

Background removal and dipole inversion in one optimisation, on the Laplacian of the phase.
The background field is harmonic inside the brain, so the Laplacian of the total phase equals the
Laplacian of the local phase there, and ``Laplacian(d * chi) = wave(chi)`` with the local
"wave" operator ``wave = Laplacian/3 - d^2/db^2`` (b the B0 direction). The model solved is

    min_{chi, w, phi}  1/2 ||phi||^2_Omega + alpha1 ||grad chi - w||_1 + alpha0 ||E w||_1
    subject to          wave(chi) - Laplacian(phi) = Laplacian(phi_0)   on Omega_0,

with phi_0 the measured phase [rad] (only its Laplacian enters: no unwrapping is needed, and
the harmonic background drops out), phi the residual phase (data term in rad), E the
symmetrised gradient, Omega the eroded brain mask and Omega_0 Omega eroded once more.
It is solved with the first-order primal-dual algorithm of Chambolle & Pock (2011) with
extragradient steps, like the reference implementation (Python/Cython ``tgv_qsm`` by Bredies
& Langkammer, its Julia port QuantitativeSusceptibilityMappingTGV.jl). Every operator is a
local finite-difference stencil (no FFT), so the iteration is cheap and runs on CUDA.

Units: the problem is solved in phase units (rad at echo time ``te_s`` and field ``b0_t``),
exactly as in the reference, so the published regularisation weights apply:
**alpha = (alpha0, alpha1) = (0.0015, 0.0005)** (the defaults of the original ``tgv_qsm`` and
of the Langkammer 2015 paper; alpha0 weighs the second-order term). The result is converted
to ppm by dividing by ``2 pi TE gamma B0``. When ``te_s`` is unknown (field given in ppm),
a reference TE of 20 ms is used for that scaling (document it in your results).
The mask is eroded ``erosions`` times (default 3, as in the Julia reference) before solving,
and chi is returned inside that eroded mask.

Differences from the reference (same model, more exact operator, faster path):
* the wave operator is applied **exactly in k-space** by default (``wave="fft"``): its symbol is
  L7(k) * D(k), the 7-point Laplacian that is applied to the phase times the dipole kernel, so
  ``wave(chi) = Laplacian(d * chi)`` holds at every frequency, for any B0 direction and voxel size
  (the local 3x3x3 stencil ``wave="stencil"`` of the reference mismatches the data's Laplacian at
  the grid scale: 20 % model residual on a sharp-edged phantom with axial B0, 57 % at 25 degrees;
  the k-space operator: 0.1 % and 1.6 %). No padding is needed (the Laplacian of a dipole field
  vanishes outside its sources). Two FFT pairs per iteration; the stencil version is kept as an option;
* consistent handling of anisotropic voxels in every operator;
* step sizes from a power-iteration estimate of the operator norm, with the Laplacian
  constraint scaled by 0.3 and a primal/dual step ratio of 100 (tau = 100 sigma), tuned on
  simulated heads: the reference's tau = sigma needs several times more iterations;
* coarse-to-fine warm start: the problem is first solved on 2x, 4x ... coarser grids (8x, 64x
  cheaper per iteration) and the upsampled solution starts the next finer level;
* the CPU iteration is fused with ``torch.compile`` when a compiler is present (eager otherwise).

Accuracy and time (``benchmarks/results_tgv_phase.md``, ``benchmarks/results_classical.md``): on a
48^3 sharp-edged phantom (300 iterations per level) the k-space operator gives 11.7 % axial,
13.8 % at 25 degrees and 15.3 % with 1 x 1 x 2 mm voxels (the stencil: 17.1 %, 49.8 %, 19.4 %);
with the defaults (250 + 100) 18.4 %, 20.7 %, 18.7 %.
Defaults: ``DEFAULT_ITERATIONS`` per level (``iterations``, ``coarse_iterations``). The reference runs 1000+ iterations.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..units import GAMMA_HZ_PER_T

Vec3 = Sequence[float]

DEFAULT_ALPHA = (0.0015, 0.0005)
"""(alpha0, alpha1) of Langkammer 2015 / the original tgv_qsm, for data in rad."""
DEFAULT_ITERATIONS = 250
"""Fine-grid iterations; see benchmarks/results_classical.md."""
DEFAULT_COARSE_ITERATIONS = 100
"""Iterations on each coarser grid (warm start). Measured on the 160^3 SynthSeg head (1 mm, 2 idle
cores, k-space wave): 300 + 100 -> 39.1 % in 112 s; 250 + 100 -> 42.1 % in 100 s; 300 + 300 ->
39.9 % in 141 s; 250 + 250 -> 41.8 %; 200 + 400 -> 48.5 %; 200 + 200 -> 44.9 %; 100 + 100 -> 57.5 %
(V-SHARP + TKD 55.4 %, V-SHARP + iLSQR 52.1 %). 250 + 100 keeps the 2016-challenge grid (mask_bet,
160^3) within 120 s on 2 cores (108 s in benchmarks/results_classical.md)."""
DEFAULT_CONSTRAINT_SCALE = 0.3
DEFAULT_RATIO = 100.0
"""Primal/dual step ratio and constraint scaling (tuned on simulated heads: ~4x fewer iterations
than tau = sigma for the same NRMSE; they change the path, not the solution)."""
SMALL_VOXELS = 300_000
"""Below this many voxels (cropped box) the CPU iteration runs single-threaded."""
REFERENCE_TE_S = 0.020
"""TE [s] used for the rad <-> ppm scaling of the regularisation when the input has no TE."""


def pick_device(device: str | None = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QSMInputError("--device", "CUDA was requested but no CUDA device is available",
                            "use --device cpu or --device auto")
    return device


def rad_per_ppm(te_s: float, b0_t: float) -> float:
    """Phase [rad] accrued per ppm of field at TE [s] and B0 [T]: 2 pi TE gamma B0 1e-6."""
    return 2.0 * math.pi * float(te_s) * GAMMA_HZ_PER_T * float(b0_t) * 1e-6


# ----------------------------------------------------------------------------- stencils
def _lap_kernel(voxel_size: Vec3) -> np.ndarray:
    h = np.asarray(voxel_size, dtype=np.float64)
    lap = np.zeros((3, 3, 3))
    for a in range(3):
        for off in (0, 2):
            idx = [1, 1, 1]
            idx[a] = off
            lap[tuple(idx)] += 1.0 / h[a] ** 2
        lap[1, 1, 1] -= 2.0 / h[a] ** 2
    return lap


def stencil_kernels(voxel_size: Vec3, b0_dir: Vec3) -> np.ndarray:
    """3x3x3 kernels (2, 3, 3, 3): [Laplacian, wave] for voxel size (mm) and unit B0 direction.

    wave = Laplacian/3 - sum_ab b_a b_b d_a d_b with second differences on the axes and 4-point
    central stencils for the mixed terms (the reference's stencil; accurate for smooth chi at any B0
    direction, ~1-2 % on a smooth blob, but not at the grid scale: see :func:`wave_symbol`).
    Both kernels are point-symmetric, so convolution with zero padding is self-adjoint. Units 1/mm^2.
    """
    h = np.asarray(voxel_size, dtype=np.float64)
    b = np.asarray(b0_dir, dtype=np.float64)
    b = b / np.linalg.norm(b)
    lap = _lap_kernel(h)
    dd = np.zeros((3, 3, 3, 3, 3))  # dd[a, b] = kernel of d_a d_b
    for a in range(3):
        k = np.zeros((3, 3, 3))
        idx = [1, 1, 1]
        for off, val in ((0, 1.0), (1, -2.0), (2, 1.0)):
            idx[a] = off
            k[tuple(idx)] += val / h[a] ** 2
        dd[a, a] = k
        for c in range(a + 1, 3):
            k = np.zeros((3, 3, 3))
            for sa in (-1, 1):
                for sc in (-1, 1):
                    idx = [1, 1, 1]
                    idx[a] += sa
                    idx[c] += sc
                    k[tuple(idx)] += sa * sc / (4.0 * h[a] * h[c])
            dd[a, c] = dd[c, a] = k
    wave = lap / 3.0
    for a in range(3):
        for c in range(3):
            wave = wave - b[a] * b[c] * dd[a, c]
    return np.stack([lap, wave]).astype(np.float32)


def wave_symbol(shape, voxel_size: Vec3, b0_dir: Vec3, scale: float = 1.0) -> np.ndarray:
    """Half-spectrum (rfftn layout) of the exact wave operator L7(k) * D(k) on a periodic grid.

    L7 is the symbol of the 7-point Laplacian applied to the phase data and D the dipole kernel
    (:func:`nextqsm.dipole.dipole_kernel`, D(0) = 0), so ``wave(chi) = L7(d * chi)`` holds at every
    frequency and for any B0 direction and voxel size. No padding is needed: the Laplacian of a
    dipole field vanishes outside its sources, so periodic images do not reach the constraint.
    Units 1/mm^2 (times ``scale``).
    """
    from ..dipole import dipole_kernel, kspace_grid

    shape = tuple(int(n) for n in shape)
    h = np.asarray(voxel_size, dtype=np.float64)
    half = (slice(None), slice(None), slice(0, shape[2] // 2 + 1))
    d = dipole_kernel(shape, h, b0_dir, dtype=np.float64)[half]
    # 7-point Laplacian symbol: -sum_a 4 sin^2(pi k_a h_a) / h_a^2, k in cycles/mm
    l7 = -sum(4 * np.sin(np.pi * k * ha) ** 2 / ha ** 2 for k, ha in zip(kspace_grid(shape, h), h))[half]
    return (l7 * d * scale).astype(np.float32)


def laplacian(field: np.ndarray, voxel_size: Vec3 = (1, 1, 1)) -> np.ndarray:
    """7-point Laplacian [unit/mm^2] of an (unwrapped) 3D array, replicate boundary."""
    f = np.asarray(field, dtype=np.float64)
    out = np.zeros_like(f)
    for a, h in enumerate(voxel_size):
        p = np.pad(f, [(1, 1) if i == a else (0, 0) for i in range(3)], mode="edge")
        sl = lambda s: tuple(slice(s, s + f.shape[a]) if i == a else slice(None) for i in range(3))  # noqa: E731
        out += (p[sl(0)] - 2 * f + p[sl(2)]) / float(h) ** 2
    return out.astype(np.float32)


def wrapped_laplacian(phase: np.ndarray, voxel_size: Vec3 = (1, 1, 1)) -> np.ndarray:
    """Laplacian [rad/mm^2] of the *unwrapped* phase from wrapped phase [rad]: cos*L(sin) - sin*L(cos).

    Exact for smooth phase whatever the wraps (Schofield & Zhu 2003).
    """
    p = np.asarray(phase, dtype=np.float64)
    s, c = np.sin(p), np.cos(p)
    return (c * laplacian(s, voxel_size).astype(np.float64) - s * laplacian(c, voxel_size).astype(np.float64)
            ).astype(np.float32)


def erode(mask: np.ndarray, n: int) -> np.ndarray:
    """Erode ``n`` times with the 6-neighbour (diamond) structuring element."""
    m = np.asarray(mask, dtype=bool)
    if n <= 0:
        return m.copy()
    return ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), iterations=int(n))


# ----------------------------------------------------------------------------- solver
class _Ops:
    """Finite-difference operators on (X, Y, Z) / (C, X, Y, Z) tensors, by shifted slices (no conv)."""

    def __init__(self, voxel_size, b0_dir, device, scale: float = 1.0, shape=None, wave: str = "stencil"):
        self.h = [float(v) for v in voxel_size]
        k = stencil_kernels(voxel_size, b0_dir).astype(np.float64) * scale
        self.symbol = None
        if wave == "fft":
            import torch

            self.symbol = torch.from_numpy(wave_symbol(shape, voxel_size, b0_dir, scale)).to(device)
        # sparse stencil taps: list of ((di, dj, dk), weight) per kernel, centre folded in
        # (the wave stencil only when it is used)
        self.taps = []
        for kern in (k if self.symbol is None else k[:1]):
            taps = [((a - 1, b - 1, c - 1), float(kern[a, b, c]))
                    for a in range(3) for b in range(3) for c in range(3)
                    if abs(kern[a, b, c]) > 1e-12 * np.abs(kern).max() and (a, b, c) != (1, 1, 1)]
            self.taps.append((float(kern[1, 1, 1]), taps))

    @staticmethod
    def _apply(u, centre, taps):
        """Zero-boundary stencil: sum_t w_t u(x + t) + centre * u(x)."""
        import torch.nn.functional as F

        up = F.pad(u[None, None], (1, 1, 1, 1, 1, 1))[0, 0]
        X, Y, Z = u.shape
        out = u * centre
        for (di, dj, dk), wgt in taps:
            out = out + up[1 + di:1 + di + X, 1 + dj:1 + dj + Y, 1 + dk:1 + dk + Z] * wgt
        return out

    def lap(self, v):
        return self._apply(v, *self.taps[0])

    def wave(self, v):
        if self.symbol is not None:
            import torch

            return torch.fft.irfftn(torch.fft.rfftn(v) * self.symbol, s=v.shape)
        return self._apply(v, *self.taps[1])

    def lap_wave(self, v):
        """v (X,Y,Z) -> (Laplacian(v), wave(v)), zero boundary."""
        return self.lap(v), self.wave(v)

    def lap_phi_wave_chi(self, phi, chi):
        return self.lap(phi), self.wave(chi)

    @staticmethod
    def _pad_axis(x, ax: int, before: int, after: int):
        import torch.nn.functional as F

        pads = [0] * 6
        pads[2 * (2 - ax)] = before
        pads[2 * (2 - ax) + 1] = after
        return F.pad(x, pads)

    def dplus(self, u, axis):
        """Forward difference along spatial ``axis`` (0..2) of (..., X, Y, Z), 0 at the last index."""
        ax = axis - u.ndim + 3 if axis < 0 else axis
        dim = u.ndim - 3 + ax
        n = u.shape[dim]
        d = (u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)) * (1.0 / self.h[ax])
        return self._pad_axis(d, ax, 0, 1)

    def dplus_t(self, p, axis):
        """Adjoint of :meth:`dplus` (= minus the backward-difference divergence)."""
        ax = axis - p.ndim + 3 if axis < 0 else axis
        dim = p.ndim - 3 + ax
        n = p.shape[dim]
        src = p.narrow(dim, 0, n - 1) * (1.0 / self.h[ax])
        return self._pad_axis(src, ax, 1, 0) - self._pad_axis(src, ax, 0, 1)

    def grad(self, u):
        import torch

        return torch.stack([self.dplus(u, a) for a in range(3)])

    def grad_t(self, p):
        return self.dplus_t(p[0], 0) + self.dplus_t(p[1], 1) + self.dplus_t(p[2], 2)

    # symmetric tensors stored as (xx, xy, xz, yy, yz, zz); norm counts off-diagonals twice
    def symgrad(self, w):
        import torch

        d = [[self.dplus(w[c], a) for a in range(3)] for c in range(3)]  # d[c][a] = d_a w_c
        return torch.stack([d[0][0], 0.5 * (d[1][0] + d[0][1]), 0.5 * (d[2][0] + d[0][2]),
                            d[1][1], 0.5 * (d[2][1] + d[1][2]), d[2][2]])

    def symgrad_t(self, q):
        import torch

        t = self.dplus_t
        # <E w, q> with weights (1,2,2,1,2,1): adjoint per component of w
        return torch.stack([t(q[0], 0) + t(q[1], 1) + t(q[2], 2),
                            t(q[1], 0) + t(q[3], 1) + t(q[4], 2),
                            t(q[2], 0) + t(q[4], 1) + t(q[5], 2)])


def _operator_norm(ops: "_Ops", m0, m, shape, device, n_iter: int = 12, seed: int = 0) -> float:
    """Power-iteration estimate of ||K|| for K(chi, w, phi) = (m0(wave chi - lap phi), m0 grad chi - m w, m0 E w)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    chi = torch.randn(shape, generator=g).to(device)
    w = torch.randn((3, *shape), generator=g).to(device)
    phi = torch.randn(shape, generator=g).to(device)
    norm = 1.0
    for _ in range(n_iter):
        nrm = torch.sqrt((chi ** 2).sum() + (w ** 2).sum() + (phi ** 2).sum())
        chi, w, phi = chi / nrm, w / nrm, phi / nrm
        lp, wc = ops.lap_phi_wave_chi(phi, chi)
        eta = m0 * (wc - lp)
        p = m0 * ops.grad(chi) - m * w
        q = m0 * ops.symgrad(w)
        # K^T
        lv, wv = ops.lap_wave(m0 * eta)
        chi = wv + ops.grad_t(m0 * p)
        w = -m * p + ops.symgrad_t(m0 * q)
        phi = -lv
        norm = float(torch.sqrt(torch.sqrt((chi ** 2).sum() + (w ** 2).sum() + (phi ** 2).sum())))
    return norm


NORM_BOX = 64
"""Edge of the sub-box on which the operator norm is estimated for larger grids."""


def _norm_estimate(ops: "_Ops", m0, m, voxel_size, b0_dir, dev, constraint_scale: float, wave: str) -> float:
    """||K||, by power iteration on the whole grid or, when larger than ``NORM_BOX``^3, on the
    ``NORM_BOX``^3 sub-box centred on the mask's centroid, times 1.05. The norm of these local
    (and k-space) difference operators is set by the highest spatial frequencies, which such a box
    holds; measured 2 % below a 30-iteration full-grid estimate on a 160^3 head (axial and 25 degrees), at 1/50 of the cost."""
    import torch

    shape = tuple(m.shape)
    if max(shape) <= NORM_BOX:
        return _operator_norm(ops, m0, m, shape, dev)
    idx = torch.nonzero(m0 > 0).float().mean(0) if bool((m0 > 0).any()) else torch.tensor(shape) / 2
    sl = []
    for a, n in enumerate(shape):
        e = min(NORM_BOX, n)
        lo = int(min(max(round(float(idx[a]) - e / 2), 0), n - e))
        sl.append(slice(lo, lo + e))
    sl = tuple(sl)
    sub = tuple(x.stop - x.start for x in sl)
    sub_ops = _Ops(voxel_size, b0_dir, dev, scale=constraint_scale, shape=sub, wave=wave)
    return 1.05 * _operator_norm(sub_ops, m0[sl].contiguous(), m[sl].contiguous(), sub, dev)


def _make_step(ops: "_Ops", f0, m, m0, tau: float, sigma: float, a0: float, a1: float):
    """One Chambolle-Pock iteration (dual ascent, primal descent, extragradient), out of place."""
    import torch

    m_fac = 1.0 / (1.0 + tau * m)
    qw = torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0, 1.0], device=f0.device).view(6, 1, 1, 1)

    def step(chi, chi_, phi, phi_, w, w_, eta, p, q):
        # dual ascent: eta (hard constraint), p (|.| <= alpha1), q (Frobenius |.| <= alpha0)
        eta = eta + sigma * m0 * (ops.wave(chi_) - ops.lap(phi_) - f0)
        p = p + sigma * (m0 * ops.grad(chi_) - m * w_)
        p = p / torch.clamp(torch.sqrt((p * p).sum(0)) * (1.0 / a1), min=1.0)
        q = q + sigma * m0 * ops.symgrad(w_)
        q = q / torch.clamp(torch.sqrt((qw * q * q).sum(0)) * (1.0 / a0), min=1.0)
        # primal descent (prox of 1/2 ||phi||^2 on the mask)
        v = m0 * eta
        phi_new = (phi + tau * ops.lap(v)) * m_fac
        chi_new = chi - tau * (ops.wave(v) + ops.grad_t(m0 * p))
        w_new = w - tau * (ops.symgrad_t(m0 * q) - m * p)
        # extragradient
        return (chi_new, 2 * chi_new - chi, phi_new, 2 * phi_new - phi, w_new, 2 * w_new - w, eta, p, q)

    return step


def _try_compile(step, state):
    """torch.compile the step (fuses ~100 elementwise ops: several times faster on CPU); eager on failure."""
    import torch

    try:
        cstep = torch.compile(step, dynamic=False)
        cstep(*state)  # compile now, so failures fall back here (result discarded)
        return cstep
    except Exception:  # noqa: BLE001 - no compiler / unsupported platform: eager is correct, only slower
        return step


def _solve(f0, m, m0, voxel_size, b0_dir, alpha, iterations: int, dev: str, constraint_scale: float,
           ratio: float, step_scale: float, compile_step, progress=None, state=None, stage: str = "TGV",
           wave: str = "fft"):
    """Run ``iterations`` Chambolle-Pock steps on cropped tensors; returns the state list."""
    import torch

    from ..pipeline import report

    shape = tuple(f0.shape)
    ops = _Ops(voxel_size, b0_dir, dev, scale=constraint_scale, shape=shape, wave=wave)
    L = _norm_estimate(ops, m0, m, voxel_size, b0_dir, dev, constraint_scale, wave)
    tau = step_scale / L * ratio
    sigma = step_scale / L / ratio
    if state is None:
        z = torch.zeros(shape, device=dev)
        v3 = (3, *shape)
        state = [z, z.clone(), z.clone(), z.clone(), torch.zeros(v3, device=dev), torch.zeros(v3, device=dev),
                 z.clone(), torch.zeros(v3, device=dev), torch.zeros((6, *shape), device=dev)]
    step = _make_step(ops, f0, m, m0, tau, sigma, float(alpha[0]), float(alpha[1]))
    big = int(np.prod(shape)) * int(iterations) > 2e8
    if compile_step is True or (compile_step == "auto" and dev == "cpu" and big):
        step = _try_compile(step, state)
    every = max(iterations // 50, 1)
    for it in range(int(iterations)):
        state = step(*state)
        if progress is not None and it % every == 0:
            report(progress, it / iterations, f"{stage} iteration {it}/{iterations}")
    return state


def _coarsen(f0, m, voxel_size):
    """2x2x2 block average of the Laplacian data (over the constraint voxels) and majority mask."""
    import torch.nn.functional as F

    mm = F.avg_pool3d(m[None, None], 2)[0, 0]
    mc = (mm >= 0.5).float()
    num = F.avg_pool3d((f0)[None, None], 2)[0, 0]
    cnt = F.avg_pool3d((f0 != 0).float()[None, None], 2)[0, 0]
    fc = num / cnt.clamp(min=1e-6) * (cnt > 0)
    m0c = torch_erode(mc)
    return fc * m0c, mc, m0c, tuple(2 * float(v) for v in voxel_size)


def torch_erode(m):
    """6-neighbour erosion of a {0,1} float tensor (X, Y, Z)."""
    import torch.nn.functional as F

    k = m.new_zeros((1, 1, 3, 3, 3))
    k[0, 0, 1, 1, :] = k[0, 0, 1, :, 1] = k[0, 0, :, 1, 1] = 1
    return (F.conv3d(m[None, None], k, padding=1)[0, 0] > 6.5).float()


def _upsample_state(state, shape):
    import torch.nn.functional as F

    out = []
    for x in state:
        y = x[None] if x.ndim == 4 else x[None, None]
        y = F.interpolate(y, size=shape, mode="trilinear", align_corners=False)
        out.append(y[0] if x.ndim == 4 else y[0, 0])
    # restart the extragradient: bars equal the primal iterates
    out[1], out[3], out[5] = out[0].clone(), out[2].clone(), out[4].clone()
    return out


def _multilevel(f0, m, m0, voxel_size, iterations: int, n_coarse: int, progress, kw, level: int = 0):
    """Coarse-to-fine: solve on 2x coarser grids (recursively while the grid has >= 32 voxels per side),
    upsample, then iterate on this grid."""
    from ..progress import scaled

    state = None
    shape = tuple(f0.shape)
    if n_coarse > 0 and min(shape) >= 32 and all(s % 2 == 0 for s in shape):
        fc, mc, m0c, vsc = _coarsen(f0, m, voxel_size)
        if m0c.sum() >= 8:
            state = _multilevel(fc, mc, m0c, vsc, n_coarse, n_coarse, scaled(progress, 0, 0.2), kw, level + 1)
            state = _upsample_state(state, shape)
    start = 0.2 if state is not None else 0.0
    return _solve(f0, m, m0, voxel_size, iterations=iterations, state=state,
                  progress=scaled(progress, start, 1.0), stage=f"TGV level {level}", **kw)


def tgv_qsm_laplacian(lap_phi0: np.ndarray, mask: np.ndarray, voxel_size: Vec3 = (1, 1, 1),
                      b0_dir: Vec3 = (0, 0, 1), alpha: Sequence[float] = DEFAULT_ALPHA,
                      iterations: int = DEFAULT_ITERATIONS, device: str = "auto", progress=None,
                      step_scale: float = 0.99, constraint_scale: float = DEFAULT_CONSTRAINT_SCALE,
                      ratio: float | None = None, compile_step: bool | str = "auto",
                      coarse_iterations: int | None = None, wave: str = "fft") -> np.ndarray:
    """Solve TGV-QSM given the Laplacian of the phase ``lap_phi0`` [rad/mm^2] on ``mask`` (already eroded).

    Returns chi in phase units (rad; divide by :func:`rad_per_ppm` for ppm), zero outside ``mask``.
    The problem is cropped to the mask's bounding box plus a 3-voxel margin.

    Step sizes (``ratio`` default: 100 x (geometric-mean voxel size in mm)^2, measured best at
    1 mm on blob phantoms and at 3.3 mm on realistic heads):
    tau = step_scale * ratio / L, sigma = step_scale / (ratio * L), with L the
    power-iteration norm of the (scaled) operator, so tau * sigma * L^2 < 1 (convergent).
    ``constraint_scale`` multiplies both sides of the Laplacian constraint (same solution, better
    conditioning: the Laplacian rows are ~10x larger than the gradient rows). ``compile_step``:
    torch.compile the iteration ('auto': on CPU when voxels x iterations > 2e8; falls back to
    eager when no compiler is available). ``coarse_iterations`` > 0 first solves the problem on a
    2x coarser grid (8x cheaper per iteration) and starts the fine iterations from its upsampled
    solution (coarse-to-fine warm start; ``None`` = :data:`DEFAULT_COARSE_ITERATIONS`).
    """
    import torch

    if wave not in ("fft", "stencil"):
        raise QSMInputError("wave", f"unknown TGV wave operator {wave!r}", "use 'fft' (default) or 'stencil'")
    dev = pick_device(device)
    mask = np.asarray(mask, dtype=bool)
    mask0 = erode(mask, 1)
    if mask0.sum() < 8:
        raise QSMInputError("mask", "is too small for TGV-QSM after erosion",
                            "pass a brain mask covering the brain (or lower `erosions`)")
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # pad so the margin exists even at the volume border, and to even sizes (for the coarse grid)
    pad = [(3, 3 + (-(int(b - a) + 6)) % 8) for a, b in zip(lo, hi)]

    def prep(x, dtype=np.float32):
        return torch.from_numpy(np.ascontiguousarray(np.pad(np.asarray(x)[box], pad).astype(dtype))).to(dev)

    # dedimensionalise: solve on unit voxels (geometric mean 1 mm), an exact reformulation
    # (Laplacians x c^2, alpha1 / c, alpha0 / c^2) that keeps the tuned step sizes valid
    c = float(np.prod(np.asarray(voxel_size, dtype=np.float64)) ** (1.0 / 3.0))
    voxel_size = tuple(float(v) / c for v in voxel_size)
    if ratio is None:  # the dual bounds shrink as 1/c (p) and 1/c^2 (q): measured best ~100 c^2
        ratio = DEFAULT_RATIO * c * c
    alpha = (float(alpha[0]) / c ** 2, float(alpha[1]) / c)
    f0 = prep(np.where(mask0, lap_phi0, 0) * (constraint_scale * c * c))
    m = prep(mask)
    m0 = prep(mask0)
    shape = tuple(f0.shape)
    n_coarse = int(DEFAULT_COARSE_ITERATIONS if coarse_iterations is None else coarse_iterations)
    n_threads = torch.get_num_threads()
    if dev == "cpu" and np.prod(shape) < SMALL_VOXELS:
        torch.set_num_threads(1)  # thread sync costs more than it saves on small grids
    kw = dict(alpha=alpha, dev=dev, constraint_scale=constraint_scale, ratio=ratio, step_scale=step_scale,
              compile_step=compile_step, b0_dir=b0_dir, wave=wave)
    try:
        with torch.no_grad():
            state = _multilevel(f0, m, m0, voxel_size, int(iterations), n_coarse, progress, kw)
            chi = state[0]
            out = np.zeros(mask.shape, dtype=np.float32)
            sx, sy, sz = (slice(3, 3 + int(b - a)) for a, b in zip(lo, hi))
            out[box] = (chi * m).cpu().numpy()[sx, sy, sz]
    finally:
        torch.set_num_threads(n_threads)
    return out


def tgv_qsm(total_field_ppm: np.ndarray, mask: np.ndarray, voxel_size: Vec3 = (1, 1, 1),
            b0_dir: Vec3 = (0, 0, 1), te_s: Optional[float] = None, b0_t: float = 3.0,
            alpha: Sequence[float] = DEFAULT_ALPHA, iterations: int = DEFAULT_ITERATIONS, erosions: int = 3,
            device: str = "auto", progress=None, coarse_iterations: int | None = None, wave: str = "fft",
            ) -> tuple[np.ndarray, np.ndarray]:
    """TGV-QSM from an unwrapped total (or local) field [ppm]; returns (chi [ppm], eroded mask).

    The field is scaled to phase at ``te_s`` (default 20 ms) and ``b0_t`` [T] so that ``alpha``
    has the published meaning, and its plain 7-point Laplacian is used.
    """
    te = REFERENCE_TE_S if te_s is None else float(te_s)
    s = rad_per_ppm(te, b0_t)
    m = erode(mask, erosions)
    lap = laplacian(np.asarray(total_field_ppm, np.float32) * s, voxel_size)
    chi = tgv_qsm_laplacian(lap, m, voxel_size, b0_dir, alpha, iterations, device, progress,
                            coarse_iterations=coarse_iterations, wave=wave)
    return (chi / s).astype(np.float32), m


def tgv_qsm_phase(phase_rad: np.ndarray, mask: np.ndarray, te_s: float, b0_t: float,
                  voxel_size: Vec3 = (1, 1, 1), b0_dir: Vec3 = (0, 0, 1),
                  alpha: Sequence[float] = DEFAULT_ALPHA, iterations: int = DEFAULT_ITERATIONS, erosions: int = 3,
                  device: str = "auto", progress=None, coarse_iterations: int | None = None,
                  wave: str = "fft") -> tuple[np.ndarray, np.ndarray]:
    """TGV-QSM from one echo of *wrapped* phase [rad] (no unwrapping: wrap-robust sin/cos Laplacian).

    Returns (chi [ppm], eroded mask).
    """
    m = erode(mask, erosions)
    lap = wrapped_laplacian(np.nan_to_num(np.asarray(phase_rad, np.float32)), voxel_size)
    chi = tgv_qsm_laplacian(lap, m, voxel_size, b0_dir, alpha, iterations, device, progress,
                            coarse_iterations=coarse_iterations, wave=wave)
    return (chi / rad_per_ppm(te_s, b0_t)).astype(np.float32), m


def run_tgv(inp, progress=None, alpha0: float = DEFAULT_ALPHA[0], alpha1: float = DEFAULT_ALPHA[1],
            iterations: int = DEFAULT_ITERATIONS, erosions: int = 3, te_s: Optional[float] = None,
            coarse_iterations: int | None = None, wave: str = "fft", **unknown):
    """Pipeline entry (``--method tgv``): total (or local) field [ppm] in ``inp`` -> chi [ppm].

    ``te_s`` overrides ``inp.te_s`` for the rad scaling of alpha (20 ms when both are missing).
    ``wave``: 'fft' (exact k-space wave operator, default) or 'stencil' (the reference's 3x3x3 stencil).
    """
    from ..pipeline import QSMResult
    from .pipelines import _check_unused

    _check_unused(unknown, "tgv")
    t0 = time.perf_counter()
    te = te_s if te_s is not None else inp.te_s
    dev = pick_device(inp.device)
    chi, m = tgv_qsm(inp.field, inp.mask, inp.voxel_size, inp.b0_dir, te_s=te, b0_t=inp.b0_t,
                     alpha=(alpha0, alpha1), iterations=int(iterations), erosions=int(erosions),
                     device=dev, progress=progress, coarse_iterations=coarse_iterations, wave=wave)
    params = {"wave": wave, "alpha0": alpha0, "alpha1": alpha1, "iterations": int(iterations), "erosions": int(erosions),
              "coarse_iterations": int(DEFAULT_COARSE_ITERATIONS if coarse_iterations is None else coarse_iterations),
              "te_s_for_alpha": te if te is not None else REFERENCE_TE_S, "b0_t": inp.b0_t}
    return QSMResult(chi=chi, method="tgv", mask=m, local_field=None,
                     timings={"tgv": time.perf_counter() - t0}, device=dev, params=params)

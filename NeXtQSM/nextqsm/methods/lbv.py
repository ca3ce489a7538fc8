"""LBV background field removal (Laplacian boundary value; Zhou, Liu, Spincemaille & Wang, NMR Biomed 2014).

Inside the brain the background field b is harmonic (Laplacian(b) = 0), and on the brain boundary
the local field is small compared with the background, so b is approximated by the solution of
Laplace's equation inside the mask with the total field as Dirichlet data on the mask boundary:

    Laplacian(b) = 0 in the interior,   b = f on the boundary layer,   local = f - b.

Discretisation: the 7-point Laplacian with physical voxel sizes (anisotropic voxels are exact);
the interior is the mask eroded once (6-neighbourhood), the boundary layer the rest of the mask.
The symmetric positive-definite system on the interior voxels is solved with conjugate gradients
(``scipy.sparse.linalg.cg`` on the interior voxels' CSR matrix) to a relative residual ``tol``, preconditioned by one
geometric multigrid V-cycle (the reference implementation solves the same problem with full multigrid): every level
keeps the voxels at even indices of the level above, trilinear prolongation ``P`` (zero from coarse nodes outside the
interior: Dirichlet), Galerkin coarse operators ``P^T A P``, two damped-Jacobi sweeps before and after, a sparse LU
on the coarsest level. At 164x205x205 it needs ~7 iterations instead of ~300 (``multigrid=False``: plain CG,
warm-started from the solution on a 2x coarser grid, recursively).
With ``device=`` (a torch device such as 'cuda') plain warm-started CG runs with torch on the 7-point stencil of the
interior's bounding box (float64; used by NeXtQSM's inference on a GPU, where an iteration costs microseconds).
The returned local field is zero outside the interior eroded ``peel`` more times (LBV's ``peel``
option: the outermost layers carry the largest errors), and the mask returned is that one.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, cg, factorized

from ..errors import QSMInputError

Vec3 = Sequence[float]


def _neg_laplacian(x: np.ndarray, inside: np.ndarray, w: np.ndarray) -> np.ndarray:
    """-L x with zero (Dirichlet) values outside ``inside``; w[a] = 1/h_a^2."""
    xi = np.where(inside, x, 0.0)
    out = 2.0 * float(w.sum()) * xi
    for a in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        out[tuple(lo)] -= w[a] * xi[tuple(hi)]
        out[tuple(hi)] -= w[a] * xi[tuple(lo)]
    return out


def _csr_from_slots(cols: np.ndarray, vals: np.ndarray, n_cols: int) -> sparse.csr_matrix:
    """CSR matrix from per-row slots ``cols`` / ``vals`` (n_rows, k), columns ascending along each row, -1 = empty."""
    ok = cols >= 0
    indptr = np.concatenate([[0], np.cumsum(ok.sum(1))])
    return sparse.csr_matrix((vals[ok], cols[ok], indptr), shape=(cols.shape[0], n_cols))


def _interior_matrix(inside: np.ndarray, w: np.ndarray) -> sparse.csr_matrix:
    """-L restricted to the ``inside`` voxels (CSR, 7 points; neighbours outside are the known Dirichlet
    values, moved to the right-hand side). Equal to :func:`_neg_laplacian` on ``inside``; ~4x faster per
    product than the masked stencil on the bounding box. ``inside`` must not touch the array's faces."""
    flat = np.flatnonzero(inside)                  # C order; no neighbour leaves the array (see above)
    n = flat.size
    lin = np.full(inside.size, -1, np.int64)
    lin[flat] = np.arange(n)
    stride = (inside.shape[1] * inside.shape[2], inside.shape[2], 1)   # of the C-order flat index (views too)
    # slots in ascending column order: -axis0, -axis1, -axis2, self, +axis2, +axis1, +axis0
    order = [(0, -1), (1, -1), (2, -1), None, (2, 1), (1, 1), (0, 1)]
    cols = np.empty((n, 7), np.int64)
    vals = np.empty((n, 7))
    for s, o in enumerate(order):
        if o is None:
            cols[:, s], vals[:, s] = np.arange(n), 2.0 * float(w.sum())
        else:
            cols[:, s], vals[:, s] = lin[flat + o[1] * int(stride[o[0]])], -float(w[o[0]])
    return _csr_from_slots(cols, vals, n)


def _prolongation(fine: np.ndarray, coarse: np.ndarray) -> sparse.csr_matrix:
    """(n_fine, n_coarse) trilinear interpolation from the coarse nodes (``coarse`` = the voxels at even indices of the
    finer level, ``coarse[I]`` sits at fine index 2I) to the ``fine`` voxels; coarse nodes outside ``coarse`` give zero."""
    fi = np.argwhere(fine)
    big = tuple(int(v) + 1 for v in coarse.shape)  # one extra layer: always outside
    lin = np.full(big, -1, np.int64)
    lin[tuple(slice(0, v) for v in coarse.shape)][coarse] = np.arange(int(coarse.sum()))
    lin = lin.ravel()
    lo, odd = fi >> 1, fi & 1
    w = 0.5 ** odd.sum(1)                          # 1/2 per odd axis, the same for each of its nodes
    base = (lo[:, 0] * big[1] + lo[:, 1]) * big[2] + lo[:, 2]
    step = (odd[:, 0] * big[1] * big[2], odd[:, 1] * big[2], odd[:, 2])
    cols = np.empty((len(fi), 8), np.int64)
    for s, d in enumerate(np.ndindex(2, 2, 2)):    # ascending coarse index along each row
        c = lin[base + d[0] * step[0] + d[1] * step[1] + d[2] * step[2]]
        # an even index takes only its own node: the d = 1 slot of an even axis repeats d = 0's node, drop it
        dup = np.zeros(len(fi), bool)
        for a in range(3):
            if d[a]:
                dup |= odd[:, a] == 0
        cols[:, s] = np.where(dup, -1, c)
    return _csr_from_slots(cols, np.broadcast_to(w[:, None], cols.shape), int(coarse.sum()))


def _multigrid(A: sparse.csr_matrix, inside: np.ndarray, min_n: int = 800, omega: float = 0.8,
               sweeps: int = 2) -> LinearOperator:
    """One symmetric V-cycle as a preconditioner for ``A`` (the system on the ``inside`` voxels; see the module notes)."""
    As, Ps, m = [A], [], inside
    while True:
        mc = m[::2, ::2, ::2]
        nc = int(mc.sum())
        if nc < min_n or nc == int(m.sum()):
            break
        P = _prolongation(m, mc)
        R = P.T.tocsr()
        Ps.append((P, R))
        As.append((R @ As[-1] @ P).tocsr())
        m = mc
    inv_d = [omega / a.diagonal() for a in As]
    coarsest = factorized(As[-1].tocsc())

    def vcycle(level: int, r: np.ndarray) -> np.ndarray:
        if level == len(As) - 1:
            return coarsest(r)
        a, d = As[level], inv_d[level]
        x = d * r
        for _ in range(sweeps - 1):
            x += d * (r - a @ x)
        P, R = Ps[level]
        x += P @ vcycle(level + 1, R @ (r - a @ x))
        for _ in range(sweeps):
            x += d * (r - a @ x)
        return x

    return LinearOperator(A.shape, matvec=lambda r: vcycle(0, np.asarray(r, np.float64).ravel()), dtype=np.float64)


def _cg_torch(ib: np.ndarray, w: np.ndarray, rhs: np.ndarray, x0: np.ndarray, tol: float, maxiter: int, device,
              callback: Optional[Callable[[int], None]] = None, check_every: int = 10) -> np.ndarray:
    """Conjugate gradients for ``-L x = rhs`` on the ``ib`` voxels (zero Dirichlet values outside them), with torch on
    ``device``: the stencil of :func:`_neg_laplacian`, float64. ``rhs`` / ``x0`` are vectors over ``ib``'s voxels (C order);
    stops when ``||r|| <= tol ||rhs||`` (scipy's criterion; tested every ``check_every`` iterations to spare device
    synchronisations) or after ``maxiter`` iterations. Returns the solution over ``ib``'s voxels."""
    import torch

    dev = torch.device(device)
    m = torch.from_numpy(np.ascontiguousarray(ib)).to(dev)
    diag = 2.0 * float(w.sum())

    def box(v: np.ndarray) -> torch.Tensor:
        t = torch.zeros(ib.shape, dtype=torch.float64, device=dev)
        t[m] = torch.from_numpy(np.ascontiguousarray(v, np.float64)).to(dev)
        return t

    def apply(x: torch.Tensor) -> torch.Tensor:   # -L x on ib (x is zero outside ib)
        out = diag * x
        for a in range(3):
            n = x.shape[a]
            out.narrow(a, 0, n - 1).sub_(x.narrow(a, 1, n - 1), alpha=float(w[a]))
            out.narrow(a, 1, n - 1).sub_(x.narrow(a, 0, n - 1), alpha=float(w[a]))
        return out.mul_(m)

    b, x = box(rhs), box(x0)
    stop = tol * torch.linalg.vector_norm(b)
    r = b - apply(x)
    p = r.clone()
    rs = torch.dot(r.ravel(), r.ravel())
    for it in range(1, int(maxiter) + 1):
        ap = apply(p)
        alpha = rs / torch.dot(p.ravel(), ap.ravel())
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        rs_new = torch.dot(r.ravel(), r.ravel())
        if callback is not None:
            callback(it)
        if it % check_every == 0 and bool(torch.sqrt(rs_new) <= stop):
            break
        p.mul_(rs_new / rs).add_(r)
        rs = rs_new
    return x[m].cpu().numpy()


def _coarse_start(fb: np.ndarray, mb: np.ndarray, voxel_size: Vec3, tol: float, maxiter: int,
                  device=None) -> Optional[np.ndarray]:
    """Background field [ppm] on the grid of ``fb`` from LBV on every second voxel (recursively), linearly
    interpolated; None when the coarse mask is too small to be worth it (< 4096 voxels)."""
    fc, mc = fb[::2, ::2, ::2], mb[::2, ::2, ::2]
    if mc.sum() < 4096:
        return None
    try:
        loc, ic = lbv(fc, mc, tuple(2.0 * float(v) for v in voxel_size), tol=tol, maxiter=maxiter, device=device,
                      multigrid=False)
    except QSMInputError:
        return None
    bg = fc - loc
    near = ndi.distance_transform_edt(~ic, return_distances=False, return_indices=True)
    bg = bg[tuple(near)]   # defined everywhere: the nearest coarse interior value outside the coarse interior
    coords = np.indices(fb.shape, dtype=np.float32) / 2.0
    return ndi.map_coordinates(bg, coords, order=1, mode="nearest")


def lbv(total_field: np.ndarray, mask: np.ndarray, voxel_size: Vec3 = (1.0, 1.0, 1.0), tol: float = 1e-6,
        maxiter: int = 3000, peel: int = 0,
        callback: Optional[Callable[[int, int], None]] = None, coarse: bool = True,
        corner_boundary: bool = False, device=None, multigrid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field [ppm] by solving Laplace's equation in ``mask`` (see the module notes).

    Args:
        total_field: 3D unwrapped total field [ppm]; only values inside ``mask`` are used.
        mask: 3D brain mask. voxel_size: mm.
        tol: relative residual of the CG solve. maxiter: CG iteration limit.
        corner_boundary: treat mask voxels that touch the outside by an edge or a corner (not only a face) as
            boundary too, i.e. the interior is the 26-neighbour erosion. Where sources lie just outside the mask
            those voxels' field is far from discretely harmonic; with the shipped VN on training maps 1-4 at 1 mm this
            lowered the mean chi NRMSE 39.5 -> 36.0 % (tilted B0 42.0 -> 36.3 %) but also the tilted XSIM by 0.015 (0.014 with peel 0),
            so the pipeline does not use it (benchmarks/results_diag_lbv_boundary.md). Default False (the reference).
        peel: extra 6-neighbour erosions of the returned mask (default 0, as in the reference: every
            interior voxel; on the 64^3 heads peel 1 lowers the local-field NRMSE from 25-32 % to 17-24 %).
        callback: called as ``callback(iteration, maxiter)``.
        coarse: warm-start plain CG (``multigrid=False`` or ``device``) from the solution on a 2x coarser grid
            (same answer to ``tol``, faster).
        multigrid: on the CPU, precondition CG with a geometric multigrid V-cycle (same answer to ``tol``; 164x205x205
            white-noise field, 2 cores: LBV ~15 s -> ~6 s). False: plain CG.
        device: None (scipy's CG on a sparse matrix) or a torch device ('cuda', 'cpu'): plain warm-started CG with
            torch (same answer to ``tol``; tested against scipy); ``multigrid`` does not apply.
    Returns:
        (local field [ppm], float32, zero outside the returned mask; the returned bool mask).
    """
    f = np.asarray(total_field, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise QSMInputError("total field / mask", f"shapes {f.shape} and {m.shape} do not match",
                            "pass a 3D field and a mask on the same grid")
    st = ndi.generate_binary_structure(3, 1)
    interior = ndi.binary_erosion(m, ndi.generate_binary_structure(3, 3) if corner_boundary else st)
    if interior.sum() < 8:
        raise QSMInputError("mask", "has no interior after one erosion (LBV needs a solid brain mask)",
                            "pass a brain mask covering the brain")
    idx = np.argwhere(m)
    box = tuple(slice(max(int(lo) - 1, 0), int(hi) + 2) for lo, hi in zip(idx.min(0), idx.max(0)))
    fb, mb, ib = np.where(m[box], f[box], 0.0), m[box], interior[box]
    w = 1.0 / np.asarray(voxel_size, dtype=np.float64) ** 2
    boundary = mb & ~ib
    # right-hand side: the known boundary values moved across (A b_int = -L(boundary values) on the interior)
    rhs = -_neg_laplacian(np.where(boundary, fb, 0.0), np.ones_like(mb), w)[ib]
    # plain CG's warm start: the solution on a 2x coarser grid (nested iteration: CG then only has to remove the
    # fine-scale error, ~3x fewer iterations at 160^3), else the boundary values spread inwards. Multigrid-
    # preconditioned CG starts from zero: its first V-cycles remove that error anyway.
    mg = multigrid and device is None
    x0 = _coarse_start(fb, mb, voxel_size, tol, maxiter, device) if (coarse and not mg) else None
    if x0 is None and not mg:
        near = ndi.distance_transform_edt(~boundary, return_distances=False, return_indices=True)
        x0 = fb[tuple(near)]
    x0 = None if x0 is None else x0[ib]
    it = [0]

    def cb(_):
        it[0] += 1
        if callback is not None and it[0] % (1 if mg else 25) == 0:   # multigrid: ~10 iterations in all
            callback(it[0], maxiter)

    if device is not None:
        sol = _cg_torch(ib, w, rhs, x0, tol, maxiter, device, cb)
    else:
        A = _interior_matrix(ib, w)
        sol, info = cg(A, rhs, x0=x0, rtol=tol, maxiter=int(maxiter), callback=cb, M=_multigrid(A, ib) if mg else None)
    keep = ndi.binary_erosion(ib, st, iterations=int(peel)) if peel > 0 else ib
    bg = np.zeros(mb.shape)
    bg[ib] = sol
    local = np.zeros(m.shape, np.float32)
    out_mask = np.zeros(m.shape, bool)
    out_mask[box] = keep
    local[box] = np.where(keep, fb - bg, 0.0)
    return local, out_mask

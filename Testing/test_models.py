"""Networks, weights and inference: shapes, gradients, overfitting, scale-awareness, oblique B0,
save/load with checksum verification, the pipeline entry points (tiny models, CPU, fast)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nextqsm.dipole import dipole_kernel_torch, forward_field  # noqa: E402
from nextqsm.errors import QSMInputError  # noqa: E402
from nextqsm.geometry import b0_direction, oblique_affine  # noqa: E402
from nextqsm.models.unet import UNet3D, tiled_apply  # noqa: E402
from nextqsm.models.vn import (NeXtQSM, ScaledUNet, VariationalNetwork, batch_kernels,  # noqa: E402
                               consistency_step, dipole_conv, even_padded_shape, half_kernel,
                               highpass_noise)
from nextqsm.models.weights import WeightsChecksumError, load_model, save_model  # noqa: E402
from nextqsm.pipeline import QSMInput, run  # noqa: E402

TINY = {"base": 4, "depth": 2, "convs": 1}


def toy(size=20, b0=(0.0, 0.0, 1.0), vs=(1.0, 1.0, 1.0), seed=0):
    """Ellipsoid chi in a sphere mask, local field via the core forward model (ppm)."""
    rng = np.random.default_rng(seed)
    c = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    mask = (c ** 2).sum(0) < 0.7
    chi = np.zeros((size,) * 3, np.float32)
    for _ in range(4):
        cen, rad = rng.uniform(-0.4, 0.4, 3), rng.uniform(0.15, 0.3, 3)
        chi[((((c.T - cen) / rad) ** 2).sum(-1) < 1).T] += rng.uniform(-0.1, 0.2)
    chi *= mask
    lf = forward_field(chi, vs, b0) * mask
    return chi, lf.astype(np.float32), mask


def t5(a):
    return torch.from_numpy(np.asarray(a, np.float32))[None, None]


def test_unet_shapes_any_size_and_multiple():
    net = UNet3D(in_ch=2, out_ch=3, base=4, depth=3, convs=2, norm="group")
    assert net.multiple == 8
    y = net(torch.randn(2, 2, 13, 17, 9))
    assert y.shape == (2, 3, 13, 17, 9)
    for norm in ("none", "instance"):
        assert UNet3D(base=4, depth=2, norm=norm)(torch.randn(1, 1, 10, 12, 7)).shape == (1, 1, 10, 12, 7)


def test_fast_conv_weight_gradient_matches_autograd():
    from nextqsm.models import unet as U

    torch.manual_seed(0)
    conv = U.Conv3d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 9, 8, 7, requires_grad=True)
    g = torch.randn(2, 5, 9, 8, 7)
    conv(x).backward(g)
    gw, gx = conv.weight.grad.clone(), x.grad.clone()
    conv.weight.grad, x.grad = None, None
    torch.nn.functional.conv3d(x, conv.weight, padding=1).backward(g)
    assert torch.allclose(gw, conv.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(gx, x.grad, rtol=1e-4, atol=1e-5)


def test_dipole_conv_matches_core_and_is_self_adjoint():
    from nextqsm.dipole import forward_field_torch

    shape, vs, b0 = (14, 15, 11), (1.0, 1.2, 0.9), (0.2, 0.3, 1.0)
    ps = even_padded_shape(shape)
    assert ps[-1] % 2 == 0
    k = half_kernel(dipole_kernel_torch(ps, vs, b0))
    x, y = torch.randn(1, 1, *shape), torch.randn(1, 1, *shape)
    ref = forward_field_torch(x, vs, b0, pad=[(p - n) // 2 for p, n in zip(ps, shape)],
                              kernel=dipole_kernel_torch(ps, vs, b0))
    assert torch.allclose(dipole_conv(x, k), ref, atol=1e-5)
    assert abs(float((dipole_conv(x, k) * y).sum() - (x * dipole_conv(y, k)).sum())) < 1e-3


def test_vn_data_term_is_the_analytic_gradient():
    vn = VariationalNetwork(steps=1, unet=TINY)
    shape = (12, 10, 11)
    k = batch_kernels(shape, (1, 1, 1), (0.3, 0, 1), 1)
    x = torch.randn(1, 1, *shape, requires_grad=True)
    f, m = torch.randn(1, 1, *shape), (torch.rand(1, 1, *shape) > 0.3).float()
    (0.5 * ((m * (dipole_conv(x, k) - f)) ** 2).sum()).backward()
    assert torch.allclose(vn.data_grad(x.detach(), f, m, k), x.grad, atol=1e-4)


def test_vn_outside_weight_data_term(tmp_path):
    """outside_weight w: the data term weighs the mask 1, the rim between the data mask and out_mask 0
    (field unknown there) and the rest of the grid w (field zero there); its gradient is the exact
    gradient of 0.5 sum W (D x - f)^2; the setting changes the solution and survives save/load."""
    shape = (14, 12, 13)
    m = torch.zeros(1, 1, *shape)
    m[..., 4:10, 4:8, 4:9] = 1
    om = torch.zeros_like(m)
    om[..., 3:11, 3:9, 3:10] = 1
    vn = VariationalNetwork(steps=2, unet=TINY, fill_rim=True, outside_weight=0.5)
    w = vn.data_weights(m, om)
    assert torch.equal(w[m > 0], torch.ones(int(m.sum())))
    assert torch.equal(w[(om > 0) & (m == 0)], torch.zeros(int(om.sum() - m.sum())))
    assert torch.equal(w[om == 0], torch.full((int((om == 0).sum()),), 0.5))
    assert torch.equal(VariationalNetwork(steps=1, unet=TINY).data_weights(m, om), m)  # w = 0: mask only
    k = batch_kernels(shape, (1, 1, 1.5), (0.3, 0, 1), 1)
    x = torch.randn(1, 1, *shape, requires_grad=True)
    f = torch.randn(1, 1, *shape) * m
    (0.5 * (w * (dipole_conv(x, k) - f) ** 2).sum()).backward()
    assert torch.allclose(vn.data_grad(x.detach(), f, w, k), x.grad, atol=1e-4)
    # same weights, with and without the outside term: different chi (the term acts)
    plain = VariationalNetwork(steps=2, unet=TINY, fill_rim=True)
    plain.load_state_dict(vn.state_dict())
    _, lf, mask = toy(16)
    with torch.no_grad():
        assert not torch.allclose(plain(t5(lf), t5(mask)), vn(t5(lf), t5(mask)), atol=1e-6)
    save_model(vn, "nextqsm-vn", tmp_path)
    back = load_model("nextqsm-vn", tmp_path)
    assert back.outside_weight == 0.5
    with torch.no_grad():
        assert torch.equal(back(t5(lf), t5(mask)), vn.eval()(t5(lf), t5(mask)))
    with pytest.raises(ValueError, match="outside_weight"):
        VariationalNetwork(steps=1, unet=TINY, outside_weight=2.0)


def test_consistency_step_is_the_exact_minimiser(tmp_path):
    """consistency_step solves argmin_y ||D y - f||^2 + mu ||y - x||^2 exactly: on an unpadded grid the
    gradient D (D y - f) + mu (y - x) vanishes; mu -> inf keeps x, small mu fits the field away from
    the magic cone; it is linear (scale-aware); the VN's dc_mu changes chi, survives save/load,
    run_nextqsm(dc_mu=...) overrides it, and it is off by default after background removal."""
    shape = (16, 16, 16)
    k = batch_kernels(shape, (1, 1, 1.5), (0.2, 0, 1), 1, pad=0)
    assert tuple(k.shape[-3:]) == (16, 16, 9)   # no padding: the crop is the identity
    g = torch.Generator().manual_seed(0)
    x, f = torch.randn(1, 1, *shape, generator=g), torch.randn(1, 1, *shape, generator=g)
    for mu in (0.05, 1.0):
        y = consistency_step(x, f, k, mu)
        grad = dipole_conv(dipole_conv(y, k) - f, k) + mu * (y - x)
        assert grad.abs().max() < 1e-4 * f.abs().max()
        assert torch.allclose(consistency_step(2 * x, 2 * f, k, mu), 2 * y, atol=1e-5)
    assert torch.allclose(consistency_step(x, f, k, 1e8), x, atol=1e-5)
    # a field that is exactly dipolar is reproduced away from the cone when mu is small
    chi = torch.randn(1, 1, *shape, generator=g)
    fd = dipole_conv(chi, k)
    y = consistency_step(torch.zeros_like(chi), fd, k, 1e-4)
    assert float((dipole_conv(y, k) - fd).norm() / fd.norm()) < 0.01
    # inside the VN
    _, lf, mask = toy(16)
    vn = VariationalNetwork(steps=2, unet=TINY, dc_mu=0.3)
    assert vn.config["dc_mu"] == 0.3 and "dc_mu" not in VariationalNetwork(steps=1, unet=TINY).config
    with torch.no_grad():
        a = vn(t5(lf), t5(mask))
        vn.dc_mu = 0.0
        b = vn(t5(lf), t5(mask))
        vn.dc_mu = 0.3
    assert not torch.allclose(a, b, atol=1e-6)
    save_model(vn, "nextqsm-vn", tmp_path)
    save_model(ScaledUNet(TINY), "nextqsm-bfr", tmp_path)
    back = load_model("nextqsm-vn", tmp_path)
    assert back.dc_mu == 0.3
    with torch.no_grad():
        assert torch.equal(back(t5(lf), t5(mask)), a)
    inp = QSMInput(field=lf, mask=mask, kind="local")
    r0, r3 = run("nextqsm", inp, weights_dir=tmp_path, dc_mu=0.0), run("nextqsm", inp, weights_dir=tmp_path)
    assert r0.params["dc_mu"] == 0.0 and r3.params["dc_mu"] == 0.3
    assert not np.allclose(r0.chi, r3.chi, atol=1e-6)
    # total-field input: off by default after the pipeline's own background removal, on when asked
    tot = QSMInput(field=lf, mask=mask, kind="total")
    for bfr in ("unet", "vsharp"):
        assert run("nextqsm", tot, weights_dir=tmp_path, bfr=bfr).params["dc_mu"] == 0.0
        assert run("nextqsm", tot, weights_dir=tmp_path, bfr=bfr, dc_mu=0.3).params["dc_mu"] == 0.3
    with pytest.raises(QSMInputError, match="dc_mu"):
        run("nextqsm", inp, weights_dir=tmp_path, dc_mu=-1.0)
    with pytest.raises(ValueError, match="dc_mu"):
        VariationalNetwork(steps=1, unet=TINY, dc_mu=-0.1)


def test_noise_aware_consistency_weight(tmp_path):
    """highpass_noise matches scipy's Gaussian high-pass MAD, is scale-free and grows with white noise;
    dc_noise raises the consistency weight only above s0, per sample, and survives save/load."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    smooth = ndi.gaussian_filter(rng.normal(size=(28, 28, 28)), 2.0).astype(np.float32)
    m = np.zeros(smooth.shape, bool)
    m[5:23, 5:23, 5:23] = True
    noise = rng.normal(size=smooth.shape).astype(np.float32) * float(smooth[m].std())
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]  # noqa: E731
    qs = []
    for level in (0.0, 0.1, 0.3, 1.0):
        f = (smooth + level * noise) * m
        q = float(highpass_noise(t(f), t(m)))
        inner = ndi.binary_erosion(m, np.ones((3, 3, 3)), iterations=2)
        r = f - ndi.gaussian_filter(f, 1.0, mode="constant")
        ref = 1.4826 * np.median(np.abs(r[inner] - np.median(r[inner]))) / f[m].std()
        assert abs(q - ref) < 1e-3 * max(ref, 1e-3)
        assert abs(float(highpass_noise(t(7 * f), t(m))) - q) < 1e-5
        qs.append(q)
    assert qs == sorted(qs) and qs[-1] > 3 * qs[0]
    vn = VariationalNetwork(steps=1, unet=TINY, dc_mu=0.1, dc_noise=(qs[1], 4.0))
    fb = torch.cat([t(smooth * m), t((smooth + noise) * m)])
    mb = torch.cat([t(m), t(m)])
    mu = vn.consistency_weight(fb, mb)
    assert mu.shape == (2,) and float(mu[0]) == pytest.approx(0.1)
    assert float(mu[1]) == pytest.approx(0.1 * (qs[-1] / qs[1]) ** 4, rel=1e-3)
    save_model(vn, "nextqsm-vn", tmp_path)
    back = load_model("nextqsm-vn", tmp_path)
    assert back.dc_noise == (pytest.approx(qs[1]), 4.0) and back.config["dc_noise"] == [qs[1], 4.0]
    with pytest.raises(ValueError, match="dc_noise"):
        VariationalNetwork(steps=1, unet=TINY, dc_mu=0.1, dc_noise=(0.0, 2.0))


def test_vn_shapes_lambdas_and_gradient_flow():
    vn = VariationalNetwork(steps=3, unet=TINY)
    assert torch.allclose(vn.lambdas, torch.full((3,), 0.1), atol=1e-6)
    _, lf, mask = toy(16)
    chi = vn(t5(lf), t5(mask), (1, 1, 1), (0, 0, 1))
    assert chi.shape == (1, 1, 16, 16, 16)
    chi.abs().sum().backward()
    for name, p in vn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        vn.rho.fill_(-50.0)
    assert (vn.lambdas >= 0).all()  # softplus keeps lambda non-negative


def test_vn_overfits_one_tiny_batch():
    """30 Adam steps on one 12^3 volume at least halve the (demeaned) L1 loss (measured: 2.3x)."""
    from nextqsm_training.train import l1

    torch.manual_seed(0)
    chi, lf, mask = toy(12)
    vn = VariationalNetwork(steps=2, unet={"base": 8, "depth": 1, "convs": 1})
    rest = [p for n, p in vn.named_parameters() if n != "rho"]
    opt = torch.optim.Adam([{"params": rest}, {"params": [vn.rho], "lr": 0.1}], lr=1e-2)
    f, m, ref = t5(lf), t5(mask), t5(chi)
    losses = []
    for _ in range(30):
        loss = l1(vn(f, m), ref, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 2, losses[::6]


@pytest.mark.parametrize("cls", ["vn", "vn-noise-cond", "unet"])
def test_scale_awareness_x2_input_gives_x2_output(cls):
    """Normalisation inside the model: f -> 2 f gives chi -> 2 chi within 1e-4 relative (max abs)."""
    torch.manual_seed(1)
    _, lf, mask = toy(16)
    net = (VariationalNetwork(steps=2, unet=TINY, noise_cond=cls == "vn-noise-cond") if cls.startswith("vn")
           else ScaledUNet(TINY))
    with torch.no_grad():
        for p in net.parameters():  # non-trivial weights
            p.add_(0.05 * torch.randn_like(p))
        y1 = net(t5(lf), t5(mask))
        y2 = net(2 * t5(lf), t5(mask))
        y3 = net(1000 * t5(lf), t5(mask))
    scale = float(y1.abs().max())
    assert scale > 0
    assert float((y2 - 2 * y1).abs().max()) <= 1e-4 * 2 * scale
    assert float((y3 - 1000 * y1).abs().max()) <= 1e-4 * 1000 * scale


def test_vn_level_shifts_chi_inside_the_mask_scale_aware(tmp_path):
    """``level`` adds level x robust_scale(field) to chi inside the output mask only, keeps f -> 2 f => chi -> 2 chi,
    is recorded in the manifest's arch and survives save/load; a non-finite level is refused."""
    from nextqsm.models.vn import robust_scale

    torch.manual_seed(2)
    _, lf, mask = toy(16)
    vn = VariationalNetwork(steps=2, unet=TINY)
    f, m = t5(lf), t5(mask)
    with torch.no_grad():
        y0 = vn(f, m)
        vn.set_level(0.4)
        y1 = vn(f, m)
        y2 = vn(2 * f, m)
    s = float(robust_scale(f, m).reshape(()))
    inside = m > 0
    assert torch.allclose((y1 - y0)[inside], torch.full_like(y1[inside], 0.4 * s), atol=1e-6)
    assert float((y1 - y0)[~inside].abs().max()) == 0.0
    assert float((y2 - 2 * y1).abs().max()) <= 1e-4 * 2 * float(y1.abs().max())
    assert vn.config["level"] == 0.4 and "level" not in VariationalNetwork(steps=1, unet=TINY).config
    save_model(vn, "nextqsm-vn", tmp_path)
    back = load_model("nextqsm-vn", tmp_path)
    assert back.level == 0.4
    with torch.no_grad():
        assert torch.equal(back(f, m), y1)
    with pytest.raises(ValueError, match="level"):
        vn.set_level(float("nan"))


def test_oblique_b0_from_affine_uses_the_tilted_kernel():
    aff = oblique_affine((1.0, 1.0, 1.0), 25.0, "x", shape=(16, 16, 16))
    b0 = b0_direction(aff)
    assert abs(np.degrees(np.arccos(abs(b0[2]))) - 25.0) < 1e-6
    shape = (16, 16, 16)
    k = batch_kernels(shape, (1, 1, 1), b0, 1)
    ref = half_kernel(dipole_kernel_torch(even_padded_shape(shape), (1, 1, 1), b0))
    assert torch.equal(k[0, 0], ref)
    assert not torch.allclose(k, batch_kernels(shape, (1, 1, 1), (0, 0, 1), 1))
    # per-sample kernels in one batch
    kb = batch_kernels(shape, (1, 1, 1), torch.tensor([b0, (0.0, 0.0, 1.0)]), 2)
    assert kb.shape[0] == 2 and torch.allclose(kb[0, 0], ref, atol=1e-6)
    chi, lf, mask = toy(16, b0=b0)
    vn = VariationalNetwork(steps=2, unet=TINY)
    with torch.no_grad():
        a = vn(t5(lf), t5(mask), (1, 1, 1), b0)
        b = vn(t5(lf), t5(mask), (1, 1, 1), (0, 0, 1))
    assert not torch.allclose(a, b)


def test_tiled_apply_matches_full_when_overlap_covers_receptive_field():
    torch.manual_seed(0)
    net = UNet3D(base=4, depth=1, convs=1).eval()  # receptive-field radius 6 voxels
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(1, 1, 31, 27, 22)
        full = net(x)
        tiled = tiled_apply(net, x, tile=24, overlap=8)
        rough = tiled_apply(net, x, tile=16, overlap=2)  # overlap below the receptive field: approximate
    assert tiled.shape == full.shape
    assert float((tiled - full).abs().max()) <= 1e-5 * float(full.abs().max())
    assert rough.shape == full.shape and not torch.allclose(rough, full)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_model(ScaledUNet(TINY), "nextqsm-bfr", d, {"steps": 0}, {"nrmse": 100.0})
    save_model(VariationalNetwork(steps=2, unet=TINY), "nextqsm-vn", d, {"steps": 0}, {})
    save_model(ScaledUNet(TINY), "baseline-bfr", d)
    save_model(ScaledUNet(TINY), "baseline-inv", d)
    return d


def test_weights_round_trip_and_checksum(weights_dir, tmp_path):
    import json
    import shutil

    man = json.loads((weights_dir / "manifest.json").read_text())
    e = man["models"]["nextqsm-vn"]
    assert len(e["sha256"]) == 64 and e["class"] == "VariationalNetwork" and e["arch"]["steps"] == 2
    vn = load_model("nextqsm-vn", weights_dir)
    assert not vn.training
    ref = VariationalNetwork(**e["arch"])
    ref.load_state_dict(vn.state_dict())
    x, m = torch.randn(1, 1, 12, 12, 12), torch.ones(1, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.equal(vn(x, m), ref(x, m))
    # corrupt one byte -> clear checksum error
    bad = tmp_path / "w"
    shutil.copytree(weights_dir, bad)
    p = bad / e["file"]
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(WeightsChecksumError, match="sha256"):
        load_model("nextqsm-vn", bad)
    with pytest.raises(QSMInputError, match="not in"):
        load_model("no-such-model", weights_dir)


@pytest.mark.parametrize("method", ["nextqsm", "unet-baseline"])
@pytest.mark.parametrize("kind", ["total", "local"])
def test_pipeline_methods_run(weights_dir, method, kind):
    chi, lf, mask = toy(20)
    big = np.zeros((28, 30, 26), bool)
    big[4:24, 5:25, 3:23] = mask
    field = np.zeros(big.shape, np.float32)
    field[4:24, 5:25, 3:23] = lf
    stages = []
    inp = QSMInput(field=field, mask=big, kind=kind, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))
    res = run(method, inp, progress=lambda f, s: stages.append(s), weights_dir=weights_dir, device="cpu")
    assert res.chi.shape == big.shape and res.chi.dtype == np.float32 and np.isfinite(res.chi).all()
    assert not res.chi[~big].any()
    assert res.device == "cpu" and "inversion" in res.timings and stages[-1] == "done"
    idx = np.nonzero(big)
    expect = [min(int(i.max()) + 9, n) - max(int(i.min()) - 8, 0) for i, n in zip(idx, big.shape)]
    assert res.params["crop_shape"] == expect  # mask bounding box + 8-voxel margin, clipped


def test_pipeline_oblique_input_and_tiling(weights_dir):
    aff = oblique_affine((1.0, 1.0, 1.0), 25.0, "x", shape=(20, 20, 20))
    b0 = b0_direction(aff)
    chi, lf, mask = toy(20, b0=b0)
    inp = QSMInput(field=lf, mask=mask, kind="local", voxel_size=(1.0, 1.0, 1.0), b0_dir=b0)
    a = run("nextqsm", inp, weights_dir=weights_dir, device="cpu")
    inp_axial = QSMInput(field=lf, mask=mask, kind="local", voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))
    b = run("nextqsm", inp_axial, weights_dir=weights_dir, device="cpu")
    assert np.isfinite(a.chi).all() and not np.allclose(a.chi, b.chi)
    c = run("nextqsm", inp, weights_dir=weights_dir, device="cpu", tile=16, overlap=4)
    assert c.chi.shape == a.chi.shape and np.isfinite(c.chi).all()


def test_pipeline_rejects_empty_mask(weights_dir):
    inp = QSMInput(field=np.zeros((8, 8, 8), np.float32), mask=np.zeros((8, 8, 8), bool), kind="local")
    with pytest.raises(QSMInputError, match="mask"):
        run("nextqsm", inp, weights_dir=weights_dir)


def test_nextqsm_module_end_to_end_shapes():
    net = NeXtQSM(bfr=TINY, vn={"steps": 2, "unet": TINY})
    chi, lf = net(torch.randn(2, 1, 12, 12, 12), torch.ones(2, 1, 12, 12, 12), (1, 1, 1), (0, 0, 1))
    assert chi.shape == lf.shape == (2, 1, 12, 12, 12)


def test_nextqsm_with_vsharp_background_removal(weights_dir):
    chi, lf, mask = toy(20)
    inp = QSMInput(field=lf, mask=mask, kind="total")
    res = run("nextqsm", inp, weights_dir=weights_dir, device="cpu", bfr="vsharp")
    assert res.params["bfr"] == "vsharp" and "vsharp" in res.timings
    assert res.mask.sum() <= mask.sum() and np.isfinite(res.chi).all()
    with pytest.raises(QSMInputError, match="bfr"):
        run("nextqsm", inp, weights_dir=weights_dir, bfr="magic")


def test_vn_tkd_initialisation_matches_core_tkd():
    from nextqsm.methods.tkd import tkd

    chi, lf, mask = toy(16, b0=(0.0, 0.3, 1.0))
    vn = VariationalNetwork(steps=1, unet=TINY, init="tkd")
    k = batch_kernels(lf.shape, (1, 1, 1), (0.0, 0.3, 1.0), 1)
    pad = [(p - n) // 2 for p, n in zip(even_padded_shape(lf.shape), lf.shape)]
    ref = tkd(lf, mask, (1, 1, 1), (0.0, 0.3, 1.0), pad=pad[0]) if len(set(pad)) == 1 else None
    got = vn.tkd(t5(lf), t5(mask), k)[0, 0].numpy()
    if ref is not None:
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.isfinite(got).all() and np.abs(got).max() > 0


def test_manifest_default_bfr(weights_dir, tmp_path):
    import shutil

    from nextqsm.models.weights import set_defaults

    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    set_defaults(d, bfr="vsharp")
    chi, lf, mask = toy(20)
    res = run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), weights_dir=d, device="cpu")
    assert res.params["bfr"] == "vsharp"
    res = run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), weights_dir=d, device="cpu", bfr="unet")
    assert res.params["bfr"] == "unet"


def test_nextqsm_with_lbv_background_removal_and_voxel_size_default(weights_dir, tmp_path):
    """bfr='lbv': LBV (peel LBV_PEEL) then the VN; the manifest's ``bfr_fine`` picks
    it for voxels up to ``max_voxel_mm`` and ``bfr`` otherwise; an explicit ``bfr`` always wins."""
    import shutil

    from nextqsm.models.inference import default_bfr
    from nextqsm.models.weights import set_defaults

    chi, lf, mask = toy(20)
    res = run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), weights_dir=weights_dir, device="cpu", bfr="lbv")
    assert res.params["bfr"] == "lbv" and "lbv" in res.timings and np.isfinite(res.chi).all()
    assert res.params["lbv_device"] == "cpu" and "lbv_fallback" not in res.params   # scipy on the CPU
    assert 0 < res.mask.sum() <= mask.sum()   # LBV's peeled interior, or the whole mask for a fill_rim VN
    fine = {"bfr": "vsharp", "bfr_fine": {"bfr": "lbv", "max_voxel_mm": 1.5}}
    assert default_bfr(fine, (1.0, 1.0, 1.0)) == "lbv" and default_bfr(fine, (1.5, 1.5, 1.5)) == "lbv"
    assert default_bfr(fine, (1.0, 1.0, 2.0)) == "vsharp" and default_bfr({}, (1, 1, 1)) == "unet"
    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    set_defaults(d, **fine)
    for vs, want in (((1.0, 1.0, 1.0), "lbv"), ((2.0, 2.0, 2.0), "vsharp")):
        inp = QSMInput(field=lf, mask=mask, kind="total", voxel_size=vs)
        assert run("nextqsm", inp, weights_dir=d, device="cpu").params["bfr"] == want
    assert run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), weights_dir=d, device="cpu",
               bfr="vsharp").params["bfr"] == "vsharp"
    with pytest.raises(QSMInputError, match="lbv"):
        run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), weights_dir=d, bfr="magic")


def test_cone_energy_separates_dipole_fields_from_noise():
    """The magic-cone energy ratio: near 0 for a (masked) dipole field, ~1 for white noise, rising with noise."""
    from nextqsm.models.vn import cone_energy

    _, lf, mask = toy(32)
    k = batch_kernels(lf.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), 1)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, lf.shape).astype(np.float32)
    clean = float(cone_energy(t5(lf * mask), k))
    white = float(cone_energy(t5(noise), k))
    sd = float(lf[mask].std())
    noisy = [float(cone_energy(t5((lf + a * sd * noise) * mask), k)) for a in (0.3, 1.0, 3.0)]
    assert clean < 0.2 and 0.8 < white < 1.2
    assert clean < noisy[0] < noisy[1] < noisy[2]
    # scale-free: the ratio of a field and of 1000 x the field agree
    assert abs(float(cone_energy(t5(1000 * lf * mask), k)) - clean) < 1e-4


def test_noise_conditioned_vn_grows_from_an_unconditioned_one(tmp_path):
    """Loading an unconditioned VN into a noise-conditioned one gives the same function; the new
    weights then act (output depends on the noise level) and the architecture survives save/load."""
    torch.manual_seed(2)
    _, lf, mask = toy(16)
    rng = np.random.default_rng(1)
    noisy = (lf + 0.5 * lf[mask].std() * rng.normal(0, 1, lf.shape)).astype(np.float32) * mask
    plain = VariationalNetwork(steps=2, unet=TINY)
    cond = VariationalNetwork(steps=2, unet=TINY, noise_cond=True)
    with torch.no_grad():
        for q in plain.parameters():
            q.add_(0.05 * torch.randn_like(q))
        cond.load_state_dict(plain.state_dict())
        for f in (lf, noisy):
            assert torch.equal(plain(t5(f), t5(mask)), cond(t5(f), t5(mask)))
        cond.lam_gain.fill_(3.0)
        cond.reg.enc[0][0].weight[:, 1].normal_(0, 0.5)
        assert not torch.allclose(plain(t5(noisy), t5(mask)), cond(t5(noisy), t5(mask)))
    save_model(cond, "nextqsm-vn", tmp_path)
    back = load_model("nextqsm-vn", tmp_path)
    assert back.noise_cond and back.reg.config["in_ch"] == 2
    with torch.no_grad():
        assert torch.equal(back(t5(noisy), t5(mask)), cond.eval()(t5(noisy), t5(mask)))
    with pytest.raises(ValueError, match="input channels"):
        VariationalNetwork(steps=2, unet={**TINY, "in_ch": 1}, noise_cond=True)


def test_fill_rim_vn_predicts_the_eroded_rim(weights_dir, tmp_path):
    """``out_mask``: chi on the data mask is unchanged, the rim around it gets values, nothing outside;
    a ``fill_rim`` VN after V-SHARP returns chi on the whole brain mask (plain VNs keep the eroded mask)."""
    import shutil

    from scipy import ndimage as ndi

    torch.manual_seed(3)
    chi, lf, mask = toy(20)
    inner = ndi.binary_erosion(mask, iterations=2)
    vn = VariationalNetwork(steps=2, unet=TINY, fill_rim=True)
    with torch.no_grad():
        a = vn(t5(lf * inner), t5(inner))[0, 0].numpy()
        b = vn(t5(lf * inner), t5(inner), out_mask=t5(mask))[0, 0].numpy()
    rim = mask & ~inner
    np.testing.assert_array_equal(a[inner], b[inner])
    assert (b[~mask] == 0).all() and (a[rim] == 0).all() and (np.abs(b[rim]) > 0).mean() > 0.9
    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    inp = QSMInput(field=lf, mask=mask, kind="total")
    plain = run("nextqsm", inp, weights_dir=d, device="cpu", bfr="vsharp")
    save_model(vn, "nextqsm-vn", d, {"steps": 0}, {})
    assert load_model("nextqsm-vn", d).fill_rim
    res = run("nextqsm", inp, weights_dir=d, device="cpu", bfr="vsharp")
    assert plain.mask.sum() < mask.sum() and (plain.chi[~plain.mask] == 0).all()
    assert res.params["fill_rim"] and (res.mask == mask).all()
    assert (np.abs(res.chi[mask & ~plain.mask]) > 0).mean() > 0.9 and (res.chi[~mask] == 0).all()
    local = run("nextqsm", QSMInput(field=lf, mask=mask, kind="local"), weights_dir=d, device="cpu")
    assert (local.mask == mask).all() and "fill_rim" not in local.params


def test_flip_tta_solves_each_flipped_problem_with_its_own_b0(weights_dir):
    """tta=2 = mean of the plain VN result and the flipped-back result of the i-flipped problem, whose
    B0 has its i component negated; that is the flip law of the dipole forward model itself."""
    b0 = np.array([0.3, 0.0, 1.0]) / np.hypot(0.3, 1.0)
    chi, lf, mask = toy(20, b0=tuple(b0))
    fb0 = (-b0[0], b0[1], b0[2])
    # the physics the flip relies on: D_flipped-b0 * flip(chi) == flip(D * chi) (exact on odd grids; on
    # even ones the unpaired Nyquist plane leaves ~0.2 %); keeping B0 unflipped would be badly wrong
    ref = forward_field(chi, (1, 1, 1), tuple(b0))[::-1]
    scale = np.abs(ref).max()
    assert np.abs(forward_field(chi[::-1].copy(), (1, 1, 1), fb0) - ref).max() < 5e-3 * scale
    assert np.abs(forward_field(chi[::-1].copy(), (1, 1, 1), tuple(b0)) - ref).max() > 0.3 * scale
    inp = QSMInput(field=lf, mask=mask, kind="local", voxel_size=(1.0, 1.0, 1.0), b0_dir=tuple(b0))
    one = run("nextqsm", inp, weights_dir=weights_dir, device="cpu")
    two = run("nextqsm", inp, weights_dir=weights_dir, device="cpu", tta=2)
    flipped = QSMInput(field=lf[::-1].copy(), mask=mask[::-1].copy(), kind="local", voxel_size=(1.0, 1.0, 1.0),
                       b0_dir=fb0)
    back = run("nextqsm", flipped, weights_dir=weights_dir, device="cpu").chi[::-1]
    assert two.params["tta"] == 2 and not np.allclose(two.chi, one.chi)
    np.testing.assert_allclose(two.chi, 0.5 * (one.chi + back), atol=1e-5 * np.abs(one.chi).max())
    four = run("nextqsm", inp, weights_dir=weights_dir, device="cpu", tta=4)
    assert np.isfinite(four.chi).all() and four.chi.shape == one.chi.shape
    with pytest.raises(QSMInputError, match="tta"):
        run("nextqsm", inp, weights_dir=weights_dir, tta=3)


def test_tta_default_comes_from_the_manifest_per_device(weights_dir, tmp_path):
    """tta=None / 'auto' takes the weights folder's ``defaults.tta``: a count for every device, or a count per
    device type (the CPU run of {'cuda': 8, 'cpu': 2} flips twice); an explicit tta wins; a bad value is named."""
    import shutil

    from nextqsm.models.inference import default_tta
    from nextqsm.models.weights import set_defaults

    assert default_tta({}, "cpu") == 1 and default_tta({"tta": 4}, "cuda:0") == 4
    assert default_tta({"tta": {"cuda": 8, "cpu": 1}}, "cuda:1") == 8 and default_tta({"tta": {"cuda": 8}}, "cpu") == 1
    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    set_defaults(d, tta={"cuda": 8, "cpu": 2})
    chi, lf, mask = toy(20, b0=(0.0, 0.3, 1.0))
    inp = QSMInput(field=lf, mask=mask, kind="local", voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.3, 1.0))
    auto = run("nextqsm", inp, weights_dir=d, device="cpu")
    two = run("nextqsm", inp, weights_dir=weights_dir, device="cpu", tta=2)
    one = run("nextqsm", inp, weights_dir=d, device="cpu", tta=1)
    assert auto.params["tta"] == 2 and one.params["tta"] == 1
    np.testing.assert_array_equal(auto.chi, two.chi)
    assert run("nextqsm", inp, weights_dir=d, device="cpu", tta="auto").params["tta"] == 2
    set_defaults(d, tta=3)
    with pytest.raises(QSMInputError, match="defaults.tta"):
        run("nextqsm", inp, weights_dir=d, device="cpu")
    with pytest.raises(QSMInputError, match="tta"):
        run("nextqsm", inp, weights_dir=d, device="cpu", tta=True)


def test_cpu_channels_last_inference_matches_default_layout(monkeypatch):
    """CPU inference runs the networks with channels-last convolution weights (faster on whole heads); chi is the
    same as with the default layout (the shipped weights, U-Net background removal + VN)."""
    from nextqsm.models import inference
    from nextqsm.pipeline import QSMInput, run

    chi, lf, mask = toy(40)
    inp = QSMInput(field=lf, mask=mask, kind="total")
    fast = run("nextqsm", inp, device="cpu", bfr="unet", precision="float32")
    monkeypatch.setattr(inference, "CPU_CHANNELS_LAST", False)
    plain = run("nextqsm", inp, device="cpu", bfr="unet", precision="float32")
    assert np.abs(fast.chi).max() > 0
    assert np.abs(fast.chi - plain.chi).max() <= 1e-4 * np.abs(plain.chi).max()
    assert np.abs(fast.local_field - plain.local_field).max() <= 1e-4 * np.abs(plain.local_field).max()


def test_unet_upsampling_block_equals_conv_after_upsampling():
    """Up applies its 1x1x1 convolution before the nearest-neighbour up-sampling (cheaper): the same map as the
    textbook order, so older weights keep their meaning."""
    import torch.nn.functional as F

    from nextqsm.models.unet import Up

    torch.manual_seed(0)
    for bias in (False, True):
        up = Up(16, 8, bias=bias)
        x = torch.randn(2, 16, 5, 6, 7)
        ref = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        assert up(x).shape == (2, 8, 10, 12, 14)
        assert torch.allclose(up(x), ref, atol=1e-6)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no bfloat16 convolutions on this CPU")
def test_bfloat16_convolutions_stay_close_to_float32():
    """precision='bfloat16' runs the U-Nets' convolutions in bfloat16 (autocast) and keeps the FFT data term and
    the outputs float32: chi within 1 % (relative L2) of float32 inference, and it did run in bfloat16."""
    from nextqsm.models.inference import compute_dtype

    chi, lf, mask = toy(40)
    m = mask > 0
    for kind, field in (("total", lf), ("local", forward_field(chi, (1.0, 1.0, 1.0)) * mask)):
        inp = QSMInput(field=field.astype(np.float32), mask=mask, kind=kind)
        kw = {"device": "cpu", "bfr": "unet"} if kind == "total" else {"device": "cpu", "refine": False}
        lo = run("nextqsm", inp, precision="bfloat16", **kw)
        hi = run("nextqsm", inp, precision="float32", **kw)
        assert lo.params["precision"] == "bfloat16" and hi.params["precision"] == "float32"
        assert lo.chi.dtype == np.float32 and (lo.local_field is None) == (kind == "local")
        assert kind == "local" or lo.local_field.dtype == np.float32
        rel = np.linalg.norm((lo.chi - hi.chi)[m]) / np.linalg.norm(hi.chi[m])
        assert 0 < rel < 1e-2, rel
    net = UNet3D(in_ch=1, out_ch=1, depth=2)
    x = torch.randn(1, 1, 12, 12, 12)
    net.compute_dtype = compute_dtype("bfloat16", "cpu")
    y = net(x)
    net.compute_dtype = None
    assert y.dtype == torch.float32 and not torch.equal(y, net(x))
    with pytest.raises(QSMInputError, match="precision"):
        run("nextqsm", QSMInput(field=lf, mask=mask, kind="total"), precision="half")


def test_weights_in_the_repository_stay_within_50_mb():
    """Issue 5: shipped weights and kept candidates together <= 50 MB, and every candidate folder loads with its
    checksum verified (a VN-only manifest, usable as ``--param weights_dir=...``)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [*repo.glob("NeXtQSM/nextqsm/models/weights/*.safetensors"),
             *repo.glob("NeXtQSMTraining/nextqsm_training/candidates/*/*.safetensors")]
    assert files and sum(f.stat().st_size for f in files) <= 50e6
    for d in sorted(repo.glob("NeXtQSMTraining/nextqsm_training/candidates/*/")):
        assert isinstance(load_model("nextqsm-vn", d), VariationalNetwork), d

"""CUDA checks (marked ``gpu``; skipped where there is no CUDA GPU): inference, an AMP training step,
and the CPU fallback on CUDA out-of-memory."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available")]

TINY = {"base": 4, "depth": 2, "convs": 1}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    from nextqsm.models.vn import ScaledUNet, VariationalNetwork
    from nextqsm.models.weights import save_model

    d = tmp_path_factory.mktemp("w")
    for n in ("nextqsm-bfr", "baseline-bfr", "baseline-inv"):
        save_model(ScaledUNet(TINY), n, d)
    save_model(VariationalNetwork(steps=2, unet=TINY), "nextqsm-vn", d)
    return d


def _inp(n=24):
    from nextqsm.pipeline import QSMInput

    c = np.stack(np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij"))
    mask = (c ** 2).sum(0) < 0.6
    field = (0.05 * np.random.default_rng(0).standard_normal((n,) * 3)).astype(np.float32) * mask
    return QSMInput(field=field, mask=mask, kind="total")


def test_cuda_inference_matches_cpu(weights_dir):
    from nextqsm.pipeline import run

    g = run("nextqsm", _inp(), weights_dir=weights_dir, device="cuda")
    c = run("nextqsm", _inp(), weights_dir=weights_dir, device="cpu")
    assert g.device == "cuda"
    assert np.abs(g.chi - c.chi).max() <= 1e-3 * max(np.abs(c.chi).max(), 1e-6)



def test_cuda_takes_the_manifest_flips_for_cuda(weights_dir, tmp_path):
    """defaults.tta {'cuda': 8, 'cpu': 1}: 8 flips on the GPU, 1 on the CPU; the GPU's
    8-flip chi equals the CPU's with tta=8."""
    import shutil

    from nextqsm.models.weights import set_defaults
    from nextqsm.pipeline import run

    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    set_defaults(d, tta={"cuda": 8, "cpu": 1})
    g = run("nextqsm", _inp(), weights_dir=d, device="cuda")
    c = run("nextqsm", _inp(), weights_dir=d, device="cpu", tta=8)
    assert g.params["tta"] == 8 and run("nextqsm", _inp(), weights_dir=d, device="cpu").params["tta"] == 1
    assert np.abs(g.chi - c.chi).max() <= 1e-3 * max(np.abs(c.chi).max(), 1e-6)


def test_vsharp_on_cuda_matches_numpy(weights_dir):
    """The default total-field pipeline runs V-SHARP with torch FFTs on the GPU: same result as numpy."""
    from nextqsm.methods.vsharp import vsharp
    from nextqsm.pipeline import run

    inp = _inp()
    a, ea = vsharp(inp.field, inp.mask)
    b, eb = vsharp(inp.field, inp.mask, device="cuda")
    assert np.array_equal(ea, eb) and np.abs(a - b).max() <= 1e-5 * max(np.abs(a).max(), 1e-9)
    res = run("nextqsm", inp, weights_dir=weights_dir, device="cuda", bfr="vsharp")
    assert res.params["vsharp_device"] == "cuda" and "vsharp_fallback" not in res.params


def test_lbv_on_cuda_matches_scipy(weights_dir):
    """LBV (the default background removal at <= 2.25 mm voxels) solves with torch CG on the GPU: same result as
    scipy's CG to the solver tolerance, and the pipeline uses it on CUDA."""
    from nextqsm.methods.lbv import lbv
    from nextqsm.pipeline import run

    inp = _inp(40)
    a, ea = lbv(inp.field, inp.mask, peel=1)
    b, eb = lbv(inp.field, inp.mask, peel=1, device="cuda")
    assert np.array_equal(ea, eb) and np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-9)
    res = run("nextqsm", inp, weights_dir=weights_dir, device="cuda", bfr="lbv")
    assert res.params["lbv_device"] == "cuda" and "lbv_fallback" not in res.params


def test_amp_training_step_and_resume_on_cuda(tmp_path):
    from nextqsm_training.config import from_dict
    from nextqsm_training.train import fit

    cfg = from_dict({"out_dir": str(tmp_path / "r"),
                     "model": {"bfr": TINY, "vn": {"steps": 2, "unet": TINY}, "baseline_inv": TINY},
                     "data": {"source": "toy", "size": 16, "n_train": 2, "n_val": 1},
                     "train": {"phase1_steps": 1, "phase2_steps": 1, "amp": True, "device": "cuda",
                               "checkpointing": True, "warmup_steps": 1}})
    res = fit(cfg, max_steps=1)
    assert res["step"] == 1 and np.isfinite(res["last"]["loss"])
    res = fit(cfg, resume=True)      # exact resume on CUDA (RNG states are CPU tensors in the checkpoint)
    assert res["step"] == 2 and np.isfinite(res["last"]["loss"])


def test_cuda_oom_falls_back_to_cpu(weights_dir, monkeypatch, tmp_path):
    """A CUDA out-of-memory error during inference reruns the case on the CPU."""
    from nextqsm.models import vn as vnmod
    from nextqsm.pipeline import run

    real = vnmod.VariationalNetwork.forward

    def oom_on_cuda(self, field, *a, **k):
        if field.is_cuda:
            # provoke a real allocation failure: ask for far more memory than the device has
            free, total = torch.cuda.mem_get_info()
            torch.empty(int(total * 4), dtype=torch.uint8, device=field.device)
        return real(self, field, *a, **k)

    monkeypatch.setattr(vnmod.VariationalNetwork, "forward", oom_on_cuda)
    res = run("nextqsm", _inp(), weights_dir=weights_dir, device="cuda")
    assert res.device == "cpu" and "fallback" in res.params
    # the default flips follow the device that ran: the CPU's count after the fallback, an explicit count is kept
    import shutil

    from nextqsm.models.weights import set_defaults

    d = tmp_path / "w"
    shutil.copytree(weights_dir, d)
    set_defaults(d, tta={"cuda": 8, "cpu": 2})
    assert run("nextqsm", _inp(), weights_dir=d, device="cuda").params["tta"] == 2
    assert run("nextqsm", _inp(), weights_dir=d, device="cuda", tta=4).params["tta"] == 4

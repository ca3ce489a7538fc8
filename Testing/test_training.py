"""Training loop: config, augmentation physics, exact resume, export, CLI and 2-process DDP (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nextqsm.dipole import forward_field  # noqa: E402
from nextqsm.errors import QSMInputError  # noqa: E402
from nextqsm_training.config import Config, from_dict, load_config, save_config  # noqa: E402
from nextqsm_training.train import ToyDataset, augment, export_checkpoint, fit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = {"base": 2, "depth": 1, "convs": 1}


def tiny_config(out: Path, **train) -> Config:
    t = {"phase1_steps": 2, "phase2_steps": 2, "ckpt_every": 1, "val_every": 100, "log_every": 1,
         "warmup_steps": 1, "threads": 1, **train}
    return from_dict({"out_dir": str(out),
                      "model": {"bfr": TINY, "vn": {"steps": 2, "unet": TINY}, "baseline_inv": TINY},
                      "data": {"source": "toy", "size": 12, "n_train": 3, "n_val": 1, "kwargs": {"b0_dir": [0.0, 0.3, 1.0]}},
                      "train": t})


def test_config_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()
    with pytest.raises(QSMInputError, match="unknown keys"):
        from_dict({"train": {"learning_rate": 1}})
    for name in ("cpu_small.yaml", "gpu_full.yaml"):
        c = load_config(REPO / "NeXtQSMTraining" / "nextqsm_training" / "configs" / name)
        assert c.model.vn["steps"] == 6 and c.train.phase1_steps > 0


def test_every_shipped_config_loads_and_builds():
    """Each config in configs/ parses, names only generator options that exist, and builds its VN."""
    from nextqsm.models.vn import VariationalNetwork
    from nextqsm_training.simulate import DEFAULTS

    paths = sorted((REPO / "NeXtQSMTraining" / "nextqsm_training" / "configs").glob("*.yaml"))
    assert len(paths) >= 10
    for p in paths:
        c = load_config(p)
        for kw in (c.data.kwargs, c.data.val_kwargs):
            for item in (kw or {}).get("cycle", [kw or {}]):
                assert not set(item) - set(DEFAULTS), (p.name, set(item) - set(DEFAULTS))
        VariationalNetwork(**c.model.vn)


def test_augmentation_preserves_the_physics():
    """Flipped/transposed chi with the transformed B0 and voxel size gives the transformed field.

    Exact for B0 along an axis; for oblique B0 the discrete kernel's Nyquist planes (even FFT sizes)
    are not mirror-symmetric per axis, which leaves ~1% (max-abs) differences: tolerance 2%."""
    for b0, tol in (((0.0, 0.0, 1.0), 1e-5), ((0.2, 0.4, 0.9), 0.02)):
        item = ToyDataset(1, 14, seed=3, voxel_size=(1.0, 1.3, 0.9), b0_dir=b0)[0]
        for s in range(4):
            a = augment(item, (0, s))
            f = forward_field(a["chi"][0].numpy(), a["voxel_size"].tolist(), a["b0_dir"].tolist()) * a["mask"][0].numpy()
            ref = a["local_field"][0].numpy()
            assert np.abs(f - ref).max() <= tol * np.abs(ref).max()


def _params(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model"]


def test_resume_is_exact(tmp_path):
    """4 steps straight == 2 steps + resume + 2 steps (weights, optimiser moments, scheduler)."""
    a = fit(tiny_config(tmp_path / "a"), max_steps=4)
    assert a["step"] == 4
    fit(tiny_config(tmp_path / "b"), max_steps=2)
    b = fit(tiny_config(tmp_path / "b"), resume=True, max_steps=4)
    assert b["step"] == 4
    pa, pb = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    oa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["optimizer"]["state"]
    ob = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)
    rows = (tmp_path / "a" / "train.csv").read_text().splitlines()
    assert rows[0].startswith("step,phase,lr") and len(rows) == 5
    assert (tmp_path / "a" / "val.csv").exists() and any((tmp_path / "a" / "tb").iterdir())


def _native_bf16() -> bool:
    from nextqsm.models.inference import cpu_has_native_bf16

    return cpu_has_native_bf16()


@pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bfloat16")
def test_cpu_bfloat16_training_is_close_to_float32_and_resumes_exactly(tmp_path):
    """train.amp_cpu: the steps run under bfloat16 autocast (the weights differ from float32 training, a little),
    the losses stay finite, and 2 steps + resume + 2 steps equal 4 steps."""
    a = fit(tiny_config(tmp_path / "a", amp_cpu=True), max_steps=4)
    fit(tiny_config(tmp_path / "b", amp_cpu=True), max_steps=2)
    fit(tiny_config(tmp_path / "b", amp_cpu=True), resume=True, max_steps=4)
    f = fit(tiny_config(tmp_path / "f"), max_steps=4)
    assert a["step"] == f["step"] == 4 and np.isfinite(a["last"]["loss"])
    pa, pb, pf = (_params(tmp_path / n / "last.pt") for n in "abf")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    diff = max(float((pa[k] - pf[k]).abs().max()) for k in pa)
    scale = max(float(pf[k].abs().max()) for k in pf)
    assert 0 < diff < 0.05 * scale


def test_worker_prefetch_gives_the_same_batches_and_weights(tmp_path):
    """train.workers > 0 (DataLoader processes) feeds exactly the in-loop batches: same weights."""
    from nextqsm_training.train import batches, make_dataset

    cfg = tiny_config(tmp_path / "x", workers=2)
    ds = make_dataset(cfg.data, "train")
    seq = list(batches(ds, 1, 4, 0, 1, cfg.train, 0, True, torch.device("cpu")))
    cfg0 = tiny_config(tmp_path / "y")
    ref = list(batches(make_dataset(cfg0.data, "train"), 1, 4, 0, 1, cfg0.train, 0, True, torch.device("cpu")))
    assert len(seq) == len(ref) == 3
    for a, b in zip(seq, ref):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fit(tiny_config(tmp_path / "a"), max_steps=3)
    fit(tiny_config(tmp_path / "b", workers=2), max_steps=3)
    pa, pb = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_data_echo_reuses_each_batch_with_exact_physics_and_resumes_exactly(tmp_path):
    """train.echo = 2: steps 2d and 2d + 1 share data step d's generated items; the echo copy is re-augmented
    (still the forward model's field for its chi, B0 and voxel size); step 2d is the un-echoed run's step d;
    a resume from an odd step gives the same stream and the same weights; echo < 1 is a clear error."""
    from nextqsm_training.train import batches, make_dataset

    cpu = torch.device("cpu")
    cfg = tiny_config(tmp_path / "x", echo=2)
    cfg.data.n_train = 50
    ds = make_dataset(cfg.data, "train")
    full = list(batches(ds, 0, 6, 0, 1, cfg.train, 0, True, cpu))
    plain = list(batches(ds, 0, 3, 0, 1, tiny_config(tmp_path / "y").train, 0, True, cpu))
    assert len(full) == 6
    for d in range(3):
        a, e = full[2 * d], full[2 * d + 1]
        assert all(torch.equal(a[k], plain[d][k]) for k in a)            # the generated batch itself
        assert any(not torch.equal(a[k], e[k]) for k in ("chi", "b0_dir"))  # re-augmented, not a copy
        for i in range(len(a["chi"])):
            assert torch.equal(torch.sort(a["chi"][i].flatten()).values, torch.sort(e["chi"][i].flatten()).values)
            f = forward_field(e["chi"][i, 0].numpy(), e["voxel_size"][i].tolist(), e["b0_dir"][i].tolist())
            ref = e["local_field"][i, 0].numpy()
            assert np.abs(f * e["mask"][i, 0].numpy() - ref).max() <= 0.02 * np.abs(ref).max()
    assert not torch.equal(full[0]["chi"], full[2]["chi"])              # a new data step brings new items
    resumed = list(batches(ds, 3, 6, 0, 1, cfg.train, 0, True, cpu))
    assert len(resumed) == 3 and all(all(torch.equal(r[k], f[k]) for k in r) for r, f in zip(resumed, full[3:]))
    fit(tiny_config(tmp_path / "a", echo=2), max_steps=4)
    fit(tiny_config(tmp_path / "b", echo=2), max_steps=3)
    fit(tiny_config(tmp_path / "b", echo=2), resume=True, max_steps=4)
    pa, pb = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    with pytest.raises(QSMInputError, match="echo"):
        list(batches(ds, 0, 2, 0, 1, tiny_config(tmp_path / "z", echo=0).train, 0, True, cpu))


def test_wall_time_limit_checkpoints_and_resume_finishes(tmp_path):
    """train.max_minutes stops the chunk (validated, checkpointed); --resume completes the run."""
    cfg = tiny_config(tmp_path / "r", max_minutes=1e-9)
    res = fit(cfg)
    assert res["step"] == 0
    st = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert st["step"] == 0
    assert len((tmp_path / "r" / "val.csv").read_text().splitlines()) == 2
    res = fit(tiny_config(tmp_path / "r"), resume=True)
    assert res["step"] == 4


def test_export_and_inference_with_exported_weights(tmp_path):
    from nextqsm.models.weights import load_manifest
    from nextqsm.pipeline import QSMInput, run

    fit(tiny_config(tmp_path / "r"), max_steps=3)
    entries = export_checkpoint(tmp_path / "r" / "best.pt", tmp_path / "w", data="toy")
    assert set(entries) == {"nextqsm-bfr", "nextqsm-vn", "baseline-bfr", "baseline-inv"}
    man = load_manifest(tmp_path / "w")
    e = man["models"]["nextqsm-vn"]
    assert e["training"]["steps"] == 3 and e["training"]["data"] == "toy" and "nrmse" in e["metrics"]
    item = ToyDataset(1, 12, seed=9)[0]
    inp = QSMInput(field=item["total_field"][0].numpy(), mask=item["mask"][0].numpy() > 0, kind="total")
    res = run("nextqsm", inp, weights_dir=tmp_path / "w", device="cpu")
    assert np.isfinite(res.chi).all() and res.local_field is not None
    assert man["models"]["baseline-bfr"]["file"] == "baseline-bfr.safetensors"   # phase 2: its own network


def test_init_from_a_weights_folder(tmp_path):
    """train.init_from accepts an exported weights folder (e.g. the shipped one); wrong shapes -> clear error."""
    from nextqsm_training.train import Bundle, init_weights

    from nextqsm.models.weights import load_manifest, load_model
    from nextqsm.pipeline import QSMInput, run

    fit(tiny_config(tmp_path / "r"), max_steps=2)      # phase 1 only
    export_checkpoint(tmp_path / "r" / "last.pt", tmp_path / "w")
    # a phase-1 checkpoint: the baseline's background U-Net is the same network -> one shared file
    man = load_manifest(tmp_path / "w")
    assert man["models"]["baseline-bfr"]["file"] == "nextqsm-bfr.safetensors"
    assert man["models"]["baseline-bfr"]["alias_of"] == "nextqsm-bfr"
    assert sorted(p.name for p in (tmp_path / "w").glob("*.safetensors")) == [
        "baseline-inv.safetensors", "nextqsm-bfr.safetensors", "nextqsm-vn.safetensors"]
    item = ToyDataset(1, 12, seed=9)[0]
    inp = QSMInput(field=item["total_field"][0].numpy(), mask=item["mask"][0].numpy() > 0, kind="total")
    assert np.isfinite(run("unet-baseline", inp, weights_dir=tmp_path / "w", device="cpu").chi).all()
    cfg = tiny_config(tmp_path / "x")
    b = Bundle(cfg.model)
    init_weights(b, tmp_path / "w")
    ref = torch.load(tmp_path / "r" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(v, ref[k]) for k, v in b.state_dict().items())
    other = from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "bfr": {"base": 3, "depth": 1, "convs": 1}}})
    with pytest.raises(QSMInputError, match="does not fit the config"):
        init_weights(Bundle(other.model), tmp_path / "w")

    # a VN-only fine-tuning of that folder exports the VN alone, with where it started from
    import shutil

    shutil.copytree(tmp_path / "w", tmp_path / "w2")
    mw = json.loads((tmp_path / "w" / "manifest.json").read_text())   # the source VN's consistency step (shipped: on)
    mw["models"]["nextqsm-vn"]["arch"].update(dc_mu=0.1, dc_noise=[0.35, 8.0])
    (tmp_path / "w" / "manifest.json").write_text(json.dumps(mw))
    ft = tiny_config(tmp_path / "ft", phase2_steps=0, train_bfr=False, train_baseline=False,
                     init_from=str(tmp_path / "w"))
    fit(ft, max_steps=2)
    entries = export_checkpoint(tmp_path / "ft" / "last.pt", tmp_path / "w2")
    assert set(entries) == {"nextqsm-vn"}
    new, old = load_manifest(tmp_path / "w2")["models"], man["models"]
    assert new["nextqsm-bfr"] == old["nextqsm-bfr"] and new["baseline-inv"] == old["baseline-inv"]
    assert new["nextqsm-vn"]["sha256"] != old["nextqsm-vn"]["sha256"]
    assert new["nextqsm-vn"]["training"]["init_from"]["sha256"] == old["nextqsm-vn"]["sha256"]
    # ... and keeps the source's final consistency step (an inference setting the training config does not set)
    assert new["nextqsm-vn"]["arch"]["dc_mu"] == 0.1 and new["nextqsm-vn"]["arch"]["dc_noise"] == [0.35, 8.0]
    assert load_model("nextqsm-vn", tmp_path / "w2").dc_mu == 0.1
    # into a new folder the VN also takes its source's pipeline defaults (else another background removal would run)
    from nextqsm.models.weights import set_defaults

    set_defaults(tmp_path / "w", bfr="vsharp")
    assert set(export_checkpoint(tmp_path / "ft" / "last.pt", tmp_path / "w3")) == {"nextqsm-vn"}
    assert load_manifest(tmp_path / "w3")["defaults"] == {"bfr": "vsharp"}


def test_calibrate_level_zeroes_the_mean_bias_and_keeps_the_checksum(tmp_path):
    """`nextqsm-train calibrate-level` measures the VN's chi-level bias on generator items and writes its correction
    into the manifest (the safetensors file and its sha256 unchanged): on the same items the calibrated VN's mean
    bias (in units of the input's robust scale) is zero; --dry-run writes nothing; a VN-less folder is refused."""
    from nextqsm_training.calibrate import calibrate_level, level_bias
    from nextqsm_training.cli import main
    from dataclasses import replace

    from nextqsm_training.train import Bundle, init_weights, make_dataset

    from nextqsm.models.vn import robust_scale
    from nextqsm.models.weights import load_manifest, load_model

    cfg = tiny_config(tmp_path / "r")
    fit(cfg, max_steps=2)
    export_checkpoint(tmp_path / "r" / "last.pt", tmp_path / "w")
    save_config(cfg, tmp_path / "c.yaml")
    before = load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]
    assert main(["calibrate-level", "--config", str(tmp_path / "c.yaml"), "--weights-dir", str(tmp_path / "w"),
                 "--n", "3", "--seed", "5", "--dry-run"]) == 0
    assert load_manifest(tmp_path / "w")["models"]["nextqsm-vn"] == before
    rec = calibrate_level(tmp_path / "c.yaml", tmp_path / "w", n=3, seed=5)
    after = load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]
    assert after["sha256"] == before["sha256"] and after["calibration"]["n"] == 3
    vn = load_model("nextqsm-vn", tmp_path / "w")       # checksum verified
    assert vn.level == rec["level"] == after["arch"]["level"] != 0.0
    ds = make_dataset(replace(cfg.data, seed=5, n_train=3), "train")
    assert np.allclose(level_bias(vn, ds, range(3)).mean(), -rec["level"], atol=1e-6)   # raw bias, level ignored
    assert vn.level == rec["level"]
    got = []
    with torch.no_grad():
        for i in range(3):
            it = ds[i]
            f, m = it["local_field"][None], it["mask"][None]
            chi = vn(f, m, it["voxel_size"][None], it["b0_dir"][None])
            got.append(float(((chi - it["chi"][None] * m) * m).sum() / m.sum() / robust_scale(f, m).reshape(())))
    assert abs(np.mean(got)) < 1e-5
    # a folder without a VN cannot seed a fine-tuning
    (tmp_path / "novn").mkdir()
    man = load_manifest(tmp_path / "w")
    man["models"].pop("nextqsm-vn")
    (tmp_path / "novn" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(QSMInputError, match="no nextqsm-vn"):
        init_weights(Bundle(cfg.model), tmp_path / "novn")


def test_calibrate_level_on_heads_zeroes_the_pipelines_offset(tmp_path):
    """`calibrate-level --heads`: the level fitted through the default pipeline (total field -> background
    removal -> VN) on one training head makes that head's chi mean over the mask equal the truth's; the per-head
    scale is a constant inside the mask; the safetensors file is untouched; a held-out map is refused."""
    from nextqsm_training.calibrate import calibrate_level_on_heads
    from nextqsm_training.heads import realistic_head

    from nextqsm.models.weights import load_manifest
    from nextqsm.pipeline import QSMInput, run

    fit(tiny_config(tmp_path / "r"), max_steps=2)
    export_checkpoint(tmp_path / "r" / "last.pt", tmp_path / "w")
    sha = load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]["sha256"]
    kw = dict(maps=(5,), tilted=(5,), size=40, voxel_mm=None, bfr="vsharp")
    dry = calibrate_level_on_heads(tmp_path / "w", write=False, **kw)
    assert "level" not in load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]["arch"]
    rec = calibrate_level_on_heads(tmp_path / "w", **kw)
    assert rec["level"] == dry["level"] != 0.0
    (h0,) = rec["heads"]
    assert h0["tilt_deg"] == 25.0 and h0["scale_ppm"] > 0 and 0.5 < h0["filled"] <= 1.0
    entry = load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]
    assert entry["sha256"] == sha and entry["arch"]["level"] == rec["level"] and entry["calibration"]["source"] == "heads"
    h = realistic_head(5, size=40, voxel_size=None, b0_dir=(0.0, np.sin(np.radians(25)), np.cos(np.radians(25))))
    m = h["mask"] > 0
    chi = run("nextqsm", QSMInput(field=h["total_field"], mask=m, kind="total", voxel_size=tuple(map(float, h["voxel_size"])),
                                  b0_dir=tuple(map(float, h["b0_dir"]))), weights_dir=tmp_path / "w", bfr="vsharp").chi
    assert abs(float((chi - h["chi"])[m].mean())) < 1e-3 * abs(h0["offset_ppm"]) + 1e-6
    with pytest.raises(QSMInputError, match="held out"):
        calibrate_level_on_heads(tmp_path / "w", maps=(13,), write=False)
    # --per-path: the level is recorded for the heads' path only and overrides arch.level there, not elsewhere
    entry["arch"]["level"] = 0.25
    (tmp_path / "w" / "manifest.json").write_text(json.dumps(load_manifest(tmp_path / "w") | {"models": {
        **load_manifest(tmp_path / "w")["models"], "nextqsm-vn": entry}}))
    pp = calibrate_level_on_heads(tmp_path / "w", per_path=True, **kw)
    e2 = load_manifest(tmp_path / "w")["models"]["nextqsm-vn"]
    assert pp["path"] == "vsharp" and e2["levels"] == {"vsharp": pp["level"]} and e2["arch"]["level"] == 0.25
    assert np.isclose(pp["level"], rec["level"], rtol=1e-4)    # the override, not arch.level, was measured against
    inp = QSMInput(field=h["total_field"], mask=m, kind="total", voxel_size=tuple(map(float, h["voxel_size"])),
                   b0_dir=tuple(map(float, h["b0_dir"])))
    r = run("nextqsm", inp, weights_dir=tmp_path / "w", bfr="vsharp")
    assert r.params["level_path"] == "vsharp" and r.params["level"] == pp["level"]
    assert abs(float((r.chi - h["chi"])[m].mean())) < 1e-3 * abs(h0["offset_ppm"]) + 1e-6
    loc = run("nextqsm", QSMInput(field=h["local_field"], mask=m, kind="local", voxel_size=inp.voxel_size,
                                  b0_dir=inp.b0_dir), weights_dir=tmp_path / "w", refine=False)
    assert loc.params["level_path"] == "local" and loc.params["level"] == 0.25


def test_cli_fit_and_export(tmp_path):
    from nextqsm_training.cli import main

    cfg = tiny_config(tmp_path / "ignored")
    save_config(cfg, tmp_path / "c.yaml")
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "--max-steps", "1", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "last.pt").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "o" / "last.pt"), "--weights-dir", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["models"]["nextqsm-vn"]["training"]["steps"] == 1
    assert main(["fit", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_ddp_two_gloo_processes(tmp_path):
    """A real ``torchrun --nproc_per_node 2`` run (gloo, CPU): 2 steps, one checkpoint from rank 0."""
    cfg = tiny_config(tmp_path / "ddp", phase1_steps=1, phase2_steps=1)
    save_config(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nextqsm_training.cli", "fit", "--config", str(tmp_path / "c.yaml")]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    st = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert st["step"] == 2 and st["config"]["train"]["phase1_steps"] == 1


def test_vn_fine_tuning_on_vsharp_inputs(tmp_path):
    """data.vn_input='vsharp': the VN trains on V-SHARP's local field and eroded mask (what it gets in
    the bfr=vsharp pipeline), starting from another run's weights, with the background U-Net frozen."""
    from nextqsm_training.train import make_dataset

    fit(tiny_config(tmp_path / "a"), max_steps=2)
    cfg = tiny_config(tmp_path / "b", phase1_steps=3, phase2_steps=0, train_bfr=False, train_baseline=False,
                      init_from=str(tmp_path / "a" / "last.pt"))
    cfg.data.vn_input, cfg.data.size, cfg.data.kwargs = "vsharp", 24, {"voxel_size": [4.0, 4.0, 4.0]}
    it = make_dataset(cfg.data, "train")[0]
    m, mv = it["mask"] > 0, it["vn_mask"] > 0
    assert mv.sum() > 500 and (mv <= m).all() and mv.sum() < m.sum()      # V-SHARP's eroded mask
    assert (it["vn_field"][~mv] == 0).all() and not torch.allclose(it["vn_field"], it["local_field"] * mv)
    a = augment(it, (0, 5))
    assert (a["vn_mask"] <= a["mask"]).all() and a["vn_field"].shape == a["chi"].shape
    fit(cfg)
    init, out = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert all(torch.equal(init[k], out[k]) for k in init if k.startswith("bfr."))          # frozen
    assert any(not torch.equal(init[k], out[k]) for k in init if k.startswith("vn."))      # trained
    assert not any(k.startswith("base_inv.") for k in out)
    cfg.data.vn_input = "total"
    with pytest.raises(QSMInputError, match="vn_input"):
        make_dataset(cfg.data, "train")


def test_gpu_lease_script_dry_run(tmp_path):
    """scripts/gpu_lease.py (the bounded session on a lent GPU) runs end to end on the CPU (--dry-run):
    trains within its budget (45 s: preparing the label maps alone takes ~20 s on a loaded 2-core machine) and packs a model-only checkpoint (here the average of the last snapshots)
    in <= 15 MiB chunks that join back; --echo 2 (data echoing) on the way."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "NEXTQSM_LABEL_CACHE": str(tmp_path / "labels")}
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_lease.py"), "--dry-run", "--budget", "45",
                        "--reserve", "5", "--sec-per-step", "1.0", "--skip", "tests", "--out-dir", str(tmp_path / "run"),
                        "--average", "3", "--echo", "2"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "== training: done" in log and "packed" in log, log[-2000:]
    chunks = sorted(out.glob("p1.pt.*"))
    assert chunks and all(c.stat().st_size <= 15 * 2 ** 20 for c in chunks)
    (tmp_path / "p1.pt").write_bytes(b"".join(c.read_bytes() for c in chunks))
    st = torch.load(tmp_path / "p1.pt", weights_only=False)
    assert st["step"] > 0 and "vn.rho" in st["model"] and (out / "runlogs.tar.gz").exists()
    assert st["config"]["train"]["echo"] == 2
    # --average 3: the packed phase end is the mean of the phase's last three weight snapshots
    assert "averaging" in log and len(st["metrics"]["averaged_steps"]) == 3 and st["metrics"]["averaged_steps"][-1] == st["step"]


def test_gpu_lease_refuses_to_train_without_the_training_maps(tmp_path):
    """Without SynthSeg maps the generator would silently fall back to procedural heads (session 15: 237 such steps
    cost 12 NRMSE points): a real (non dry-run) gpu_lease call refuses to train, says why and how to fix it, rc 2."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "NEXTQSM_SYNTHSEG_DIR": str(tmp_path / "empty"),
           "NEXTQSM_LABEL_CACHE": str(tmp_path / "labels")}
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_lease.py"), "--budget", "30", "--skip", "tests",
                        "bench", "--out-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "REFUSING TO TRAIN" in log and ".devdata/synthseg" in log and "--allow-procedural" in log
    assert "== training" not in log and not (tmp_path / "run").exists()


def test_csv_log_keeps_columns_when_a_resumed_run_logs_more(tmp_path):
    """A resumed run of a newer version may log a new metric: no row is shifted or lost."""
    import csv

    from nextqsm_training.train import _append_csv

    p = tmp_path / "val.csv"
    _append_csv(p, {"step": 1, "nrmse": 50.0})
    _append_csv(p, {"step": 2, "nrmse": 40.0})
    _append_csv(p, {"step": 3, "nrmse": 30.0, "xsim_ref": 0.6})
    _append_csv(p, {"step": 4, "nrmse": 20.0})
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["nrmse"] for r in rows] == ["50.0", "40.0", "30.0", "20.0"]
    assert [r["xsim_ref"] for r in rows] == ["", "", "0.6", ""]
    assert not (tmp_path / "val.csv.tmp").exists()


def test_xsim_loss_is_one_minus_the_xsim_metric():
    from scipy import ndimage as ndi

    from nextqsm.metrics import xsim
    from nextqsm_training.train import xsim_loss

    rng = np.random.default_rng(0)
    ref = ndi.gaussian_filter(rng.standard_normal((24, 22, 20)), 2) * 0.3
    x = ref + 0.03 * rng.standard_normal(ref.shape) + 0.01
    m = np.zeros(ref.shape, bool)
    m[3:21, 4:19, 2:17] = True
    t = lambda a: torch.tensor(np.asarray(a, np.float32))[None, None]  # noqa: E731
    got = 1.0 - float(xsim_loss(t(x * m), t(ref * m), t(m)))
    assert abs(got - xsim(x * m, ref * m, m)) < 1e-5
    a = t(x * m).requires_grad_()
    xsim_loss(a, t(ref * m), t(m)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_mixed_vsharp_inputs_fill_rim_and_xsim_loss(tmp_path):
    """data.vsharp_frac: a deterministic share of the items gets V-SHARP inputs, the rest the true local
    field; a fill_rim VN is trained on the whole mask with the XSIM term (logged as loss_xsim)."""
    from nextqsm_training.train import make_dataset, uses_vsharp

    assert [uses_vsharp(i, 0.5) for i in range(6)] == [True, False, True, False, True, True]
    assert all(uses_vsharp(i, 1.0) for i in range(5)) and not any(uses_vsharp(i, 0.0) for i in range(5))
    cfg = tiny_config(tmp_path / "r", phase1_steps=3, phase2_steps=0, train_bfr=False, train_baseline=False,
                      xsim_weight=0.05, mean_weight=1.0)
    cfg.model.vn["fill_rim"] = True
    cfg.data.vn_input, cfg.data.vsharp_frac, cfg.data.size = "vsharp", 0.5, 24
    cfg.data.kwargs = {"voxel_size": [4.0, 4.0, 4.0]}
    ds = make_dataset(cfg.data, "train")
    for i in range(3):
        it = ds[i]
        same = torch.equal(it["vn_mask"], it["mask"]) and torch.equal(it["vn_field"], it["local_field"] * it["mask"])
        assert same != uses_vsharp(i, 0.5)
    fit(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "r" / "train.csv")))
    assert rows and all(0.0 < float(r["loss_xsim"]) <= 2.0 for r in rows)
    assert all(0.0 <= float(r["loss_mean"]) < 1.0 for r in rows)   # train.mean_weight's term is logged too


def test_lbv_share_of_background_removal_inputs(tmp_path):
    """data.lbv_frac: among the background-removal items, a deterministic share whose voxels are fine enough
    (<= lbv_max_voxel_mm, the pipeline's bfr_fine threshold) gets exactly the pipeline's LBV (peel LBV_PEEL);
    coarse items keep V-SHARP, the others the true local field."""
    from nextqsm.methods.lbv import lbv
    from nextqsm.methods.vsharp import vsharp
    from nextqsm.models.inference import LBV_PEEL
    from nextqsm_training.train import make_dataset, uses_lbv, uses_vsharp

    assert all(uses_lbv(i, 1.0) for i in range(5)) and not any(uses_lbv(i, 0.0) for i in range(5))
    picks = [uses_lbv(i, 0.5) for i in range(200)]
    assert 0.4 < np.mean(picks) < 0.6
    both = [uses_lbv(i, 0.5) for i in range(200) if uses_vsharp(i, 0.5)]
    assert 0.35 < np.mean(both) < 0.65          # independent of the V-SHARP choice
    cfg = tiny_config(tmp_path / "r", phase1_steps=1, phase2_steps=0)
    cfg.data.vn_input, cfg.data.vsharp_frac, cfg.data.lbv_frac, cfg.data.size = "vsharp", 0.5, 1.0, 24
    for vox, want in ((1.0, "lbv"), (2.0, "vsharp")):
        cfg.data.kwargs = {"voxel_size": [vox] * 3}
        ds = make_dataset(cfg.data, "train")
        inner = ds.ds
        for i in range(3):
            it = ds[i]
            m = it["mask"][0].numpy() > 0
            got = inner.method(i, (vox,) * 3)
            assert got == ("local" if not uses_vsharp(i, 0.5) else want)
            if got == "local":
                assert torch.equal(it["vn_field"], it["local_field"] * it["mask"])
                continue
            tf = it["total_field"][0].numpy()
            lf, m2 = (lbv(tf, m, (vox,) * 3, peel=LBV_PEEL) if got == "lbv" else vsharp(tf, m, (vox,) * 3))
            assert m2.sum() >= 64
            np.testing.assert_allclose(it["vn_field"][0].numpy(), lf * m2, atol=1e-6)
            assert np.array_equal(it["vn_mask"][0].numpy() > 0, m2)


def test_mean_offset_term():
    """train.mean_offset: |mean(a - b)| in the mask (ppm), blind to zero-mean structure and to voxels outside it."""
    from nextqsm_training.train import mean_offset

    g = torch.Generator().manual_seed(0)
    b = torch.randn(2, 1, 8, 8, 8, generator=g) * 0.05
    m = torch.zeros_like(b)
    m[:, :, 2:6, 2:6, 2:6] = 1.0
    a = b + 0.02 * m + 5.0 * (1 - m)            # +0.02 ppm inside, anything outside
    assert abs(float(mean_offset(a, b, m)) - 0.02) < 1e-6
    d = torch.randn(2, 1, 8, 8, 8, generator=g) * m
    d = d - (d.sum(dim=(1, 2, 3, 4), keepdim=True) / m.sum(dim=(1, 2, 3, 4), keepdim=True)) * m
    assert float(mean_offset(b + d, b, m)) < 1e-6    # zero-mean structure costs nothing
    a = (b - 0.01).requires_grad_()
    mean_offset(a, b, m).backward()
    gin = a.grad[m > 0]
    assert torch.allclose(gin, gin[0].expand_as(gin)) and float(gin[0]) < 0 and float(a.grad[m == 0].abs().max()) == 0


def test_snapshots_and_checkpoint_average(tmp_path):
    """train.snapshot_every keeps the weights every N steps; `nextqsm-train average` (a real subprocess)
    writes their uniform mean, which `export` turns into loadable weights; other architectures are refused."""
    from nextqsm.models.weights import load_model

    cfg = tiny_config(tmp_path / "run", phase1_steps=3, phase2_steps=0, snapshot_every=1)
    fit(cfg)
    snaps = sorted((tmp_path / "run" / "snapshots").glob("step_*.pt"))
    assert [p.name for p in snaps] == ["step_0000001.pt", "step_0000002.pt", "step_0000003.pt"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining")])}
    cmd = [sys.executable, "-m", "nextqsm_training.cli", "average", *map(str, snaps), "--out", str(tmp_path / "avg.pt")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["averaged_steps"] == [1, 2, 3]
    sts = [torch.load(s, weights_only=False)["model"] for s in snaps]
    avg = torch.load(tmp_path / "avg.pt", weights_only=False)
    for k, v in avg["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, sum(st[k] for st in sts) / 3, rtol=1e-6, atol=1e-7)
    assert not torch.equal(sts[0]["vn.reg.enc.0.0.weight"], sts[2]["vn.reg.enc.0.0.weight"])  # they did differ
    export_checkpoint(tmp_path / "avg.pt", tmp_path / "w")
    vn = load_model("nextqsm-vn", tmp_path / "w")
    torch.testing.assert_close(vn.state_dict()["rho"], avg["model"]["vn.rho"])
    other = tiny_config(tmp_path / "other", phase1_steps=1, phase2_steps=0, snapshot_every=1)
    other.model.vn["steps"] = 3
    fit(other)
    p = subprocess.run(cmd[:-2] + [str(tmp_path / "other" / "snapshots" / "step_0000001.pt"), "--out",
                                   str(tmp_path / "bad.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "another architecture" in p.stderr and not (tmp_path / "bad.pt").exists()


def test_blend_weights_interpolates_two_folders(tmp_path):
    """`nextqsm-train blend A B --alpha W --out O` (a real subprocess) writes (1 - W) A + W B into a copy of A's
    folder, with A's level and no per-path levels; the result loads and runs; other architectures are refused."""
    from nextqsm.models.weights import load_manifest, load_model

    from nextqsm_training.train import blend_weights

    dirs = []
    for name, seed in (("a", 0), ("b", 1)):
        cfg = tiny_config(tmp_path / name, phase1_steps=2, phase2_steps=0)
        cfg.train.seed = seed
        fit(cfg)
        export_checkpoint(tmp_path / name / "last.pt", tmp_path / f"w{name}")
        dirs.append(tmp_path / f"w{name}")
    man = load_manifest(dirs[0])
    man["models"]["nextqsm-vn"]["levels"] = {"lbv": 0.5}
    from nextqsm.io import write_json_atomic
    write_json_atomic(dirs[0] / "manifest.json", man)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining")])}
    cmd = [sys.executable, "-m", "nextqsm_training.cli", "blend", str(dirs[0]), str(dirs[1]), "--alpha", "0.25",
           "--out", str(tmp_path / "wab")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["training"]["blend"]["alpha"] == 0.25
    sa, sb, sab = (load_model("nextqsm-vn", d).state_dict() for d in (*dirs, tmp_path / "wab"))
    assert not torch.equal(sa["reg.enc.0.0.weight"], sb["reg.enc.0.0.weight"])   # the two trainings differ
    for k, v in sab.items():
        torch.testing.assert_close(v, 0.75 * sa[k] + 0.25 * sb[k], rtol=1e-6, atol=1e-7)
    entry = load_manifest(tmp_path / "wab")["models"]["nextqsm-vn"]
    assert "levels" not in entry and entry["arch"].get("level", 0.0) == man["models"]["nextqsm-vn"]["arch"].get("level", 0.0)
    assert (tmp_path / "wab" / "nextqsm-bfr.safetensors").exists()        # A's other models come along
    load_model("nextqsm-bfr", tmp_path / "wab")
    other = tiny_config(tmp_path / "other", phase1_steps=1, phase2_steps=0)
    other.model.vn["unet"] = {**other.model.vn["unet"], "base": other.model.vn["unet"]["base"] * 2}
    fit(other)
    export_checkpoint(tmp_path / "other" / "last.pt", tmp_path / "wo")
    with pytest.raises(QSMInputError, match="different architectures"):
        blend_weights(dirs[0], tmp_path / "wo", 0.5, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_regional_bias_term():
    """train.regional_bias: a region whose chi is uniformly too low (shrunken nucleus contrast) costs far more than
    voxel noise with the same pointwise L1; a global offset costs nothing; voxels outside the mask are ignored."""
    from nextqsm_training.train import l1, regional_bias

    g = torch.Generator().manual_seed(0)
    b = torch.randn(1, 1, 24, 24, 24, generator=g) * 0.05
    m = torch.zeros_like(b)
    m[:, :, 2:22, 2:22, 2:22] = 1.0
    nucleus = torch.zeros_like(b)
    nucleus[:, :, 8:14, 8:14, 8:14] = 1.0
    shrunk = b - 0.05 * nucleus
    noise = torch.randn(b.shape, generator=g).sign() * m
    noise = noise * float(l1(shrunk, b, m)) / float(l1(b + noise, b, m))   # the L1 scales with the amplitude
    assert abs(float(l1(b + noise, b, m)) - float(l1(shrunk, b, m))) < 1e-4          # same pointwise L1
    assert float(regional_bias(shrunk, b, m)) > 4 * float(regional_bias(b + noise, b, m))
    assert float(regional_bias(b + 0.03 * m + 7.0 * (1 - m), b, m)) < 1e-6           # offset, outside: free


def test_regional_weight_is_trained_and_logged(tmp_path):
    cfg = tiny_config(tmp_path / "r", phase1_steps=2, phase2_steps=0, train_bfr=False, train_baseline=False,
                      regional_weight=2.0, regional_size=5)
    fit(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "r" / "train.csv")))
    assert rows and all(0.0 < float(r["loss_regional"]) < 1.0 for r in rows)


def test_focal_error_term():
    """train.focal_error: a small strong source shrunk to half costs far more than the same pointwise L1 spread as
    noise over the volume; a global offset and voxels outside the mask cost nothing; no source, no cost."""
    from nextqsm_training.train import focal_error, l1

    g = torch.Generator().manual_seed(0)
    b = torch.randn(1, 1, 24, 24, 24, generator=g) * 0.02
    m = torch.zeros_like(b)
    m[:, :, 2:22, 2:22, 2:22] = 1.0
    src = torch.zeros_like(b)
    src[:, :, 11:13, 11:13, 11:13] = 1.0
    b = b - 0.8 * src                                                                   # a calcification, -0.8 ppm
    shrunk = b + 0.4 * src
    noise = torch.randn(b.shape, generator=g).sign() * m
    noise = noise * float(l1(shrunk, b, m)) / float(l1(b + noise, b, m))
    assert abs(float(l1(b + noise, b, m)) - float(l1(shrunk, b, m))) < 1e-4           # same pointwise L1
    assert float(focal_error(shrunk, b, m)) > 10 * float(focal_error(b + noise, b, m))
    assert float(focal_error(shrunk, b, m)) == pytest.approx(0.4 * 8 / 64, rel=0.05)  # 8 core voxels of 64 near ones
    assert float(focal_error(b + 0.03 * m + 7.0 * (1 - m), b, m)) < 1e-6
    assert float(focal_error(b + noise, b + 0.8 * src, m)) == 0.0                      # no strong source: no term


def test_focal_weight_is_trained_and_logged(tmp_path):
    cfg = tiny_config(tmp_path / "f", phase1_steps=2, phase2_steps=0, train_bfr=False, train_baseline=False,
                      focal_weight=0.5)
    fit(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "f" / "train.csv")))
    assert rows and all(float(r["loss_focal"]) >= 0.0 for r in rows) and "loss_focal" in rows[0]

"""Job runner: the real worker subprocess, its progress lines, failure reporting and Cancel."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")

from nextqsm.io import save_nifti  # noqa: E402
from nextqsm.jobs import CANCELLED, FAILED, SUCCEEDED, Job, Signal, run_job  # noqa: E402


def _small_inputs(tmp_path, shape=(24, 22, 20)):
    from nextqsm.dipole import forward_field

    rng = np.random.default_rng(0)
    chi = np.zeros(shape, np.float32)
    chi[8:14, 8:13, 7:12] = 0.1
    mask = np.zeros(shape, np.float32)
    mask[3:-3, 3:-3, 3:-3] = 1
    field = forward_field(chi, (2, 2, 2), (0, 0, 1)) + rng.normal(0, 1e-4, shape).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    save_nifti(field[..., None], aff, tmp_path / "phase.nii.gz")
    save_nifti(mask, aff, tmp_path / "mask.nii.gz")
    return {"phase": str(tmp_path / "phase.nii.gz"), "mask": str(tmp_path / "mask.nii.gz"),
            "phase_units": "ppm", "field_kind": "local", "b0_t": 3.0, "device": "cpu"}, aff


def _method():
    from nextqsm.pipeline import available_methods

    avail = available_methods()
    for m in ("tkd", "vsharp-l2", "tgv"):
        if m in avail:
            return m
    pytest.skip(f"no fast method available ({avail})")


def test_signal():
    s, got = Signal(), []
    f = got.append
    s.connect(f)
    s.connect(f)  # once only
    s.emit(1)
    s.disconnect(f)
    s.emit(2)
    assert got == [1]


def test_worker_runs_reports_progress_and_writes_results(tmp_path):
    req, aff = _small_inputs(tmp_path)
    m = _method()
    req["methods"] = [m]
    req["method_params"] = {"tgv": {"iterations": 20}}
    seen = []
    job = run_job(req, progress=lambda f, s: seen.append((f, s)), timeout=120)
    assert job.state == SUCCEEDED, job.error
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0 and len(fr) >= 4
    assert any(s.startswith(m) for _, s in seen) and seen[0][1] == "loading inputs"
    out = job.out_dir / job.result["methods"][m]["chi"]
    import nibabel as nib

    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, aff)
    assert img.shape == (24, 22, 20)
    assert json.loads((job.out_dir / "result.json").read_text())["device"] == "cpu"
    job.cleanup()
    assert not job.work_dir.exists()


def test_worker_input_error_is_reported_and_files_removed(tmp_path):
    req, _ = _small_inputs(tmp_path)
    req.update(methods=[_method()], phase_units="wrapped_rad", te_s=[0.01, 0.02])  # 2 TEs for 1 echo
    job = run_job(req, timeout=60)
    assert job.state == FAILED and job.returncode == 2
    assert job.error.startswith("echo times:") and "Fix:" in job.error
    assert not job.work_dir.exists()


def test_worker_crash_is_reported(tmp_path):
    job = run_job({"phase": str(tmp_path / "missing.nii.gz"), "methods": ["tkd"], "phase_units": "ppm"}, timeout=60)
    assert job.state == FAILED and "file not found" in job.error


def test_cancel_kills_the_process_tree_and_leaves_nothing(tmp_path):
    req, _ = _small_inputs(tmp_path)
    req.update(methods=[_method()], debug_hold_s=60)
    job = Job(req).start()
    child_pid = None
    t0 = time.monotonic()
    while child_pid is None and time.monotonic() - t0 < 60:
        job.poll()
        for line in job.log:
            if line.startswith("CHILD "):
                child_pid = int(line.split()[1])
        time.sleep(0.05)
    assert child_pid is not None, list(job.log)
    worker_pid = job.pid
    assert psutil.pid_exists(child_pid) and job.progress == pytest.approx(0.5)
    assert (job.out_dir / "mask.nii.gz").exists()  # partial outputs exist before the cancel
    t1 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t1 < 10
    assert job.state == CANCELLED
    for pid in (worker_pid, child_pid):
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"process {pid} survived the cancel"
    assert not job.work_dir.exists()  # request, inputs and partial outputs removed
    assert job.result is None


def test_device_info_in_subprocess():
    from nextqsm.jobs import query_device_info

    info = query_device_info(timeout=120)
    assert "error" not in info, info
    assert info["python"] and info["cpu_count"] >= 1 and info["ram_total_mb"] > 0
    assert isinstance(info.get("cpu_bf16"), bool)
    assert "methods" in info and isinstance(info["gpus"], list)
    try:
        import torch
    except ImportError:
        assert info["torch"] is None
    else:
        assert info["torch"] == torch.__version__ and info["cuda_build"] == torch.version.cuda


def test_total_field_from_wrapped_multi_echo():
    from nextqsm.units import ppm_to_rad
    from nextqsm.worker import total_field_ppm

    shape = (32, 32, 8)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = (0.6 * x + 0.4 * y ** 2).astype(np.float32)  # ppm, smooth
    te = [0.004, 0.008, 0.012]
    phase = np.stack([np.angle(np.exp(1j * ppm_to_rad(field, t, 3.0))) for t in te], -1).astype(np.float32)
    assert np.abs(ppm_to_rad(field, te[-1], 3.0)).max() > 2 * np.pi  # really wrapped
    got = total_field_ppm(phase, "wrapped_rad", te, 3.0, mask=np.ones(shape, bool), voxel_size=(1, 1, 2))
    got -= np.median(got - field)  # spatial unwrapping is defined up to 2 pi k / TE
    np.testing.assert_allclose(got, field, atol=0.02)
    unwrapped = np.stack([ppm_to_rad(field, t, 3.0) for t in te], -1)
    np.testing.assert_allclose(total_field_ppm(unwrapped, "unwrapped_rad", te, 3.0), field, atol=1e-4)
    from nextqsm.units import ppm_to_hz

    np.testing.assert_allclose(total_field_ppm(ppm_to_hz(field, 3.0), "hz", None, 3.0), field, rtol=1e-5)


def test_memory_check_refuses_impossible_sizes():
    from nextqsm.errors import QSMInputError
    from nextqsm.worker import memory_check, memory_needed_mb

    assert memory_needed_mb((64, 64, 64), ["tkd"]) < memory_needed_mb((64, 64, 64), ["nextqsm"])
    assert memory_check((32, 32, 32), ["tkd"], "cpu") == "cpu"
    with pytest.raises(QSMInputError, match="RAM"):
        memory_check((4000, 4000, 4000), ["tgv"], "cpu")


def test_command_job_runs_the_training_cli():
    """The NeXtQSMTraining module's path: ``python -m nextqsm_training.cli ...`` as a job."""
    job = Job({}, args=["-m", "nextqsm_training.cli", "--help"]).start()
    assert job.wait(timeout=120) == SUCCEEDED, "\n".join(job.log)
    assert any("nextqsm-train" in line for line in job.log)
    job.cleanup()
    assert not job.work_dir.exists()
    bad = Job({}, args=["-m", "nextqsm_training.cli", "no-such-command"]).start()
    assert bad.wait(timeout=120) == FAILED and bad.returncode == 2

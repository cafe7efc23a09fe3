"""End to end, as a user runs it (issue #4): a Prefect server on loopback (random free port,
temporary PREFECT_HOME), the ``cpu-pool`` process work pool, the ``era5-sample`` deployment
from ``prefect.yaml``, a worker, and ``prefect deployment run ... --watch``. Stores are then
read back in FRESH Python processes, the way a reader with only ``COINPP_MODEL_PATH`` would.

Also: the target store on S3 (the conftest's moto server) and a crash (SIGKILL of the flow's
process group mid-archive) followed by a resume that yields the same bytes as an
uninterrupted run. Everything is started and stopped by the tests themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ERA5_FILES, REPO, _free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY_ARCH = {"grid": "latlon", "patch_shape": [16, 16], "coords": "both", "depth": 3, "width": 32,
             "latent_dim": 8}
BOUND = 1.0  # K


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (flow-run children)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Server + work pool + ``era5-sample`` deployment + worker; yields the environment."""
    home = tmp_path_factory.mktemp("prefect-e2e")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COINPP_PIPELINE_HOME": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = home / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as f:
            p = subprocess.Popen([str(BIN / "prefect"), *args], cwd=REPO, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    def cli(*args: str, timeout: float = 180) -> str:
        r = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    try:
        srv = start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        deadline = time.monotonic() + 180
        while True:
            assert srv.poll() is None, (home / "server.log").read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, "server not healthy after 180 s"
            time.sleep(1)
        cli("work-pool", "create", "cpu-pool", "--type", "process")
        cli("--no-prompt", "deploy", "--name", "era5-sample", timeout=300)
        worker = start("worker", "worker", "start", "--pool", "cpu-pool")
        yield {"env": env, "cli": cli, "worker": worker, "home": home}
    except BaseException:
        for log in logs:
            if log.exists():
                print(f"--- {log.name} ---\n{log.read_text()[-5000:]}")
        raise
    finally:
        for p in reversed(procs):
            _stop(p)


def _run_deployment(server: dict[str, Any], params: dict[str, Any]) -> str:
    out = server["cli"]("deployment", "run", "compress-archive/era5-sample", "--params", json.dumps(params),
                        "--watch", "--watch-interval", "2", "--watch-timeout", "400", timeout=460)
    assert server["worker"].poll() is None, "the worker died"
    assert "Completed" in out, out
    return out


def _python(code: str, env: dict[str, str], timeout: float = 300) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last, returned parsed."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


CHECK_STORE = """
    import json
    import numpy as np, xarray as xr, zarr
    target, files, so = {target!r}, {files!r}, {so!r}
    src = xr.concat([xr.open_dataset(f)[["t2m"]].load() for f in files], dim="time")
    ref = src["t2m"].values.astype(np.float64)
    raw = zarr.open(target, mode="r", storage_options=so)["t2m"][:]
    ds = xr.open_zarr(target, consolidated=False, storage_options=so).load()
    assert np.array_equal(raw, ds["t2m"].values)
    assert np.array_equal(ds["time"].values, src["time"].values)
    assert np.array_equal(ds["latitude"].values, src["latitude"].values)
    err = float(np.abs(ds["t2m"].values.astype(np.float64) - ref).max())
    print(json.dumps({{"max_err": err, "shape": list(raw.shape), "attrs": ds.attrs["coinpp"]["models"]}}))
"""


def _check_store(env: dict[str, str], target: str, model_dir: Path, files: list[str],
                 so: dict[str, str] | None = None) -> dict[str, Any]:
    models = sorted(model_dir.glob("*.coinpp"))
    assert len(models) == 1, models
    # the reader knows nothing but COINPP_MODEL_PATH (and allows no model URL)
    reader_env = {k: v for k, v in env.items() if not k.startswith(("PREFECT_", "COINPP_"))}
    reader_env["COINPP_MODEL_PATH"] = str(model_dir)
    out = _python(CHECK_STORE.format(target=target, files=[str(f) for f in files], so=so), reader_env)
    assert out["shape"] == [7, 181, 360]
    assert out["max_err"] <= BOUND, out
    assert out["attrs"]["t2m"]["sha256"] == models[0].name.removesuffix(".coinpp")
    return out


def _params(target: str, **kw: Any) -> dict[str, Any]:
    return {"target": target, "source": [str(f) for f in ERA5_FILES[:2]], "train_steps": 15,
            "architecture": TINY_ARCH, "max_abs_error": BOUND, "region_chunks": 2} | kw


@pytest.fixture(scope="module")
def local_run(server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("e2e-local") / "era5.zarr"
    _run_deployment(server, _params(str(target)))
    return target


def test_deployment_run_local_store(server: dict[str, Any], local_run: Path) -> None:
    model_dir = Path(str(local_run) + ".models")
    _check_store(server["env"], str(local_run), model_dir, ERA5_FILES[:2])


def test_deployment_run_s3_store(server: dict[str, Any], s3_server: dict[str, str], tmp_path: Path) -> None:
    target = "s3://coinpp-test/e2e/era5.zarr"
    model_dir = tmp_path / "models"
    _run_deployment(server, _params(target, storage_options=s3_server, model_dir=str(model_dir), train_steps=5))
    _check_store(server["env"], target, model_dir, ERA5_FILES[:2], so=s3_server)


RUN_FLOW = """
    import json, sys
    sys.path.insert(0, {repo!r})
    from flows.compress_archive import compress_archive
    out = compress_archive(source={files!r}, target={target!r}, variables=["t2m"], model={model!r},
                           region_chunks=1, max_workers=1, max_abs_error={bound!r})
    print(json.dumps({{"regions_written": out["regions_written"]}}))
"""


def test_crash_and_resume_matches_uninterrupted(server: dict[str, Any], local_run: Path, tmp_path: Path) -> None:
    import zarr

    def read(store: Path, name: str) -> np.ndarray:
        return np.asarray(zarr.open_array(str(store), path=name, mode="r")[:])

    from coinpp_pipeline.archive import (
        ArchiveJob,
        finalize_store,
        plan_archive,
        prepare_store,
        write_region,
    )

    (model,) = Path(str(local_run) + ".models").glob("*.coinpp")
    files = [str(f) for f in ERA5_FILES[:4]]  # 14 items -> 14 regions of one chunk
    n = 14
    target = tmp_path / "crash.zarr"
    code = textwrap.dedent(RUN_FLOW.format(repo=str(REPO), files=files, target=str(target), model=str(model),
                                           bound=BOUND))
    env = server["env"]
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as f:  # a file, not a pipe: a full pipe would stall the flow
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        done = 0
        while not 2 <= done < n - 2:  # kill with some, but not all, regions done
            assert proc.poll() is None, "the flow ended before it could be killed:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no region finished within 300 s"
            time.sleep(0.2)
            with contextlib.suppress(Exception):
                done = int((read(target, "_coinpp/done_t2m") > 0).sum())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        _stop(proc)
    flags = read(target, "_coinpp/done_t2m")
    k = int((flags > 0).sum())
    assert 2 <= k < n, flags
    assert "coinpp" not in zarr.open_group(str(target), mode="r").attrs  # never finalized

    out = _python(RUN_FLOW.format(repo=str(REPO), files=files, target=str(target), model=str(model), bound=BOUND), env)
    assert out["regions_written"] == n - k
    np.testing.assert_array_equal(read(target, "_coinpp/done_t2m"), [2] * n)

    # the same archive written without interruption, by the library in this process
    from coinpp_pipeline import Model

    sha = Model.load(str(model)).sha256
    ref = tmp_path / "ref.zarr"
    job = plan_archive(ArchiveJob(sources=files, target=str(ref), variables=["t2m"], models={"t2m": str(model)},
                                  model_hashes={"t2m": sha}, region_chunks=1, max_abs_error=BOUND))
    pending = prepare_store(job)
    assert len(pending) == n
    finalize_store(job, [write_region(job, r) for r in pending])

    decoded = read(target, "t2m")
    np.testing.assert_array_equal(decoded, read(ref, "t2m"))
    np.testing.assert_array_equal(read(target, "time"), read(ref, "time"))
    for t in range(n):
        key = f"t2m/c/{t}/0/0"
        assert (target / key).read_bytes() == (ref / key).read_bytes(), key
    import xarray as xr

    src = np.concatenate([xr.open_dataset(f)["t2m"].values for f in files])
    assert np.abs(decoded.astype(np.float64) - src).max() <= BOUND

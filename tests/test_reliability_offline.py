"""Offline guarantee (issue 8, part 4): the embedded pipeline runs with the network cut, and configs that
need the network fail fast with a clear message."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from _data_fixtures import tiny_fashion_mnist, tiny_imagefolder
from conftest import REPO, compose

from experiments.run import execute
from spae.errors import UserError


def _data_overrides(tmp_path, fm, folder) -> list[str]:
    """The tiny local data setup of tests/test_data_stage.py (no package data, no hub)."""
    return ["+bench=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
            "logger=none", "data=imagefolder", f"data.pretrain.fashion_mnist.path={fm}",
            "data.max_pretrain_images=20", f"data.classification.path={folder}",
            "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.vqa", "~data.generation"]


def _network_cut_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _network_cut_works(), reason="`unshare -n` is not permitted here (needs root or "
                    "unprivileged user namespaces), so the network cannot be cut for the test")
def test_smoke_run_succeeds_with_the_network_cut(tmp_path):
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=40, n_test=10)
    folder = tiny_imagefolder(tmp_path / "imgs")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and k != "WANDB_MODE"}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "experiments.run",
                           *_data_overrides(tmp_path, fm, folder)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(open(proc.stdout.strip().splitlines()[-1]).read())
    assert results["metrics"]["eval_data"]["classification/imagefolder"]["rows"] == 6


class _NoNetwork:
    """Records every attempt to open an internet connection (AF_UNIX sockets are not the network)."""

    def __init__(self, monkeypatch):
        self.attempts: list[str] = []
        original = socket.socket.connect

        def guarded(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.attempts.append(repr(address))
                raise OSError("network disabled by test_reliability_offline")
            return original(sock, address)

        monkeypatch.setattr(socket.socket, "connect", guarded)
        monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: guarded(
            socket.socket(), address))


def test_corrupt_images_are_skipped_and_counted_without_network(tmp_path, monkeypatch):
    guard = _NoNetwork(monkeypatch)
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=40, n_test=10)
    folder = tiny_imagefolder(tmp_path / "imgs")
    good = (folder / "test" / "tabby-cat" / "0.png").read_bytes()
    (folder / "test" / "tabby-cat" / "empty.png").write_bytes(b"")
    (folder / "test" / "golden_retriever" / "cut.png").write_bytes(good[: len(good) // 2])
    results_path = execute(compose(_data_overrides(tmp_path, fm, folder)))
    results = json.loads(results_path.read_text())
    assert results["metrics"]["eval_data"]["classification/imagefolder"]["rows"] == 6
    assert results["metrics"]["eval_data"]["classification/imagefolder"]["skipped_images"] == 2
    assert "skipped_images" not in results["metrics"]["pretrain_data"]["pretrain/fashion_mnist"]
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "eval_data").iterdir() if p.is_dir()]
    reasons = json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]["skipped_images"]
    assert any("empty.png" in r for r in reasons["classification/imagefolder"])
    assert any("cut.png" in r for r in reasons["classification/imagefolder"])
    assert guard.attempts == []


def test_online_wandb_with_offline_true_fails_fast(tmp_path, monkeypatch):
    _NoNetwork(monkeypatch)
    cfg = compose(["+bench=smoke", f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}", "logger=wandb"])
    start = time.perf_counter()
    with pytest.raises(UserError) as excinfo:
        execute(cfg)
    assert type(excinfo.value).__name__ == "ConfigConflictError"
    assert "conflicts with offline=true" in str(excinfo.value) and "logger=wandb_offline" in str(excinfo.value)
    assert time.perf_counter() - start < 5  # before any stage runs (and before wandb is imported)
    assert not (tmp_path / "stages").exists()


def test_open_clip_tag_offline_and_uncached_fails_fast(tmp_path, monkeypatch):
    _NoNetwork(monkeypatch)
    from spae.clip.loading import load_clip
    from spae.clip.open_clip_loader import ClipWeightsUnavailable

    spec = {"name": "vit_l14", "kind": "open_clip", "arch": "ViT-L-14-quickgelu", "pretrained": "openai"}
    with pytest.raises(ClipWeightsUnavailable) as excinfo:
        load_clip(spec, cache_dir=tmp_path, offline=True)
    assert isinstance(excinfo.value, UserError)
    assert "clip.pretrained=/path/to/file" in str(excinfo.value) and "clip=embedded" in str(excinfo.value)


def test_paper_data_offline_fails_fast_on_the_cli_without_a_traceback(tmp_path):
    """data=paper needs the hub: exit code 2 and one clear paragraph (see also test_data_stage.py)."""
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "+bench=smoke", f"paths.cache_dir={tmp_path}",
                           f"paths.runs_dir={tmp_path}", "logger=none", "data=paper"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: dataset" in proc.stderr and "offline=true" in proc.stderr
    assert "data=embedded" in proc.stderr


def test_every_test_is_guarded_against_network_connections(_no_network):
    """tests/conftest.py refuses non-loopback connections in every test and fails the test afterwards, even
    when the code under test catches the error (as libraries with an offline fallback do)."""
    attempts = _no_network
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="tests must run offline"):
            sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
        assert sock.connect_ex(("192.0.2.2", 443)) != 0
    finally:
        sock.close()
    assert [a.split(" ", 1)[1] for a in attempts] == ["('192.0.2.1', 80)", "('192.0.2.2', 443)"]
    attempts.clear()  # this test wanted them: do not fail it at teardown
    # loopback stays allowed (the HTTP backend tests talk to a local server)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            server.bind(("127.0.0.1", 0))
        except OSError:  # loopback down (`unshare -n` without `ip link set lo up`): nothing to connect to
            return
        server.listen(1)
        client = socket.create_connection(server.getsockname(), timeout=5)
        client.close()
    finally:
        server.close()
    assert attempts == []

"""Shared test helpers: compose the real config tree and shrink it."""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads (see experiments/__init__.py): idle OpenMP threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# Tests never reach the network and never log online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose(overrides: list[str]):
    """Compose conf/config.yaml with overrides, as the CLI would (without running anything)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture
def tmp_dirs(tmp_path):
    """Overrides that keep every write of a run inside tmp_path."""
    return [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}"]


# ------------------------------------------------------------------------------------------ no network
def _is_loopback(sock, address) -> bool:
    import ipaddress

    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: the network


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Every test runs offline (issue 8): a connection to anything but loopback is refused (OSError, so code
    under test sees what it would see offline) and fails the test, even if the code caught the error.
    Subprocesses are not covered here; `unshare -n` covers them (docs/reliability.md)."""
    import socket

    attempts: list[str] = []
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(sock, address):
        attempts.append(f"{socket.AddressFamily(sock.family).name} {address!r}")
        return OSError(101, f"network access in a test ({address!r}); tests must run offline")

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(sock, address):
            raise refuse(sock, address)
        return original_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(sock, address):
            refuse(sock, address)
            return 101  # ENETUNREACH
        return original_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    if attempts:
        pytest.fail("the test tried to reach the network: " + "; ".join(attempts[:5]), pytrace=False)

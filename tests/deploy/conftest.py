"""The deploy tools (promtool, prometheus, kubeconform, kustomize, compose) as deploy/check.sh has
installed them, and helpers to run its checks on the repo's deploy/ or on a broken copy."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "check.sh"
# A safety net against a hung tool, never what a test measures.
TOOL_TIMEOUT = 300


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    """NAME → path; installs what is missing (tests/run.sh has normally done so already)."""
    done = subprocess.run(
        [str(CHECK), "tools"], capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stderr
    return {
        name: Path(path) for name, path in (line.split("=", 1) for line in done.stdout.splitlines())
    }


def run_check(*checks: str, deploy: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    """deploy/check.sh CHECK... against ``deploy``; stdout and stderr together in .stdout."""
    return subprocess.run(
        [str(CHECK), *checks],
        env={**os.environ, "CIRELAY_DEPLOY_DIR": str(deploy)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """A copy of deploy/ that a test may break."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence, so a test never 'breaks' a file by editing nothing."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def load_tool(name: str) -> ModuleType:
    """A script under deploy/tools (not a package: CI runs them as files) as a module."""
    spec = importlib.util.spec_from_file_location(name, DEPLOY / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_config(tools: dict[str, Path], *files: str) -> dict[str, Any]:
    """deploy/compose.yaml (with ``files`` laid over it, as ``-f`` does) as docker compose
    resolves it: merged, interpolated, paths absolute."""
    args = [arg for name in ("compose.yaml", *files) for arg in ("-f", str(DEPLOY / name))]
    done = subprocess.run(
        [str(tools["compose"]), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def kustomize_build(tools: dict[str, Path], kustomization: str) -> list[dict[str, Any]]:
    """The resources ``kustomize build deploy/KUSTOMIZATION`` renders."""
    done = subprocess.run(
        [str(tools["kustomize"]), "build", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

"""The benchmarks' peer: Benthos v4.27.0 built from ``tests/bench/peer`` (Go module proxy), cached.

    python -m tests.bench.peer      # build both variants now (tests/bench/run.sh does this first)

``http`` has the components the callback pipeline uses; ``pulsar`` adds Benthos's pulsar input
and output (build tag ``pulsar``). A binary is cached under ``~/.cache/cirelay/bench-peer/``,
named by a hash of the module's files, so editing the module rebuilds it and nothing else does.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "peer"
CACHE = Path.home() / ".cache" / "cirelay" / "bench-peer"
VARIANTS = ("http", "pulsar")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file() and path.suffix in (".go", ".mod", ".sum"):
            digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def binary(variant: str) -> Path:
    """The peer's executable for ``variant``, built first if this module version has none."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    target = CACHE / f"benthos-v4.27.0-{variant}-{_fingerprint()}"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    print(f"building the peer ({variant}) into {target} (takes minutes once)", flush=True)
    # -checklinkname=0: Go >= 1.23 refuses a go:linkname in a dependency of pure/extended.
    subprocess.run(
        ["go", "build", "-tags", variant, "-ldflags=-checklinkname=0", "-o", str(partial), "."],
        cwd=SOURCE,
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
    )
    partial.rename(target)
    return target


def config(name: str) -> Path:
    """A pipeline config in ``tests/bench/peer`` (``http.yaml``, ``pulsar.yaml``)."""
    return SOURCE / name


if __name__ == "__main__":
    for variant in VARIANTS:
        print(binary(variant))

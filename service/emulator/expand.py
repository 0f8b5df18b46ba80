"""A batch's Input becomes object keys; each object's Output names become concrete file names."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from service.emulator.spec import BatchSpec
from service.emulator.times import CST, parse_ci_time

NUMBER = "${Number}"
# Bounds the result files one job lists, whatever Count the request asked for.
_MAX_NUMBERED = 100


@dataclass(frozen=True)
class BucketFile:
    key: str
    modified: datetime


@dataclass(frozen=True)
class Outputs:
    object: str  # Output.Object with everything but `${Number}` substituted
    names: list[str]  # every result file the media job writes
    prefix: str  # the part of Output.Object before `${Number}`, else ""


def synthetic_keys(kind: str, value: str, count: int) -> list[str]:
    """Deterministic keys standing for what a Prefix, Manifest or UrlFile would list."""
    if kind == "Prefix":
        base = value if not value or value.endswith("/") else f"{value}/"
    else:
        base = f"{PurePosixPath(value).with_suffix('')}/"
    return [f"{base}object-{n}.mp4" for n in range(1, count + 1)]


def scan_bucket_dir(root: Path) -> list[BucketFile]:
    """Every regular file under ``root`` as a key (POSIX, relative) with its modification time."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath, filename)
            if path.is_file():
                key = path.relative_to(root).as_posix()
                found.append(BucketFile(key, datetime.fromtimestamp(path.stat().st_mtime, CST)))
    return sorted(found, key=lambda f: f.key)


def select_files(files: Iterable[BucketFile], spec: BatchSpec) -> list[str]:
    """The keys a Prefix/Manifest/UrlFile input names among the bucket's files, within TimeInterval.

    A Manifest or UrlFile stands for every file in the bucket but itself.
    """
    start = parse_ci_time(spec.time_start) if spec.time_start else None
    end = parse_ci_time(spec.time_end) if spec.time_end else None
    keys = []
    for f in files:
        if spec.input_kind == "Prefix":
            if not f.key.startswith(spec.input_value):
                continue
        elif f.key == spec.input_value:
            continue
        if (start is not None and f.modified < start) or (end is not None and f.modified > end):
            continue
        keys.append(f.key)
    return keys


def expand_input(spec: BatchSpec, *, objects_per_prefix: int, bucket_dir: str) -> list[str]:
    if spec.input_kind == "Object":
        return [spec.input_value]
    if not bucket_dir:
        return synthetic_keys(spec.input_kind, spec.input_value, objects_per_prefix)
    return select_files(scan_bucket_dir(Path(bucket_dir)), spec)


def substitute(template: str, *, batch_id: str, input_key: str) -> str:
    path = PurePosixPath(input_key)
    variables = {
        "${InventoryTriggerJobId}": batch_id,
        "${InputName}": path.stem,
        "${InputNameAndExt}": path.name,
        "${InputPath}": "" if str(path.parent) == "." else str(path.parent),
    }
    for name, value in variables.items():
        template = template.replace(name, value)
    return template


def numbered(template: str, count: int) -> list[str]:
    if NUMBER not in template:
        return [template]
    return [template.replace(NUMBER, str(n)) for n in range(min(count, _MAX_NUMBERED))]


def resolve_outputs(spec: BatchSpec, *, batch_id: str, input_key: str) -> Outputs:
    out = spec.output
    if out is None:
        return Outputs("", [], "")

    def sub(template: str) -> str:
        return substitute(template, batch_id=batch_id, input_key=input_key)

    obj = sub(out.object)
    names = numbered(obj, spec.outputs_per_job) if obj else []
    if out.sprite_object:
        names += numbered(sub(out.sprite_object), spec.outputs_per_job)
    if out.au_object:
        names.append(sub(out.au_object))
    names += [sub(o) for o in out.stream_extract]
    prefix = obj.split(NUMBER, 1)[0] if NUMBER in obj else ""
    return Outputs(obj, names, prefix)

"""Lay out offline JSON schemas for kubeconform (called by deploy/check.sh).

kubeconform fetches its schemas from GitHub, which this project's machines cannot reach. The same
schemas come from two registry packages instead:

- Kubernetes' own kinds from the PyPI wheel ``kubernetes-validate``, whose "local" schemas point
  at a shared ``_definitions.json`` through an absolute ``$id``/``$ref`` pair; rewritten here to a
  relative reference so that kubeconform's file loader resolves it next to the schema.
- ServiceMonitor and PrometheusRule from the CustomResourceDefinitions in the Go module
  ``github.com/prometheus-operator/prometheus-operator``, converted from their OpenAPI v3 schema
  to JSON Schema the way kubeconform's own ``openapi2jsonschema.py`` does (strict: unknown fields
  are errors).

Output layout (kubeconform ``-schema-location`` templates)::

    OUT/v<version>-local-strict/<kind>-<group>-<version>.json   + _definitions.json
    OUT/crds/<kind>-<group>-<version>.json
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

WHEEL_ROOT = "kubernetes_validate/kubernetes-json-schema/"
ABSOLUTE_DEFINITIONS = "/api/_definitions.json#"


def extract_kubernetes(wheel: Path, versions: Sequence[str], out: Path) -> int:
    """Write the strict schemas of each Kubernetes version; the number of files written."""
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for version in versions:
            prefix = f"{WHEEL_ROOT}v{version}-local-strict/"
            names = [n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".json")]
            if not names:
                raise SystemExit(f"{wheel.name} has no schemas for Kubernetes {version}")
            target = out / f"v{version}-local-strict"
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                schema = json.loads(archive.read(name))
                schema.pop("$id", None)
                (target / name[len(prefix) :]).write_text(json.dumps(relocate(schema)))
                written += 1
    return written


def relocate(schema: Any) -> Any:
    """Make every ``/api/_definitions.json#...`` reference relative to the schema's own file."""
    if isinstance(schema, dict):
        return {
            key: (
                value.replace(ABSOLUTE_DEFINITIONS, "_definitions.json#", 1)
                if key == "$ref" and isinstance(value, str)
                else relocate(value)
            )
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [relocate(item) for item in schema]
    return schema


def convert_crds(crd_files: Sequence[Path], out: Path) -> int:
    """Write one strict JSON schema per served version of each CRD; the number written."""
    target = out / "crds"
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in crd_files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            kind = spec["names"]["kind"].lower()
            group = spec["group"].split(".")[0]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                name = f"{kind}-{group}-{version['name']}.json"
                (target / name).write_text(json.dumps(to_json_schema(schema)))
                written += 1
    return written


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) → strict JSON Schema draft 4."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheel", type=Path, required=True, help="kubernetes-validate wheel")
    parser.add_argument("--versions", required=True, help="comma-separated, e.g. 1.29.0,1.37.0")
    parser.add_argument("crds", type=Path, nargs="+", help="CustomResourceDefinition YAML files")
    args = parser.parse_args(argv)
    kubernetes = extract_kubernetes(args.wheel, args.versions.split(","), args.out)
    crds = convert_crds(args.crds, args.out)
    if crds == 0:
        names = " ".join(map(str, args.crds))
        raise SystemExit(f"no CustomResourceDefinition with a schema in {names}")
    sys.stderr.write(f"k8s_schemas: {kubernetes} Kubernetes schemas, {crds} CRD schemas\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

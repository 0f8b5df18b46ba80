"""deploy/tools/k8s_schemas.py: the offline schema layout kubeconform validates against."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import load_tool

tool = load_tool("k8s_schemas")

ROOT = "kubernetes_validate/kubernetes-json-schema/"


def fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"{ROOT}v1.29.0-local-strict/service-v1.json",
            json.dumps(
                {
                    "$id": "https://kubernetes.io/api/service/v1",
                    "properties": {
                        "spec": {"$ref": "/api/_definitions.json#/$defs/ServiceSpec"},
                        "$ref": {"type": "string"},  # a property named "$ref" stays as it is
                    },
                }
            ),
        )
        archive.writestr(
            f"{ROOT}v1.29.0-local-strict/_definitions.json",
            json.dumps({"$id": "https://kubernetes.io/api/_definitions.json", "$defs": {}}),
        )
        archive.writestr(f"{ROOT}v1.29.0-local/service-v1.json", "{}")  # not strict: not taken
    return path


def test_kubernetes_schemas_reference_their_definitions_file_relatively(tmp_path: Path) -> None:
    written = tool.extract_kubernetes(fake_wheel(tmp_path / "kv.whl"), ["1.29.0"], tmp_path / "out")
    target = tmp_path / "out" / "v1.29.0-local-strict"
    assert written == 2
    assert sorted(p.name for p in target.iterdir()) == ["_definitions.json", "service-v1.json"]
    service = json.loads((target / "service-v1.json").read_text())
    assert service == {
        "properties": {
            "spec": {"$ref": "_definitions.json#/$defs/ServiceSpec"},
            "$ref": {"type": "string"},
        }
    }
    assert "$id" not in json.loads((target / "_definitions.json").read_text())


def test_a_kubernetes_version_the_wheel_lacks_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no schemas for Kubernetes 1\.99\.0"):
        tool.extract_kubernetes(fake_wheel(tmp_path / "kv.whl"), ["1.99.0"], tmp_path / "out")


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "ServiceMonitor"},
        "versions": [
            {
                "name": "v1",
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "port": {"x-kubernetes-int-or-string": True},
                                    "note": {"type": "string", "nullable": True},
                                    "extra": {
                                        "type": "object",
                                        "properties": {"a": {"type": "string"}},
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                    "labels": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            }
                        },
                    }
                },
            },
            {"name": "v1alpha1"},  # served without a schema: nothing to write
        ],
    },
}


def test_a_crd_becomes_a_strict_json_schema(tmp_path: Path) -> None:
    crd_file = tmp_path / "crd.yaml"
    crd_file.write_text(yaml.safe_dump_all([{"kind": "Namespace"}, CRD]))
    assert tool.convert_crds([crd_file], tmp_path / "out") == 1
    written = tmp_path / "out" / "crds" / "servicemonitor-monitoring-v1.json"
    schema = json.loads(written.read_text())
    spec = schema["properties"]["spec"]
    assert schema["additionalProperties"] is False
    assert spec["additionalProperties"] is False
    assert spec["properties"]["port"] == {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert spec["properties"]["note"] == {"type": ["string", "null"]}
    assert "additionalProperties" not in spec["properties"]["extra"]
    assert spec["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_files_without_a_crd_are_an_error(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "kv.whl")
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"kind": "ConfigMap"}))
    with pytest.raises(SystemExit, match="no CustomResourceDefinition"):
        tool.main(
            [
                "--out",
                str(tmp_path / "out"),
                "--wheel",
                str(wheel),
                "--versions",
                "1.29.0",
                str(empty),
            ]
        )

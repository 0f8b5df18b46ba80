"""Intake's pure parts: submission names, targets, idempotency keys and fingerprints."""

from __future__ import annotations

import re

import pytest

from service.intake import (
    IntakeError,
    Target,
    check_idempotency_key,
    fingerprint,
    resolve_target,
    submission_name,
)
from service.request import request_from_tree
from service.settings import Settings
from tests.queue.samples import BUCKET, REGION, request_tree

NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


def test_the_documented_example_holds() -> None:
    assert submission_name("demo", "5f0c2a9e8b6d4e1fa3c7b9d2e4f60718") == "demo-029e6775057dffec"


@pytest.mark.parametrize("name", ["a", "demo", "x" * 111, "y" * 112, "z" * 128, "a-b_c" * 25])
def test_submission_names_obey_cis_rule_and_keep_a_unique_suffix(name: str) -> None:
    first = submission_name(name, "job-one")
    second = submission_name(name, "job-two")
    assert NAME.fullmatch(first)
    assert len(first) <= 128
    assert first != second
    assert first.startswith(name[:111])
    assert first == submission_name(name, "job-one")  # derived, not random


def test_the_target_defaults_to_the_settings() -> None:
    settings = Settings(ci_bucket=BUCKET, ci_region=REGION)
    assert resolve_target(settings, None, None) == Target(BUCKET, REGION)
    assert resolve_target(settings, "other-1", "ap-beijing") == Target("other-1", "ap-beijing")


def test_a_missing_target_names_its_setting() -> None:
    with pytest.raises(IntakeError) as info:
        resolve_target(Settings(), None, REGION)
    assert info.value.code == "missing_target"
    assert "CIRELAY_CI_BUCKET" in info.value.message


@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 201, "é"])
def test_malformed_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(IntakeError):
        check_idempotency_key(key)


def test_the_fingerprint_covers_the_request_and_the_target() -> None:
    request = request_from_tree(request_tree())
    target = Target(BUCKET, REGION)
    assert fingerprint(request, target) == fingerprint(request_from_tree(request_tree()), target)
    assert fingerprint(request, target) != fingerprint(request, Target(BUCKET, "ap-beijing"))
    other = request_from_tree(request_tree("other"))
    assert fingerprint(request, target) != fingerprint(other, target)

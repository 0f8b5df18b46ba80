from __future__ import annotations

from pathlib import Path

from service.reference import replace_in, settings_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_reference_is_generated_from_settings() -> None:
    text = README.read_text()
    assert settings_markdown() in text, (
        "README's configuration reference is stale: regenerate it with "
        '`python -c \'import pathlib,service.reference as r; p=pathlib.Path("README.md"); '
        "p.write_text(r.replace_in(p.read_text()))'`"
    )
    assert replace_in(text) == text

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, reference


def test_defaults_are_embedded() -> None:
    s = Settings.load({})
    assert s.database_url == "sqlite:///./cirelay.db"
    assert s.sqlite_path == "./cirelay.db"
    assert s.log_format == "auto"


def test_environment_is_coerced_by_type() -> None:
    s = Settings.load(
        {
            "CIRELAY_PORT": "9000",
            "CIRELAY_CI_RATE_LIMIT": "2.5",
            "CIRELAY_EMULATOR_REORDER": "yes",
            "CIRELAY_LOG_FORMAT": "console",
            "OTHER": "ignored",
        }
    )
    assert (s.port, s.ci_rate_limit, s.emulator_reorder, s.log_format) == (
        9000,
        2.5,
        True,
        "console",
    )


def test_toml_file_is_overlaid_by_environment(tmp_path: Path) -> None:
    config = tmp_path / "cirelay.toml"
    config.write_text('port = 7000\nCIRELAY_CI_REGION = "ap-beijing"\nworkers = 2\n')
    s = Settings.load({"CIRELAY_PORT": "7001"}, config)
    assert (s.port, s.ci_region, s.workers) == (7001, "ap-beijing", 2)


@pytest.mark.parametrize(
    ("environ", "variable", "problem"),
    [
        ({"CIRELAY_PORT": "http"}, "CIRELAY_PORT", "must be an integer"),
        ({"CIRELAY_PORT": "70000"}, "CIRELAY_PORT", "port number"),
        ({"CIRELAY_LOG_FORMAT": "xml"}, "CIRELAY_LOG_FORMAT", "must be one of"),
        ({"CIRELAY_EMULATOR_REORDER": "maybe"}, "CIRELAY_EMULATOR_REORDER", "true or false"),
        ({"CIRELAY_WORKERS": "0"}, "CIRELAY_WORKERS", "at least 1"),
        ({"CIRELAY_CI_RATE_LIMIT": "0"}, "CIRELAY_CI_RATE_LIMIT", "greater than 0"),
        ({"CIRELAY_EMULATOR_DROP_RATE": "2"}, "CIRELAY_EMULATOR_DROP_RATE", "probability"),
        ({"CIRELAY_DATABASE_URL": "mysql://x"}, "CIRELAY_DATABASE_URL", "sqlite"),
        ({"CIRELAY_PULSAR_URL": "http://x"}, "CIRELAY_PULSAR_URL", "pulsar://"),
        ({"CIRELAY_NO_SUCH_THING": "1"}, "CIRELAY_NO_SUCH_THING", "unknown setting"),
    ],
)
def test_bad_settings_name_the_variable(
    environ: dict[str, str], variable: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(environ)
    assert info.value.variable == variable
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = = 1")
    with pytest.raises(SettingsError, match="invalid TOML"):
        Settings.load({}, config)
    with pytest.raises(SettingsError, match="cannot read config file"):
        Settings.load({}, tmp_path / "missing.toml")


def test_serve_requires_credentials() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load({}).check_serve()
    assert info.value.variable == "CIRELAY_API_TOKEN"
    ready = Settings.load(
        {
            "CIRELAY_API_TOKEN": "t",
            "CIRELAY_CALLBACK_SECRET": "s",
            "CIRELAY_CI_SECRET_ID": "id",
            "CIRELAY_CI_SECRET_KEY": "key",
        }
    )
    ready.check_serve()


def test_secrets_never_in_repr() -> None:
    s = Settings.load(
        {
            "CIRELAY_API_TOKEN": "api-secret-value",
            "CIRELAY_CI_SECRET_KEY": "ci-secret-value",
            "CIRELAY_CI_SECRET_ID": "ci-id-value",
            "CIRELAY_PULSAR_TOKEN": "pulsar-secret-value",
        }
    )
    text = repr(s)
    for secret in ("api-secret-value", "ci-secret-value", "ci-id-value", "pulsar-secret-value"):
        assert secret not in text


def test_reference_lists_every_setting_without_secret_defaults() -> None:
    rows = {row[0]: row for row in reference()}
    assert "CIRELAY_DATABASE_URL" in rows
    assert rows["CIRELAY_PORT"][2] == "8080"
    assert rows["CIRELAY_API_TOKEN"][2] == ""
    assert all(row[3] for row in rows.values())


def test_callback_key_depends_on_secret() -> None:
    a = Settings.load({"CIRELAY_CALLBACK_SECRET": "a"}).callback_key
    b = Settings.load({"CIRELAY_CALLBACK_SECRET": "b"}).callback_key
    assert a != b
    assert len(a) == 32


def test_serve_requires_a_callback_secret_of_its_own() -> None:
    base = {
        "CIRELAY_API_TOKEN": "a",
        "CIRELAY_CI_SECRET_ID": "id",
        "CIRELAY_CI_SECRET_KEY": "key",
    }
    with pytest.raises(SettingsError) as info:
        Settings.load(base).check_serve()
    assert info.value.variable == "CIRELAY_CALLBACK_SECRET"
    Settings.load({**base, "CIRELAY_CALLBACK_SECRET": "s"}).check_serve()


def test_the_callback_key_does_not_follow_the_api_token() -> None:
    one = Settings.load({"CIRELAY_API_TOKEN": "old", "CIRELAY_CALLBACK_SECRET": "s"})
    two = Settings.load({"CIRELAY_API_TOKEN": "rotated", "CIRELAY_CALLBACK_SECRET": "s"})
    assert one.callback_key == two.callback_key
    unset_one = Settings.load({"CIRELAY_API_TOKEN": "old"})
    unset_two = Settings.load({"CIRELAY_API_TOKEN": "rotated"})
    assert unset_one.callback_key == unset_two.callback_key


def test_rotation_signs_with_the_first_secret_and_verifies_with_all() -> None:
    old = Settings.load({"CIRELAY_CALLBACK_SECRET": "old"})
    rotating = Settings.load({"CIRELAY_CALLBACK_SECRET": "new, old"})
    new = Settings.load({"CIRELAY_CALLBACK_SECRET": "new"})
    assert rotating.callback_key == new.callback_key
    assert rotating.callback_keys == (new.callback_key, old.callback_key)

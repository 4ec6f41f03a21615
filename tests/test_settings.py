"""Settings: embedded defaults, environment, TOML file, precedence, masking, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.settings import SettingsError, load_settings


def test_embedded_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'connector.db'}"
    assert settings.effective_objects_dir == tmp_path / "objects"
    assert settings.keys_dir == tmp_path / "keys"


def test_default_data_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings().data_dir == tmp_path / "imaging-connector"


def test_environment_overrides_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-file"}"\nport = 9001\ncountry = "NL"\n')
    monkeypatch.setenv("CONNECTOR_PORT", "9002")
    settings = load_settings(config)
    assert settings.data_dir == tmp_path / "from-file"
    assert settings.port == 9002
    assert settings.country == "NL"


def test_config_file_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('organisation = "Hôpital Exemple"\n')
    monkeypatch.setenv("CONNECTOR_CONFIG", str(config))
    assert load_settings().organisation == "Hôpital Exemple"


def test_nested_issuer_settings_from_toml(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[trusted_issuers]]\nissuer = "https://idp.example"\njwks_file = "{jwks}"\n'
        'roles_claim = "realm_access.roles"\n'
    )
    issuer = load_settings(config).trusted_issuers[0]
    assert issuer.roles_claim == "realm_access.roles"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("prot = 1\n", "unknown setting 'prot'"),
        ("port = 'eighty'\n", "setting 'port'"),
        ("port = 70000\n", "setting 'port'"),
        ("country = 'Belgium'\n", "setting 'country'"),
        ("token_leeway_seconds = 3600\n", "setting 'token_leeway_seconds'"),
        ("[[trusted_issuers]]\nissuer = 'x'\n", "trusted_issuers.0"),
        (
            "[[trusted_issuers]]\nissuer = 'x'\njwks_url = 'https://a'\nsurprise = 1\n",
            "unknown setting 'trusted_issuers.0.surprise'",
        ),
    ],
)
def test_bad_toml_values_name_the_key(tmp_path: Path, content: str, named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings(config)


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_DATABSE_URL", "sqlite://")
    with pytest.raises(SettingsError, match="CONNECTOR_DATABSE_URL"):
        load_settings()


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_AUTO_MIGRATE", "perhaps")
    with pytest.raises(SettingsError, match="setting 'auto_migrate'"):
        load_settings()


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = [\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_bad_database_url_does_not_echo_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(database_url="not a url with s3cr3t")
    assert "s3cr3t" not in str(caught.value)
    assert "database_url" in str(caught.value)


def test_config_show_masks_the_database_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CONNECTOR_DATABASE_URL", "postgresql+psycopg://connector:hunter2@db.example:5432/connector"
    )
    monkeypatch.setenv("CONNECTOR_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "postgresql+psycopg://connector:***@db.example:5432/connector" in result.output


def test_cli_reports_bad_setting_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("colour = 'blue'\n")
    result = CliRunner().invoke(app, ["--config", str(config), "config", "show"])
    assert result.exit_code == 2
    assert "unknown setting 'colour'" in result.output
    assert "Traceback" not in result.output

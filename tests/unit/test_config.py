"""The one configuration loader: every bad value stops start-up naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vre.config import ConfigError, load_config, to_env


def test_defaults_need_nothing() -> None:
    config = load_config(env={})
    assert config.portal_port == 8600
    assert config.home.is_absolute()
    assert config.url_of("tracer") == "http://127.0.0.1:8602"
    assert config.jwks == "http://127.0.0.1:8600/.well-known/jwks.json"


@pytest.mark.parametrize("key,value,words", [
    ("VRE_NO_SUCH_THING", "1", "unknown setting"),
    ("VRE_PORTAL_PORT", "http", "valid integer"),
    ("VRE_PORTAL_PORT", "70000", "less than or equal"),
    ("VRE_TRACER_URL", "ftp://x", "scheme"),
    ("VRE_TRACER_URL", "http://", "no host"),
    ("VRE_TRACER_URL", "http://host:port", "invalid port"),
    ("VRE_DATABASE_URL", "mysql://h/db", "postgresql"),
    ("VRE_SECRET_KEY", "short", "at least 32"),
    ("VRE_LOG_LEVEL", "LOUD", "pattern"),
])
def test_bad_values_name_the_key(key: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={key: value})
    assert err.value.key == key
    assert words in str(err.value)


def test_missing_secret_names_the_key() -> None:
    config = load_config(env={})
    with pytest.raises(ConfigError, match="VRE_SECRET_KEY: is required"):
        config.require("secret_key")


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "vre.toml"
    path.write_text('portal_port = 9000\ntracer_port = 9002\n')
    config = load_config(env={"VRE_CONFIG_FILE": str(path), "VRE_TRACER_PORT": "9100"})
    assert config.portal_port == 9000
    assert config.tracer_port == 9100, "the environment wins over the file"


def test_file_with_unknown_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "vre.toml"
    path.write_text('portal_prot = 9000\n')
    with pytest.raises(ConfigError, match="portal_prot: unknown setting"):
        load_config(env={"VRE_CONFIG_FILE": str(path)})


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VRE_CONFIG_FILE: file not found"):
        load_config(env={"VRE_CONFIG_FILE": str(tmp_path / "absent.toml")})
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={"VRE_CONFIG_FILE": str(tmp_path / "bad.toml")})


def test_round_trip_through_the_environment() -> None:
    config = load_config(env={"VRE_PORTAL_PORT": "9123", "VRE_DEMO_DATA": "false"})
    assert load_config(env=to_env(config)) == config

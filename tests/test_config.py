"""Server configuration: flags over environment over defaults, bad values refused, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ServerConfig, parse_config


def test_flags_override_environment_which_overrides_defaults():
    env = {"ROSETTA_PORT": "6000", "ROSETTA_DEVICE": "cpu", "ROSETTA_MAX_ROWS": "96"}
    config = parse_config(["--port", "7000"], env)
    assert (config.port, config.device, config.max_rows) == (7000, "cpu", 96)
    assert config.repository == Path("models") and config.grace_seconds == ServerConfig().grace_seconds


def test_the_cache_setting_chooses_the_engine():
    assert not parse_config([], {}).session_config().static_cache
    assert parse_config(["--cache", "static"], {}).session_config().static_cache
    assert parse_config([], {"ROSETTA_CACHE": "static"}).session_config().static_cache


@pytest.mark.parametrize("argv, env", [
    (["--port", "70000"], {}),
    (["--device", "gpu"], {}),
    (["--cache", "dynamic"], {}),
    ([], {"ROSETTA_THREADS": "many"}),
    (["--tls-cert", "cert.pem"], {}),
    (["--metrics-port", "-2"], {}),
    (["--auth-token", "a", "--auth-token-file", "b"], {}),
    (["--log-level", "verbose"], {}),
    ([], {"ROSETTA_LOG_FORMAT": "xml"}),
])
def test_bad_settings_stop_start_up_with_a_message(argv, env, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv, env)
    assert "error" in capsys.readouterr().err


def test_the_token_never_appears_in_the_printed_configuration(tmp_path):
    config = parse_config([], {"ROSETTA_AUTH_TOKEN": "hunter2"})
    assert config.token() == "hunter2"
    assert "hunter2" not in config.describe() and "auth_token=<set>" in config.describe()
    (tmp_path / "t").write_text("from-file\n")
    assert parse_config(["--auth-token-file", str(tmp_path / "t")], {}).token() == "from-file"

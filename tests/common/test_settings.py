"""Settings accept the seeds' variable names and refuse misspelled ones at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import CommonSettings, SettingsError


def test_seed_one_redis_variables_build_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_DB", "2")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss word")
    monkeypatch.setenv("TASK_TTL", "120")
    settings = CommonSettings()
    assert settings.redis_dsn == "redis://:p%40ss%20word@cache.internal:6380/2"
    assert settings.task_ttl_s == 120


def test_redis_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_URL", "rediss://managed.example:6379/0")
    assert CommonSettings().redis_dsn == "rediss://managed.example:6379/0"


def test_a_misspelled_setting_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_STORAGEE", "s3")
    with pytest.raises(SettingsError, match=r"unknown.*DARKROOM_STORAGEE \(in environment\)"):
        CommonSettings()


def test_a_misspelled_setting_in_dot_env_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("REDIS_HOST=cache.internal\nDARKROOM_LOG_LEVLE=DEBUG\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"unknown setting.*DARKROOM_LOG_LEVLE \(in \.env\)"):
        CommonSettings()


def test_dot_env_settings_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("REDIS_HOST=cache.internal\ndarkroom_log_level=DEBUG\n")
    monkeypatch.chdir(tmp_path)
    settings = CommonSettings()
    assert settings.redis_host == "cache.internal"
    assert settings.log_level == "DEBUG"


def test_another_services_setting_is_not_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    import gpu_worker.settings  # noqa: F401  (registers the worker's names)

    monkeypatch.setenv("DARKROOM_CLAIM_IDLE_MS", "5000")
    CommonSettings()


def test_files_in_the_secrets_dir_set_settings_by_their_seed_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uploader.settings

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # As Kubernetes mounts a Secret: one file per key, the value as written (a trailing newline).
    (secrets / "REDIS_PASSWORD").write_text("s3cret\n")
    (secrets / "AWS_ACCESS_KEY_ID").write_text("AKIAEXAMPLE")
    (secrets / "AWS_SECRET_ACCESS_KEY").write_text("wJalr/EXAMPLE")
    (secrets / "HF_TOKEN").write_text("hf_not_a_setting")
    monkeypatch.setenv("DARKROOM_SECRETS_DIR", str(secrets))
    settings = uploader.settings.UploaderSettings()
    assert settings.redis_dsn == "redis://:s3cret@localhost:6379/0"
    assert settings.aws_access_key_id == "AKIAEXAMPLE"
    assert settings.aws_secret_access_key == "wJalr/EXAMPLE"


def test_the_environment_wins_over_a_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "REDIS_PASSWORD").write_text("from-file")
    monkeypatch.setenv("DARKROOM_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_PASSWORD", "from-env")
    assert CommonSettings().redis_password == "from-env"


def test_a_misspelled_secret_file_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "DARKROOM_REDIS_PASWORD").write_text("s3cret")
    monkeypatch.setenv("DARKROOM_SECRETS_DIR", str(tmp_path))
    with pytest.raises(SettingsError, match=f"DARKROOM_REDIS_PASWORD \\(in {tmp_path}\\)"):
        CommonSettings()


def test_a_missing_secrets_dir_named_explicitly_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DARKROOM_SECRETS_DIR", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match="DARKROOM_SECRETS_DIR=.*absent is not a directory"):
        CommonSettings()

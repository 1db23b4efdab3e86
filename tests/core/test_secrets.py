"""Secrets at rest: generated keys in a 0600 file or TP_SECRET_KEY, MultiFernet rotation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from training_platform.core.secrets import SecretBox, SecretKeyError, key_file, rotate_keys
from training_platform.core.settings import load_settings


def test_the_key_file_is_created_once_with_mode_0600_and_opens_what_it_sealed(
    tmp_path: Path,
) -> None:
    settings = load_settings(home=tmp_path / "home")
    sealed = SecretBox.for_settings(settings).encrypt("hunter2")
    path = key_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert "hunter2" not in sealed
    # Another process (a worker) reads the same key, never a new one.
    assert SecretBox.for_settings(settings).decrypt(sealed) == "hunter2"
    assert path.read_text() == first


def test_the_key_is_random_not_derived_from_the_machine(tmp_path: Path) -> None:
    one = load_settings(home=tmp_path / "a")
    two = load_settings(home=tmp_path / "b")
    SecretBox.for_settings(one)
    SecretBox.for_settings(two)
    assert key_file(one).read_text() != key_file(two).read_text()


def test_tp_secret_key_wins_and_a_wrong_key_says_so(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = load_settings(home=tmp_path / "home", secret_key=key)
    sealed = SecretBox.for_settings(settings).encrypt("s3cret")
    assert not key_file(settings).exists()
    other = load_settings(home=tmp_path / "home", secret_key=Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        SecretBox.for_settings(other).decrypt(sealed)
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        SecretBox.for_settings(load_settings(home=tmp_path / "home", secret_key="hostname"))


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    SecretBox.for_settings(settings)
    key_file(settings).chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        SecretBox.for_settings(settings)


def test_rotation_reencrypts_under_a_new_key_and_drops_the_old_one(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    stored = [SecretBox.for_settings(settings).encrypt(f"secret-{i}") for i in range(3)]
    old_key = key_file(settings).read_text().strip()

    def reencrypt(box: SecretBox) -> int:
        stored[:] = [box.rotate(token) for token in stored]
        return len(stored)

    assert rotate_keys(settings, reencrypt) == 3
    new_keys = key_file(settings).read_text().split()
    assert new_keys != [old_key] and len(new_keys) == 1
    assert stat.S_IMODE(key_file(settings).stat().st_mode) == 0o600
    box = SecretBox.for_settings(settings)
    assert [box.decrypt(token) for token in stored] == ["secret-0", "secret-1", "secret-2"]
    with pytest.raises(SecretKeyError):
        SecretBox([old_key.encode()]).decrypt(stored[0])

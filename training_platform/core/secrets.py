"""Secrets at rest: Fernet encryption under keys that are generated, never derived.

The keys come from TP_SECRET_KEY (one or more Fernet keys, comma-separated, the first one
encrypts) or, when it is unset, from TP_HOME/secret.key: created with 0600 on first use from
os.urandom, one key per line, newest first. Every key of the list decrypts (MultiFernet), so a
rotation adds a key in front, re-encrypts every secret under it, then drops the old keys.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from training_platform.core.settings import Settings

KEY_FILE = "secret.key"


class SecretKeyError(RuntimeError):
    """The keys are missing, malformed, or do not open a stored secret."""


def _parse(lines: Iterable[str], origin: str) -> list[bytes]:
    keys = [line.strip().encode() for line in lines if line.strip()]
    if not keys:
        raise SecretKeyError(f"{origin} holds no key")
    for key in keys:
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"{origin} holds a value that is not a Fernet key (32 url-safe base64 bytes)"
            ) from None
    return keys


def key_file(settings: Settings) -> Path:
    """Where the generated keys live when TP_SECRET_KEY is not set."""
    return settings.home / KEY_FILE


def _write_keys(path: Path, keys: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("".join(key.decode() + "\n" for key in keys))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def load_keys(settings: Settings) -> list[bytes]:
    """The keys, first one current; the key file is created on first use."""
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    if configured:
        return _parse(configured.split(","), "TP_SECRET_KEY")
    path = key_file(settings)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            # O_EXCL: two processes starting at once must not write two different keys.
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(Fernet.generate_key().decode() + "\n")
    if path.stat().st_mode & 0o077:
        raise SecretKeyError(f"{path} is readable by others; chmod 600 it")
    return _parse(path.read_text().splitlines(), str(path))


class SecretBox:
    """Encrypts and decrypts text under the platform's keys."""

    def __init__(self, keys: list[bytes]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def for_settings(cls, settings: Settings) -> SecretBox:
        """The box of this installation's keys."""
        return cls(load_keys(settings))

    def encrypt(self, plain: str) -> str:
        """A token that only these keys open."""
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The text a token holds; SecretKeyError when no key opens it."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured keys "
                "(TP_SECRET_KEY or TP_HOME/secret.key changed?)"
            ) from None

    def rotate(self, token: str) -> str:
        """The same secret re-encrypted under the current (first) key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured keys"
            ) from None


def rotate_keys(settings: Settings, reencrypt: Callable[[SecretBox], int]) -> int:
    """Put a new key in front, re-encrypt every secret under it, then drop the old keys.

    `reencrypt` rewrites every stored secret with the box it is given and commits; it returns
    how many it rewrote. With TP_SECRET_KEY the keys are the operator's: the secrets are
    re-encrypted under its first key and nothing is written.
    """
    if settings.secret_key:
        return reencrypt(SecretBox(load_keys(settings)))
    path = key_file(settings)
    old = load_keys(settings)
    new = Fernet.generate_key()
    _write_keys(path, [new, *old])  # both open everything while secrets move
    count = reencrypt(SecretBox([new, *old]))
    _write_keys(path, [new])
    return count

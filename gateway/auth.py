"""The admin bearer token (where it comes from, the one way it is compared) and the secret files' writer."""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "admin-token"
#: The key that ``[logging] hash_inputs`` hashes with, kept (mode 0600) in the state directory.
PREDLOG_KEY_FILE = "predlog-hash-key"
#: BLAKE2b takes keys of up to 64 bytes; under 32 (256 bits) is too weak to hide inputs.
HASH_KEY_MIN_BYTES, HASH_KEY_MAX_BYTES = 32, 64
#: link(2) errors of file systems without hard links: the writer falls back to rename(2).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_SCHEME = b"bearer "


class SecretError(Exception):
    """A secret file (the admin token, the prediction log's hash key) cannot be used; says why."""


class TokenError(SecretError):
    """The configured token cannot be used."""


def provision_token(environ: Mapping[str, str], token_file: Path | None, state_dir: Path) -> str:
    """``TENSORGATE_ADMIN_TOKEN``, else the token file, else one generated into the state dir.

    A generated token is written to ``<state_dir>/admin-token`` with mode 0600 and its path
    (never the token) is logged once; a later start reuses that file.
    """
    token = environ.get("TENSORGATE_ADMIN_TOKEN", "").strip()
    if token:
        return _checked(token, "TENSORGATE_ADMIN_TOKEN")
    if token_file is not None:
        try:
            return _checked(token_file.read_text("utf-8").strip(), str(token_file))
        except OSError as exc:
            raise TokenError(f"cannot read the admin token file {token_file}: {exc.strerror}") from None
    generated = state_dir / TOKEN_FILE
    token, created = secret_file(generated)
    if created:
        log.warning("no admin token configured: generated one into %s (mode 0600)", generated)
    return _checked(token, str(generated))


def secret_file(path: Path) -> tuple[str, bool]:
    """The secret kept in ``path``, generated (mode 0600) if the file does not exist; and whether it was."""
    existing = _read_secret(path)
    if existing is not None:
        return existing.decode("utf-8", "replace").strip(), False
    secret = secrets.token_urlsafe(32)
    if not write_secret(path, (secret + "\n").encode("ascii")):
        return _read_text(path), False  # another process created it first: use theirs
    return secret, True


def hash_key(path: Path) -> bytes:
    """The prediction log's hashing key kept in ``path`` (32-64 bytes), generated if the file does not exist.

    A trailing newline is not part of the key. An existing file of another length is an error,
    never a silent fallback: an empty key would make the digests reversible by dictionary, and
    BLAKE2b refuses keys over 64 bytes (every hashed record would fail).
    """
    existing = _read_secret(path)
    if existing is None:
        # token_urlsafe(32): 32 random bytes (256 bits) as 43 printable characters.
        generated = secrets.token_urlsafe(32).encode("ascii")
        if write_secret(path, generated + b"\n"):
            log.info("prediction log: generated a hash key into %s (mode 0600)", path)
            return generated
        existing = _read_secret(path) or b""  # another process created it first: use theirs
    key = existing.rstrip(b"\r\n")
    if not HASH_KEY_MIN_BYTES <= len(key) <= HASH_KEY_MAX_BYTES:
        raise SecretError(
            f"the prediction-log hash key {path} holds {len(key)} bytes; it must hold "
            f"{HASH_KEY_MIN_BYTES} to {HASH_KEY_MAX_BYTES} (remove the file to have one generated: "
            "digests of hashed inputs then change)"
        )
    return key


def write_secret(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600) holding ``data``, atomically and durably; False if it exists already.

    The data goes to a temporary file in the same directory, is synced, and is then linked into
    place: a crash leaves either no file or the whole secret, never an empty or torn one (which a
    later start would take as the secret), and a link never replaces an existing file, so two
    processes starting together end up with the same secret. The directory is synced last, so
    the new name survives a power cut.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if path.exists():  # a file system without hard links: rename, checking first
                return False
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    sync_directory(directory)
    return True


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that names created or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: Path) -> bytes | None:
    """The file's bytes; None if it does not exist; SecretError if it exists but cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_text(path: Path) -> str:
    return (_read_secret(path) or b"").decode("utf-8", "replace").strip()


def _checked(token: str, source: str) -> str:
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise TokenError(f"the admin token from {source} must be 16 or more printable ASCII characters")
    return token


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` in constant time (the token is fixed when built)."""

    __slots__ = ("_expected",)

    def __init__(self, token: str) -> None:
        self._expected = _SCHEME + token.encode("ascii")

    def allows(self, authorization: bytes | None) -> bool:
        """True only for the exact header; missing, wrong scheme or wrong token are all False."""
        if authorization is None:
            return False
        # Scheme names are case-insensitive; the token is not, and is compared in constant time.
        candidate = authorization[: len(_SCHEME)].lower() + authorization[len(_SCHEME) :]
        return hmac.compare_digest(candidate, self._expected)

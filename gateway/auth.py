"""The admin bearer token: where it comes from, and the one way it is compared."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "admin-token"
_SCHEME = b"bearer "


class TokenError(Exception):
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
    if path.is_file():
        return path.read_text("utf-8").strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(secret + "\n")
    return secret, True


def _checked(token: str, source: str) -> str:
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise TokenError(f"the admin token from {source} must be 16 or more printable ASCII characters")
    return token


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` in constant time; denies all until a token is set."""

    def __init__(self, token: str | None = None) -> None:
        self._expected: bytes | None = None
        if token is not None:
            self.set_token(token)

    def set_token(self, token: str) -> None:
        """The token to accept from now on."""
        self._expected = _SCHEME + token.encode("ascii")

    def allows(self, authorization: bytes | None) -> bool:
        """True only for the exact header; missing, wrong scheme or wrong token are all False."""
        if authorization is None or self._expected is None:
            return False
        # Scheme names are case-insensitive; the token is not, and is compared in constant time.
        candidate = authorization[: len(_SCHEME)].lower() + authorization[len(_SCHEME) :]
        return hmac.compare_digest(candidate, self._expected)

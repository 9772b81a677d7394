"""Client-side encryption to a public key: the envelope format (SKELETON: being implemented).

The interface below is fixed; archiver.encryption, the config and the decrypt command use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHUNK = 64 * 1024
"""Plaintext bytes per encrypted chunk."""


@dataclass(frozen=True)
class Recipient:
    """A public key recordings are encrypted to. Holds no secret."""

    kind: str
    """``x25519`` or ``rsa``."""
    public_der: bytes
    """The key's DER SubjectPublicKeyInfo."""

    @property
    def fingerprint(self) -> str:
        """``x25519:<hex SHA-256 of public_der>`` (or ``rsa:...``): names the key in the
        manifest (``encrypted_to``) and in the envelope's header."""
        raise NotImplementedError

    @classmethod
    def from_file(cls, path: Path, *, origin: str = "--encrypt-to") -> Recipient:
        """Load a PEM public key; ``ConfigError`` (naming ``origin``, the problem and the fix)
        for a missing/unreadable file, a private key, an unsupported or weak key."""
        raise NotImplementedError


class Encryptor:
    """Encrypts one object while it streams: a fresh data key, the header first."""

    def __init__(self, recipient: Recipient, *, chunk_size: int = CHUNK) -> None:
        raise NotImplementedError

    def update(self, data: bytes) -> bytes:
        """Ciphertext ready so far for ``data`` (the header with the first call)."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """The rest of the ciphertext, the final chunk included."""
        raise NotImplementedError

    size: int
    """Ciphertext bytes produced so far."""
    sha256: str
    """Hex SHA-256 of the ciphertext produced (complete after ``finish``)."""
    plaintext_size: int
    plaintext_sha256: str

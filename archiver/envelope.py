"""Client-side encryption to a public key: the envelope format ``EXARENC1``.

A recording encrypted to a public key is stored as one envelope: a preamble naming the key and
carrying the object's data key wrapped to it, then the recording in authenticated chunks. The
worker holds only the public key (``Recipient``); the private key (``Identity``) is read by
``exotel-archiver decrypt`` alone. docs/encryption.md has this specification for people, with
the key generation and the decrypt command.

Why our own envelope on ``cryptography`` rather than age: pyrage (the maintained age binding)
encrypts and decrypts whole buffers in memory only, no streaming, and recordings can be large;
the pure-Python ``age`` package says it is not meant to be secure; age's RSA recipients are
ssh-rsa only, and its payload is ChaCha20-Poly1305 where the issue asks for AES-256-GCM. The
construction below is the same idea as age's (a fresh file key wrapped per recipient, the
payload in the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár) built only from
primitives of ``cryptography`` (X25519, HKDF-SHA256, RSA-OAEP-SHA256, AES-256-GCM).

The format (all integers big-endian)::

    preamble  = magic || u32 header_length || header
    magic     = "EXARENC1" (8 ASCII bytes)
    header    = header_length bytes of JSON, UTF-8 (ASCII only), written canonically: keys
                sorted, separators "," and ":", no whitespace; at most MAX_HEADER bytes
    chunks    = chunk_0 || chunk_1 || ... || chunk_n     (n >= 0: at least one chunk)
    chunk_i   = AES-256-GCM(data_key, nonce_i, plaintext_i, aad = preamble)
                (ciphertext followed by its 16-byte tag)
    nonce_i   = nonce_prefix (7 bytes) || u32 i || last (1 byte: 0x01 on chunk_n, else 0x00)

The header's fields::

    {"alg": "AES-256-GCM", "chunk": 65536, "nonce_prefix": B64(7 random bytes),
     "recipient": {"fingerprint": "x25519:<hex>", "kind": "x25519"},
     "version": 1, "wrap": {...}}

``B64`` is standard base64 (RFC 4648 section 4, with padding). ``chunk`` is the plaintext size of
every chunk but the last (1 to MAX_CHUNK; 65536 as written by the worker); the last chunk holds 1
to ``chunk`` plaintext bytes, except that an empty plaintext is one empty last chunk (16 bytes:
its tag). So every chunk but the last is ``chunk + 16`` bytes and the last ``17`` to
``chunk + 16`` (16 for an empty plaintext). ``recipient.fingerprint`` is the kind, a colon, and
the lower-case hex SHA-256 of the public key's DER SubjectPublicKeyInfo (``Recipient``).

``wrap`` carries the 32-byte random ``data_key``, fresh for every object:

- ``kind`` ``x25519``: ``{"epk": B64(ephemeral X25519 public key, 32 raw bytes),
  "nonce": B64(12 random bytes), "key": B64(48 bytes)}``. With ``shared`` = X25519(ephemeral
  private key, recipient public key) and ``kek`` = HKDF-SHA256(ikm = shared, salt = epk ||
  recipient public key (32 raw bytes each), info = WRAP_INFO, length 32), ``key`` =
  AES-256-GCM(kek, nonce, data_key, aad = empty).
- ``kind`` ``rsa``: ``{"key": B64(RSA-OAEP(data_key))}`` with SHA-256 as the hash and in MGF1,
  no label; the recipient's modulus is at least 3072 bits.

What a reader checks, and so what is refused (``DecryptionError``): the magic (else the object
is not an envelope); the header (shape, version 1, the algorithm, sizes); the recipient's
fingerprint against the identity's (else the message names both); the unwrapped data key; each
chunk's tag with the whole preamble as associated data, so a changed header byte fails the
first chunk if nothing before caught it; chunk i decrypted under nonce i, so reordered chunks
fail; the last flag, so a ciphertext cut at a chunk boundary fails (its last chunk was sealed
as not last) and so do bytes appended after the last chunk (it was sealed as last). A flipped
bit anywhere is refused. Plaintext is returned only for chunks whose tag verified, but a cut is
known only at the end: a reader keeps what it writes provisional until ``finish``.

Memory stays bounded: ``Encryptor`` and ``Decryptor`` keep at most one chunk between calls,
besides the piece they were given and the bytes they return for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archiver.errors import ConfigError, DecryptionError

__all__ = [
    "CHUNK",
    "MAGIC",
    "Decryptor",
    "Encryptor",
    "Identity",
    "Recipient",
    "decrypt_file",
    "encrypt_file",
    "encrypted_size",
]

CHUNK = 64 * 1024
"""Plaintext bytes per encrypted chunk."""

MAGIC = b"EXARENC1"
"""The first 8 bytes of every envelope."""
VERSION = 1
ALG = "AES-256-GCM"
TAG = 16
"""Bytes of the GCM tag at the end of every chunk."""
MAX_CHUNK = 1 << 20
"""The largest ``chunk`` a reader accepts (bounds its memory)."""
MAX_HEADER = 64 * 1024
"""The longest header a reader accepts."""
MIN_RSA_BITS = 3072
WRAP_INFO = b"exotel-archiver EXARENC1 x25519 data key"
"""HKDF ``info`` of the X25519 key wrap."""
READ = 1 << 20
"""Bytes ``encrypt_file``/``decrypt_file`` read at a time."""
_NONCE_PREFIX = 7
_UNSAFE = re.compile(r"[^A-Za-z0-9:._-]")
_MAX_CHUNKS = 1 << 32
_KEY_FILE_LIMIT = 1 << 20
_PUBKEY_HELP = (
    "give a PEM public key: X25519 (openssl genpkey -algorithm X25519 -out private.pem; "
    "openssl pkey -in private.pem -pubout -out public.pem) or RSA of 3072 bits or more "
    "(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out private.pem; "
    "openssl pkey -in private.pem -pubout -out public.pem)"
)
_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, *, length: int | None = None) -> bytes:
    """Strict standard base64 (``binascii.Error`` on anything else or a wrong length)."""
    if not isinstance(value, str):
        raise binascii.Error("not a string")
    raw = base64.b64decode(value.encode("ascii", "strict"), validate=True)
    if length is not None and len(raw) != length:
        raise binascii.Error("wrong length")
    return raw


def _shown(value: Any) -> str:
    """A value from an unverified header, as a message may show it: short, escaped."""
    if isinstance(value, str | int | float | bool) or value is None:
        return repr(value)[:40]
    return f"a JSON {type(value).__name__}"


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", counter, last)


def _read_key_file(path: Path, origin: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_KEY_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise ConfigError(f"{origin}: {path} does not exist; {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{origin}: {path} is a directory, not a key file; {what}") from None
    except OSError as exc:
        raise ConfigError(
            f"{origin}: {path} cannot be read ({exc.strerror or type(exc).__name__}); "
            f"fix its permissions or give another file"
        ) from None
    if len(data) > _KEY_FILE_LIMIT:
        raise ConfigError(f"{origin}: {path} is too large to be a key file; {what}")
    return data


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
        return f"{self.kind}:{hashlib.sha256(self.public_der).hexdigest()}"

    @classmethod
    def from_file(cls, path: Path, *, origin: str = "--encrypt-to") -> Recipient:
        """Load a PEM public key; ``ConfigError`` (naming ``origin``, the problem and the fix)
        for a missing/unreadable file, a private key, an unsupported or weak key.

        A private key is refused without being parsed: the worker must never hold one. No
        message quotes the file's content."""
        data = _read_key_file(path, origin, _PUBKEY_HELP)
        if b"PRIVATE KEY" in data:
            raise ConfigError(
                f"{origin}: {path} holds a PRIVATE key; the worker must only get the public key "
                f"(write it with: openssl pkey -in {path} -pubout -out public.pem, give that "
                "file, and keep the private key off this machine: only exotel-archiver decrypt "
                "needs it)"
            )
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"{origin}: {path} is not a PEM public key; {_PUBKEY_HELP}") from None
        return cls._of(key, f"{origin}: {path}")

    @classmethod
    def _of(cls, key: object, where: str) -> Recipient:
        """The recipient of a loaded public key, refusing what cannot be encrypted to."""
        if isinstance(key, x25519.X25519PublicKey):
            kind = "x25519"
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise ConfigError(
                    f"{where} is an RSA key of {key.key_size} bits, too weak (at least "
                    f"{MIN_RSA_BITS}); {_PUBKEY_HELP}"
                )
            kind = "rsa"
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise ConfigError(
                f"{where} is a signing key (Ed25519/Ed448) that nothing can be encrypted to; "
                f"{_PUBKEY_HELP}"
            )
        else:
            raise ConfigError(
                f"{where} is a {type(key).__name__.removeprefix('_')} key, not supported; "
                f"{_PUBKEY_HELP}"
            )
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(kind=kind, public_der=der)

    def _wrap(self, data_key: bytes) -> dict[str, str]:
        """The header's ``wrap``: ``data_key`` encrypted to this key."""
        key = serialization.load_der_public_key(self.public_der)
        if isinstance(key, x25519.X25519PublicKey):
            ephemeral = x25519.X25519PrivateKey.generate()
            epk = ephemeral.public_key().public_bytes_raw()
            kek = _kek(ephemeral.exchange(key), epk, key.public_bytes_raw())
            nonce = os.urandom(12)
            wrapped = AESGCM(kek).encrypt(nonce, data_key, None)
            return {"epk": _b64(epk), "key": _b64(wrapped), "nonce": _b64(nonce)}
        if isinstance(key, rsa.RSAPublicKey):
            return {"key": _b64(key.encrypt(data_key, _OAEP))}
        raise AssertionError(f"unexpected recipient key {type(key).__name__}")  # pragma: no cover


def _kek(shared: bytes, epk: bytes, recipient_raw: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient_raw, info=WRAP_INFO)
    return hkdf.derive(shared)


def _preamble(header: dict[str, Any]) -> bytes:
    body = _canonical(header)
    return MAGIC + struct.pack(">I", len(body)) + body


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}, not {chunk_size}")


class _Tally:
    """The sizes and SHA-256s of an envelope's two sides, kept as its bytes pass: ``size`` and
    ``sha256`` of the ciphertext (what is stored, what ``verify`` checks), ``plaintext_size``
    and ``plaintext_sha256`` of the recording (what ``decrypt`` checks)."""

    def __init__(self) -> None:
        self._size = 0
        self._hash = hashlib.sha256()
        self._plain_size = 0
        self._plain_hash = hashlib.sha256()

    @property
    def size(self) -> int:
        """Ciphertext bytes so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the ciphertext so far (the whole envelope's after ``finish``)."""
        return self._hash.hexdigest()

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes so far (a decryptor's: of verified chunks only)."""
        return self._plain_size

    @property
    def plaintext_sha256(self) -> str:
        """Hex SHA-256 of the plaintext so far."""
        return self._plain_hash.hexdigest()


class Encryptor(_Tally):
    """Encrypts one object while it streams: a fresh data key, the header first.

    Feed the plaintext to ``update`` in pieces of any size, then call ``finish`` once; the
    concatenation of what they return is the envelope. Between calls it keeps at most one chunk
    of plaintext. ``size``/``sha256`` are the ciphertext's (what is stored, and what ``verify``
    checks), ``plaintext_size``/``plaintext_sha256`` the recording's own."""

    def __init__(self, recipient: Recipient, *, chunk_size: int = CHUNK) -> None:
        _check_chunk_size(chunk_size)
        self.recipient = recipient
        self._chunk = chunk_size
        data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(data_key)
        self._prefix = os.urandom(_NONCE_PREFIX)
        self._preamble = _preamble(
            {
                "alg": ALG,
                "chunk": chunk_size,
                "nonce_prefix": _b64(self._prefix),
                "recipient": {"fingerprint": recipient.fingerprint, "kind": recipient.kind},
                "version": VERSION,
                "wrap": recipient._wrap(data_key),
            }
        )
        del data_key
        self._counter = 0
        self._pending = bytearray()
        self._started = False
        self._finished = False
        super().__init__()

    @property
    def header_size(self) -> int:
        """Bytes of the preamble (magic, length, header) before the first chunk."""
        return len(self._preamble)

    def _seal(self, head: bytes, chunks: list[bytes | bytearray | memoryview], last: bool) -> bytes:
        """``head`` then each of ``chunks`` sealed (the final one flagged ``last``), written into
        one buffer: one allocation per call, not one per chunk (many small blocks, freed in
        another order than taken, fragment the heap and raise the peak RSS)."""
        if self._counter + len(chunks) > _MAX_CHUNKS:
            raise ValueError("too many chunks for one envelope")
        out = bytearray(len(head) + sum(len(c) + TAG for c in chunks))
        view = memoryview(out)
        view[: len(head)] = head
        at = len(head)
        for n, chunk in enumerate(chunks, start=1):
            nonce = _nonce(self._prefix, self._counter, last and n == len(chunks))
            self._aead.encrypt_into(nonce, chunk, self._preamble, view[at : at + len(chunk) + TAG])
            self._counter += 1
            at += len(chunk) + TAG
        self._size += len(out)
        self._hash.update(out)
        return bytes(out)

    def update(self, data: bytes) -> bytes:
        """Ciphertext ready so far for ``data`` (the header with the first call)."""
        if self._finished:
            raise ValueError("update after finish")
        head = b""
        if not self._started:
            self._started = True
            head = self._preamble
        view = memoryview(data)
        n = len(view)
        self._plain_size += n
        self._plain_hash.update(view)
        pos = min(self._chunk - len(self._pending), n)
        self._pending += view[:pos]
        chunks: list[bytes | bytearray | memoryview] = []
        if pos < n:  # the pending chunk is full and more follows: it is not the last
            chunks.append(self._pending)
            while n - pos > self._chunk:
                chunks.append(view[pos : pos + self._chunk])
                pos += self._chunk
        out = self._seal(head, chunks, last=False)
        if pos < n:
            self._pending = bytearray(view[pos:])
        return out

    def finish(self) -> bytes:
        """The rest of the ciphertext, the final chunk included."""
        if self._finished:
            raise ValueError("finish called twice")
        head = b""
        if not self._started:
            self._started = True
            head = self._preamble
        self._finished = True
        last = self._seal(head, [self._pending], last=True)
        self._pending = bytearray()
        return last


def encrypted_size(plaintext_size: int, recipient: Recipient, *, chunk_size: int = CHUNK) -> int:
    """The envelope's size for ``plaintext_size`` bytes, known before encrypting (the header's
    length depends only on the recipient and ``chunk_size``)."""
    _check_chunk_size(chunk_size)
    chunks = max(1, -(-plaintext_size // chunk_size))
    return Encryptor(recipient, chunk_size=chunk_size).header_size + plaintext_size + chunks * TAG


def encrypt_file(
    src: IO[bytes], dst: IO[bytes], recipient: Recipient, *, chunk_size: int = CHUNK
) -> Encryptor:
    """Encrypt ``src`` (read from where it is, 1 MiB at a time, to its end) into ``dst``; the
    finished ``Encryptor`` tells the sizes and hashes. Neither file is closed or flushed."""
    enc = Encryptor(recipient, chunk_size=chunk_size)
    while piece := src.read(READ):
        dst.write(enc.update(piece))
    dst.write(enc.finish())
    return enc


class Identity:
    """A private key, to decrypt with (``exotel-archiver decrypt`` only; never the worker).

    It never appears in a message, a log or a repr."""

    def __init__(self, key: x25519.X25519PrivateKey | rsa.RSAPrivateKey, recipient: Recipient):
        self._key = key
        self.recipient = recipient
        """The public half: its ``fingerprint`` is what objects encrypted to it name."""

    def __repr__(self) -> str:
        return f"Identity({self.recipient.fingerprint})"

    @classmethod
    def from_file(
        cls, path: Path, passphrase: bytes | None = None, *, origin: str = "--identity"
    ) -> Identity:
        """Load a PEM private key (PKCS#8 or traditional RSA), decrypting it with ``passphrase``
        when it is encrypted; ``ConfigError`` naming ``origin``, the path and the fix for a
        missing file, a public key, a wrong or missing passphrase, an unsupported key."""
        help_ = (
            "give the PEM private key whose public half the worker encrypts to (the private.pem "
            "of: openssl genpkey -algorithm X25519 -out private.pem)"
        )
        data = _read_key_file(path, origin, help_)
        if b"PRIVATE KEY" not in data and b"PUBLIC KEY" in data:
            raise ConfigError(
                f"{origin}: {path} is a public key; decrypting needs the private key; {help_}"
            )
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError:
            if passphrase is None:
                raise ConfigError(
                    f"{origin}: {path} is encrypted with a passphrase; give it with "
                    "--passphrase-file FILE"
                ) from None
            raise ConfigError(
                f"{origin}: {path} is not encrypted, but a passphrase was given; "
                "drop --passphrase-file"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            if passphrase is not None:
                raise ConfigError(
                    f"{origin}: {path} cannot be read: the passphrase is wrong or it is not a "
                    "PEM private key; check --passphrase-file"
                ) from None
            raise ConfigError(f"{origin}: {path} is not a PEM private key; {help_}") from None
        if not isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey):
            name = type(key).__name__.removeprefix("_")
            raise ConfigError(f"{origin}: {path} is a {name} key, not X25519 or RSA; {help_}")
        return cls(key, Recipient._of(key.public_key(), f"{origin}: {path}"))

    def _unwrap(self, wrap: Any) -> bytes:
        """The data key from the header's ``wrap`` (``DecryptionError`` when it will not open)."""
        try:
            if not isinstance(wrap, dict):
                raise binascii.Error("wrap is not an object")
            if isinstance(self._key, x25519.X25519PrivateKey):
                if set(wrap) != {"epk", "key", "nonce"}:
                    raise binascii.Error("wrong fields")
                epk = _unb64(wrap["epk"], length=32)
                nonce = _unb64(wrap["nonce"], length=12)
                wrapped = _unb64(wrap["key"], length=48)
                own = self._key.public_key().public_bytes_raw()
                shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(epk))
                data_key = AESGCM(_kek(shared, epk, own)).decrypt(nonce, wrapped, None)
            else:
                if set(wrap) != {"key"}:
                    raise binascii.Error("wrong fields")
                wrapped = _unb64(
                    wrap["key"], length=self._key.key_size // 8 + bool(self._key.key_size % 8)
                )
                data_key = self._key.decrypt(wrapped, _OAEP)
        except (binascii.Error, ValueError, InvalidTag, UnicodeError) as exc:
            raise DecryptionError(
                "the envelope's data key does not unwrap with this identity: its header was "
                f"altered ({type(exc).__name__})"
            ) from None
        if len(data_key) != 32:
            raise DecryptionError("the envelope's data key is not 32 bytes: its header was altered")
        return data_key


class Decryptor(_Tally):
    """Decrypts one envelope while it streams, checking every chunk.

    ``update`` returns the plaintext of the chunks whose tag verified; only ``finish`` knows the
    envelope was whole (not cut, nothing appended): until then, treat the plaintext as
    provisional. Every refusal is a ``DecryptionError`` saying what is wrong; after one, the
    decryptor refuses everything. ``size``/``sha256`` are of the ciphertext given,
    ``plaintext_size``/``plaintext_sha256`` of the plaintext returned."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._head = bytearray()
        self._preamble: bytes | None = None
        self._aead: AESGCM | None = None
        self._prefix = b""
        self._chunk = 0
        self._counter = 0
        self._pending = bytearray()
        self._broken: DecryptionError | None = None
        self._finished = False
        self.encrypted_to: str | None = None
        """The fingerprint the envelope's header names (once the header is read)."""
        super().__init__()

    def _fail(self, message: str) -> DecryptionError:
        self._broken = DecryptionError(message)
        return self._broken

    def _read_header(self, body: bytes) -> None:
        try:
            header = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # nested [[[[...: hostile
            raise self._fail("the envelope's header is not JSON: it was altered") from None
        if not isinstance(header, dict):
            raise self._fail("the envelope's header is not a JSON object: it was altered")
        if header.get("version") != VERSION or header.get("alg") != ALG:
            raise self._fail(
                f"the envelope is version {_shown(header.get('version'))} / "
                f"{_shown(header.get('alg'))}; "
                f"this reads version {VERSION} / {ALG} (altered, or a newer exotel-archiver)"
            )
        recipient = header.get("recipient")
        chunk = header.get("chunk")
        if (
            set(header) != {"alg", "chunk", "nonce_prefix", "recipient", "version", "wrap"}
            or not isinstance(recipient, dict)
            or set(recipient) != {"fingerprint", "kind"}
            or not isinstance(recipient["fingerprint"], str)
            or type(chunk) is not int
            or not 1 <= chunk <= MAX_CHUNK
        ):
            raise self._fail("the envelope's header is not of the EXARENC1 shape: it was altered")
        try:
            self._prefix = _unb64(header["nonce_prefix"], length=_NONCE_PREFIX)
        except (binascii.Error, UnicodeError):
            raise self._fail("the envelope's nonce prefix is malformed: it was altered") from None
        # The header is anyone's text until its chunks verify: only safe characters are shown.
        self.encrypted_to = _UNSAFE.sub("?", recipient["fingerprint"][:200])
        own = self._identity.recipient.fingerprint
        if self.encrypted_to != own:
            raise self._fail(
                f"it is encrypted to {self.encrypted_to}, not to this identity ({own})"
            )
        try:
            self._aead = AESGCM(self._identity._unwrap(header["wrap"]))
        except DecryptionError as exc:
            raise self._fail(str(exc)) from None
        self._chunk = chunk + TAG

    def _take_header(self, view: memoryview) -> int:
        """Bytes of ``view`` that went into the preamble (the preamble read once complete)."""
        need = len(MAGIC) + 4
        if len(self._head) < need:
            take = min(need - len(self._head), len(view))
            self._head += view[:take]
            got = bytes(self._head[: len(MAGIC)])
            if not MAGIC.startswith(got[: len(MAGIC)]):
                raise self._fail(
                    "it is not an exotel-archiver envelope (no EXARENC1 magic): it was not stored "
                    "encrypted, or its first bytes were altered"
                )
            if len(self._head) < need:
                return take
            view = view[take:]
        else:
            take = 0
        length = int.from_bytes(self._head[len(MAGIC) : need], "big")
        if length > MAX_HEADER or length < 2:
            raise self._fail(
                f"the envelope's header length ({length}) is impossible: it was altered"
            )
        more = min(need + length - len(self._head), len(view))
        self._head += view[:more]
        if len(self._head) == need + length:
            self._preamble = bytes(self._head)
            self._head = bytearray()
            self._read_header(self._preamble[need:])
        return take + more

    def _open(self, sealed: bytes | bytearray | memoryview, last: bool) -> bytes:
        assert self._aead is not None and self._preamble is not None
        index = self._counter
        if index >= _MAX_CHUNKS:
            raise self._fail("the envelope has more chunks than the format allows: it was altered")
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index, last), sealed, self._preamble)
        except InvalidTag:
            plain = None
        if plain is None:
            try:  # what went wrong, for the message: the right chunk with the other flag?
                self._aead.decrypt(_nonce(self._prefix, index, not last), sealed, self._preamble)
            except InvalidTag:
                raise self._fail(
                    f"chunk {index} (at byte {len(self._preamble) + index * self._chunk}) fails "
                    "authentication: the ciphertext was altered, reordered or cut"
                ) from None
            if last:
                raise self._fail(
                    f"it ends after chunk {index}, which is not its last: the ciphertext was cut"
                )
            raise self._fail(
                f"bytes follow its last chunk ({index}): something was appended to the ciphertext"
            )
        self._counter += 1
        self._plain_size += len(plain)
        self._plain_hash.update(plain)
        return plain

    def update(self, data: bytes) -> bytes:
        """Plaintext of the chunks completed by ``data`` whose tag verified."""
        if self._broken is not None:
            raise self._broken
        if self._finished:
            raise ValueError("update after finish")
        view = memoryview(data)
        self._size += len(view)
        self._hash.update(view)
        if self._preamble is None:
            view = view[self._take_header(view) :]
            if self._preamble is None:
                return b""
        n = len(view)
        parts: list[bytes] = []
        pos = min(self._chunk - len(self._pending), n)
        self._pending += view[:pos]
        if pos < n:  # the pending chunk is full and more follows: it is not the last
            parts.append(self._open(self._pending, last=False))
            while n - pos > self._chunk:
                parts.append(self._open(view[pos : pos + self._chunk], last=False))
                pos += self._chunk
            self._pending = bytearray(view[pos:])
        return b"".join(parts)

    def finish(self) -> bytes:
        """The last chunk's plaintext; ``DecryptionError`` if the envelope is cut or extended."""
        if self._broken is not None:
            raise self._broken
        if self._finished:
            raise ValueError("finish called twice")
        if self._preamble is None:
            if not self._head:
                raise self._fail("it is empty, not an exotel-archiver envelope")
            raise self._fail("it ends inside the envelope's header: the ciphertext was cut")
        if len(self._pending) < TAG:
            where = (
                "right after the header"
                if self._counter == 0
                else f"after chunk {self._counter - 1}"
            )
            raise self._fail(f"it ends {where}, without its last chunk: the ciphertext was cut")
        last = self._open(self._pending, last=True)
        self._pending = bytearray()
        self._finished = True
        return last


def decrypt_file(src: IO[bytes], dst: IO[bytes], identity: Identity) -> Decryptor:
    """Decrypt the envelope ``src`` (read from where it is, 1 MiB at a time) into ``dst``; the
    finished ``Decryptor`` tells the sizes and hashes. ``DecryptionError`` when it is refused:
    ``dst`` then holds unverified plaintext the caller must discard."""
    dec = Decryptor(identity)
    while piece := src.read(READ):
        dst.write(dec.update(piece))
    dst.write(dec.finish())
    return dec

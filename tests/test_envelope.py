"""The EXARENC1 envelope (archiver.envelope): round trips, the format as specified, and every
way a ciphertext can be altered, cut or extended refused."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from archiver.envelope import (
    CHUNK,
    Decryptor,
    Encryptor,
    Identity,
    Recipient,
    decrypt_file,
    encrypt_file,
    encrypted_size,
)
from archiver.errors import ArchiverError, ConfigError, DecryptionError


@dataclass(frozen=True)
class Keys:
    kind: str
    private: Path
    public: Path

    @property
    def identity(self) -> Identity:
        return Identity.from_file(self.private, None)

    @property
    def recipient(self) -> Recipient:
        return Recipient.from_file(self.public)


def _write_pair(folder: Path, name: str, key: x25519.X25519PrivateKey | rsa.RSAPrivateKey) -> Keys:
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Keys("x25519" if isinstance(key, x25519.X25519PrivateKey) else "rsa", private, public)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def x_keys(keydir: Path) -> Keys:
    return _write_pair(keydir, "x25519", x25519.X25519PrivateKey.generate())


@pytest.fixture(scope="module")
def rsa_keys(keydir: Path) -> Keys:
    return _write_pair(keydir, "rsa", rsa.generate_private_key(65537, 3072))


@pytest.fixture(scope="module", params=["x25519", "rsa"])
def keys(request: pytest.FixtureRequest, x_keys: Keys, rsa_keys: Keys) -> Keys:
    return x_keys if request.param == "x25519" else rsa_keys


def encrypt(
    plain: bytes, recipient: Recipient, *, chunk_size: int = CHUNK, piece: int = 0
) -> bytes:
    """The envelope of ``plain``, fed in ``piece``-byte pieces (0: random sizes)."""
    enc = Encryptor(recipient, chunk_size=chunk_size)
    out = bytearray()
    rng = random.Random(len(plain))
    pos = 0
    while pos < len(plain):
        n = piece or rng.randint(1, 3 * chunk_size)
        out += enc.update(plain[pos : pos + n])
        pos += n
    out += enc.finish()
    assert enc.size == len(out)
    assert enc.sha256 == hashlib.sha256(out).hexdigest()
    assert enc.plaintext_size == len(plain)
    assert enc.plaintext_sha256 == hashlib.sha256(plain).hexdigest()
    return bytes(out)


def decrypt(data: bytes, identity: Identity, *, piece: int = 0) -> bytes:
    dec = Decryptor(identity)
    out = bytearray()
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        n = piece or rng.randint(1, 200_000)
        out += dec.update(data[pos : pos + n])
        pos += n
    out += dec.finish()
    assert dec.size == len(data)
    assert dec.sha256 == hashlib.sha256(data).hexdigest()
    assert dec.plaintext_size == len(out)
    assert dec.plaintext_sha256 == hashlib.sha256(out).hexdigest()
    return bytes(out)


def refused(data: bytes, identity: Identity, *, piece: int = 0) -> DecryptionError:
    with pytest.raises(DecryptionError) as caught:
        decrypt(data, identity, piece=piece)
    return caught.value


def preamble_size(data: bytes) -> int:
    return 12 + int.from_bytes(data[8:12], "big")


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5], ids=lambda s: f"{s}B"
)
def test_round_trip_is_byte_exact(keys: Keys, size: int) -> None:
    plain = os.urandom(size)
    recipient = keys.recipient
    data = encrypt(plain, recipient)
    assert data.startswith(b"EXARENC1")
    assert len(data) == encrypted_size(size, recipient)
    for piece in (0, 1 if size < 5000 else 4093, len(data) or 1):
        assert decrypt(data, keys.identity, piece=piece) == plain


@pytest.mark.parametrize("piece", [1, 7, 64, 65, 1000])
def test_any_piece_size_gives_the_same_chunks(x_keys: Keys, piece: int) -> None:
    plain = os.urandom(1000)
    data = encrypt(plain, x_keys.recipient, chunk_size=64, piece=piece)
    # 16 chunks (15 full, the last 40 bytes) behind the preamble, each with its tag
    assert len(data) == preamble_size(data) + 1000 + 16 * 16
    assert decrypt(data, x_keys.identity, piece=piece) == plain


def test_every_object_gets_a_fresh_data_key_and_nonce(x_keys: Keys) -> None:
    plain = b"same recording" * 100
    a, b = encrypt(plain, x_keys.recipient), encrypt(plain, x_keys.recipient)
    assert a != b
    ha, hb = (json.loads(d[12 : preamble_size(d)]) for d in (a, b))
    assert ha["nonce_prefix"] != hb["nonce_prefix"]
    assert ha["wrap"]["epk"] != hb["wrap"]["epk"]
    assert a[preamble_size(a) :] != b[preamble_size(b) :]


def test_files_round_trip_and_20_mib_stays_within_bounded_memory(
    keys: Keys, tmp_path: Path
) -> None:
    size = 20 * 1024 * 1024 + 3
    src = tmp_path / "recording.wav"
    with open(src, "wb") as f:
        for _ in range(20):
            f.write(os.urandom(1024 * 1024))
        f.write(b"end")
    enc_path, out_path = tmp_path / "recording.enc", tmp_path / "restored.wav"
    tracemalloc.start()
    try:
        with open(src, "rb") as s, open(enc_path, "wb") as d:
            enc = encrypt_file(s, d, keys.recipient)
        enc_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with open(enc_path, "rb") as s, open(out_path, "wb") as d:
            dec = decrypt_file(s, d, keys.identity)
        dec_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a 1 MiB read, its ciphertext, one chunk pending: never the recording
    assert enc_peak < 4 * 1024 * 1024, enc_peak
    assert dec_peak < 4 * 1024 * 1024, dec_peak
    assert enc.plaintext_size == size == dec.plaintext_size
    assert enc.size == enc_path.stat().st_size == encrypted_size(size, keys.recipient)
    assert enc.sha256 == dec.sha256 == hashlib.sha256(enc_path.read_bytes()).hexdigest()
    plain_hash = hashlib.sha256(src.read_bytes()).hexdigest()
    assert enc.plaintext_sha256 == dec.plaintext_sha256 == plain_hash
    assert hashlib.sha256(out_path.read_bytes()).hexdigest() == plain_hash


# --- the format, as docs/encryption.md specifies it -----------------------------------------


def spec_decrypt(data: bytes, private: x25519.X25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A decryptor written from the specification alone (no archiver code)."""
    assert data[:8] == b"EXARENC1"
    length = int.from_bytes(data[8:12], "big")
    preamble = data[: 12 + length]
    header = json.loads(preamble[12:])
    assert preamble[12:] == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert header["version"] == 1 and header["alg"] == "AES-256-GCM"
    wrap = header["wrap"]
    if header["recipient"]["kind"] == "x25519":
        assert isinstance(private, x25519.X25519PrivateKey)
        epk = base64.b64decode(wrap["epk"])
        own = private.public_key().public_bytes_raw()
        kek = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=epk + own,
            info=b"exotel-archiver EXARENC1 x25519 data key",
        ).derive(private.exchange(x25519.X25519PublicKey.from_public_bytes(epk)))
        data_key = AESGCM(kek).decrypt(
            base64.b64decode(wrap["nonce"]), base64.b64decode(wrap["key"]), None
        )
    else:
        assert isinstance(private, rsa.RSAPrivateKey)
        data_key = private.decrypt(
            base64.b64decode(wrap["key"]),
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
    prefix = base64.b64decode(header["nonce_prefix"])
    assert len(prefix) == 7
    size = header["chunk"] + 16
    body = data[len(preamble) :]
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    out = b""
    for i, sealed in enumerate(pieces):
        last = i == len(pieces) - 1
        nonce = prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
        out += AESGCM(data_key).decrypt(nonce, sealed, preamble)
    return out


def test_the_format_is_what_the_specification_says(keys: Keys) -> None:
    private = serialization.load_pem_private_key(keys.private.read_bytes(), None)
    assert isinstance(private, x25519.X25519PrivateKey | rsa.RSAPrivateKey)
    recipient = keys.recipient
    for size, chunk in ((0, 64), (1, 64), (64, 64), (65, 64), (5000, 1000), (70000, CHUNK)):
        plain = os.urandom(size)
        data = encrypt(plain, recipient, chunk_size=chunk)
        assert spec_decrypt(data, private) == plain
        header = json.loads(data[12 : preamble_size(data)])
        assert header["chunk"] == chunk
        assert header["recipient"] == {"fingerprint": recipient.fingerprint, "kind": keys.kind}
        assert set(header["wrap"]) == (
            {"epk", "key", "nonce"} if keys.kind == "x25519" else {"key"}
        )


def test_fingerprint_is_the_kind_and_the_sha256_of_the_public_der(keys: Keys) -> None:
    der = serialization.load_pem_public_key(keys.public.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    recipient = keys.recipient
    assert recipient.kind == keys.kind and recipient.public_der == der
    assert recipient.fingerprint == f"{keys.kind}:{hashlib.sha256(der).hexdigest()}"
    assert keys.identity.recipient == recipient
    assert keys.private.read_text() not in repr(keys.identity)


# --- refused: altered, cut, extended, reordered, another key --------------------------------


def test_every_flipped_byte_of_a_two_chunk_envelope_is_refused(keys: Keys) -> None:
    identity = keys.identity
    data = encrypt(os.urandom(100), keys.recipient, chunk_size=64)
    assert len(data) == preamble_size(data) + 64 + 16 + 36 + 16
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= mask
            refused(bytes(bad), identity)


def test_sampled_flipped_bytes_of_a_large_envelope_are_refused(keys: Keys) -> None:
    identity = keys.identity
    data = encrypt(os.urandom(3 * 1024 * 1024 + 77), keys.recipient)
    rng = random.Random(19)
    head = preamble_size(data)
    positions = [0, 8, 11, head - 1, head, head + CHUNK + 15, len(data) - 1]
    positions += [rng.randrange(len(data)) for _ in range(40)]
    for i in positions:
        bad = bytearray(data)
        bad[i] ^= 1 << rng.randrange(8)
        refused(bytes(bad), identity)


def test_a_cut_anywhere_is_refused(keys: Keys) -> None:
    identity = keys.identity
    data = encrypt(os.urandom(300), keys.recipient, chunk_size=64)
    head = preamble_size(data)
    for cut in range(len(data)):
        refused(data[:cut], identity)
    # at each chunk boundary, the message says it was cut
    for n in range(1, 5):
        error = refused(data[: head + n * 80], identity)
        assert "cut" in str(error), error
    assert "cut" in str(refused(data[:head], identity))


def test_a_large_envelope_cut_at_every_chunk_boundary_is_refused(x_keys: Keys) -> None:
    identity = x_keys.identity
    data = encrypt(os.urandom(20 * CHUNK + 9), x_keys.recipient)
    head = preamble_size(data)
    for n in range(21):
        assert "cut" in str(refused(data[: head + n * (CHUNK + 16)], identity))


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(16), os.urandom(17), os.urandom(80)])
def test_appended_bytes_are_refused(keys: Keys, extra: bytes) -> None:
    data = encrypt(os.urandom(100), keys.recipient, chunk_size=64)
    error = refused(data + extra, keys.identity)
    assert "appended" in str(error) or "altered" in str(error), error


def test_a_whole_chunk_appended_from_the_same_envelope_is_refused(keys: Keys) -> None:
    data = encrypt(os.urandom(200), keys.recipient, chunk_size=64)
    head = preamble_size(data)
    first = data[head : head + 80]
    refused(data + first, keys.identity)
    refused(data + data[-(200 - 192 + 16) :], keys.identity)  # the last chunk twice


def test_swapped_or_dropped_chunks_are_refused(keys: Keys) -> None:
    identity = keys.identity
    data = encrypt(os.urandom(64 * 4 + 10), keys.recipient, chunk_size=64)
    head = preamble_size(data)
    chunks = [data[head + i * 80 : head + (i + 1) * 80] for i in range(5)]
    assert b"".join(chunks) == data[head:]
    swapped = data[:head] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    assert "chunk 0" in str(refused(swapped, identity))
    refused(data[:head] + b"".join(chunks[:2] + chunks[3:]), identity)  # one dropped
    refused(data[:head] + chunks[0] + chunks[0] + b"".join(chunks[2:]), identity)  # repeated


def test_a_chunk_from_another_envelope_is_refused(x_keys: Keys) -> None:
    plain = os.urandom(200)
    a = encrypt(plain, x_keys.recipient, chunk_size=64)
    b = encrypt(plain, x_keys.recipient, chunk_size=64)
    head = preamble_size(a)
    refused(a[:head] + b[head:], x_keys.identity)  # same key, same plaintext, other data key


def test_another_identity_is_refused_naming_both_keys(
    keys: Keys, x_keys: Keys, rsa_keys: Keys, tmp_path: Path
) -> None:
    other = _write_pair(tmp_path, "other", x25519.X25519PrivateKey.generate())
    data = encrypt(b"hello", keys.recipient)
    for wrong in (other, rsa_keys if keys.kind == "x25519" else x_keys):
        error = refused(data, wrong.identity)
        assert keys.recipient.fingerprint in str(error)
        assert wrong.identity.recipient.fingerprint in str(error)
        assert not error.retryable and isinstance(error, ArchiverError)


@pytest.mark.parametrize(
    "data",
    [b"", b"ID3\x04\x00" + b"\x00" * 200, b"RIFF" + b"\x00" * 100, b"EXARENC", b"EXARENC2xxxx"],
    ids=["empty", "mp3", "wav", "short-magic", "other-version"],
)
def test_what_is_not_an_envelope_is_refused(x_keys: Keys, data: bytes) -> None:
    error = refused(data, x_keys.identity)
    message = str(error)
    assert "envelope" in message or "cut" in message, message


def test_after_a_refusal_the_decryptor_stays_refused(x_keys: Keys) -> None:
    data = bytearray(encrypt(os.urandom(300), x_keys.recipient, chunk_size=64))
    data[preamble_size(data) + 3] ^= 1
    dec = Decryptor(x_keys.identity)
    with pytest.raises(DecryptionError):
        dec.update(bytes(data))
    with pytest.raises(DecryptionError):
        dec.update(b"")
    with pytest.raises(DecryptionError):
        dec.finish()


# --- keys: what is refused, and how it is said ----------------------------------------------


def test_a_private_key_given_as_recipient_is_refused_without_echoing_it(keys: Keys) -> None:
    with pytest.raises(ConfigError) as caught:
        Recipient.from_file(keys.private, origin="ARCHIVER_ENCRYPT_TO")
    message = str(caught.value)
    assert message.startswith("ARCHIVER_ENCRYPT_TO: ")
    assert str(keys.private) in message
    assert "PRIVATE key" in message and "public key" in message and "openssl pkey" in message
    body = b"".join(keys.private.read_bytes().splitlines()[1:-1]).decode()
    assert body[:20] not in message and "\n" not in message


def test_weak_unsupported_and_missing_recipient_keys_are_refused(tmp_path: Path) -> None:
    weak = _write_pair(tmp_path, "weak", rsa.generate_private_key(65537, 2048))
    with pytest.raises(ConfigError, match="2048 bits, too weak"):
        Recipient.from_file(weak.public)
    signing = tmp_path / "ed.pub.pem"
    signing.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="signing key"):
        Recipient.from_file(signing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"not a PEM public key.*openssl genpkey"):
        Recipient.from_file(garbage)
    with pytest.raises(ConfigError, match="does not exist"):
        Recipient.from_file(tmp_path / "nope.pem", origin="--encrypt-to")
    with pytest.raises(ConfigError, match="is a directory"):
        Recipient.from_file(tmp_path)


def test_identity_files_public_keys_and_passphrases(x_keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a public key; decrypting needs the private key"):
        Identity.from_file(x_keys.public, None)
    key = serialization.load_pem_private_key(x_keys.private.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    with pytest.raises(ConfigError, match=r"encrypted with a passphrase.*--passphrase-file"):
        Identity.from_file(locked, None)
    with pytest.raises(ConfigError, match="passphrase is wrong") as caught:
        Identity.from_file(locked, b"wrong horse")
    assert "horse" not in str(caught.value)
    assert Identity.from_file(locked, b"correct horse").recipient == x_keys.recipient
    with pytest.raises(ConfigError, match="not encrypted, but a passphrase was given"):
        Identity.from_file(x_keys.private, b"x")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_the_documented_openssl_commands_make_keys_that_work(tmp_path: Path) -> None:
    for kind, genpkey in (
        ("x25519", ["-algorithm", "X25519"]),
        ("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]),
    ):
        private, public = tmp_path / f"{kind}.pem", tmp_path / f"{kind}.pub.pem"
        subprocess.run(["openssl", "genpkey", *genpkey, "-out", str(private)], check=True)
        subprocess.run(
            ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True
        )
        recipient = Recipient.from_file(public)
        assert recipient.kind == kind
        data = encrypt(b"recording", recipient)
        assert decrypt(data, Identity.from_file(private, None)) == b"recording"
    # an RSA key in the traditional format (BEGIN RSA PRIVATE KEY) is read too
    traditional = tmp_path / "rsa-traditional.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-traditional", "-out", str(traditional)],
        check=True,
    )
    assert traditional.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY")
    assert Identity.from_file(traditional, None).recipient == recipient


def test_encryptor_use_errors() -> None:
    recipient = Recipient._of(x25519.X25519PrivateKey.generate().public_key(), "test")
    enc = Encryptor(recipient)
    enc.finish()
    with pytest.raises(ValueError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        Encryptor(recipient, chunk_size=0)

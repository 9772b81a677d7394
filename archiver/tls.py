"""TLS: certificate verification is always on, and a failure says what to do.

Every outbound connection verifies the peer's certificate and host name: the aiohttp sessions
(Exotel API, recording downloads) use aiohttp's default, a verifying context built from the
system's CA store (OpenSSL honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``); boto3 verifies against
its CA bundle (``AWS_CA_BUNDLE`` or the ``ca_bundle`` of the AWS config replaces it). There is no
setting that turns verification off, and no code that does (tests/test_secrets.py scans the
code base for the ways to do it and fails the build if one appears).

A refused certificate is not a transient failure: retrying cannot help and every call would fail
the same way. It becomes a ``CertificateError`` (a ``ConfigError``: exit code 2) — for S3 a
``StoragePermanent``, which also stops the run with exit code 2 — whose message, built here,
names the endpoint, OpenSSL's reason and the fix.
"""

from __future__ import annotations

import ssl

from archiver.errors import CertificateError

AIOHTTP_CA_VARIABLE = "SSL_CERT_FILE"
"""How to trust a private CA for the Exotel API and recording downloads (aiohttp/OpenSSL)."""
S3_CA_VARIABLE = "AWS_CA_BUNDLE"
"""How to trust a private CA for an S3-compatible store (boto3)."""


def reason(exc: BaseException | None) -> str:
    """OpenSSL's reason for refusing, e.g. ``self-signed certificate`` (never a URL)."""
    for _ in range(10):  # aiohttp and botocore wrap the ssl module's error
        if exc is None:
            break
        inner = getattr(exc, "certificate_error", None)  # aiohttp's wrapper
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if isinstance(exc, ssl.SSLError):
            message = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            if message:
                return str(message)
        exc = exc.__cause__ or exc.__context__ or _wrapped(exc)
    return "certificate verify failed"


def _wrapped(exc: BaseException) -> BaseException | None:
    """botocore's SSLError keeps the urllib3 error in ``kwargs['error']``."""
    kwargs = getattr(exc, "kwargs", None)
    inner = kwargs.get("error") if isinstance(kwargs, dict) else None
    return inner if isinstance(inner, BaseException) else None


def certificate_message(what: str, endpoint: str, exc: BaseException | None, *, s3: bool) -> str:
    """What to say when a certificate failed verification while doing ``what``.

    ``endpoint`` must already be free of secrets (``redact.strip_url`` or a bare host:port).
    """
    variable = S3_CA_VARIABLE if s3 else AIOHTTP_CA_VARIABLE
    return (
        f"{what}: certificate verify failed for {endpoint} ({reason(exc)}). TLS verification "
        f"stays on. If the endpoint uses a private CA, point {variable} at a PEM bundle that "
        "contains it (SSL_CERT_FILE for the Exotel API and recording downloads, AWS_CA_BUNDLE "
        "for S3); otherwise check the URL's host name and the system clock, and that no proxy "
        "intercepts TLS"
    )


def certificate_refused(
    what: str, endpoint: str, exc: BaseException | None, *, s3: bool
) -> CertificateError:
    """``certificate_message`` as the error the run stops with (exit code 2)."""
    return CertificateError(certificate_message(what, endpoint, exc, s3=s3))

"""Secrets never reach text: URL signatures, user-info, known values, Authorization headers."""

from __future__ import annotations

import logging

import pytest

from archiver.redact import Redactor, redact_text, strip_url

SIGNED = (
    "https://s3-ap-south-1.amazonaws.com/exotel-mum1-recordings/Exotel/a.mp3"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20221103%2Fap-south-1"
    "&X-Amz-Date=20221103T172440Z&X-Amz-Expires=300&X-Amz-Signature=0123456789abcdef"
)


def test_strip_url_drops_query_and_userinfo() -> None:
    assert (
        strip_url(SIGNED)
        == "https://s3-ap-south-1.amazonaws.com/exotel-mum1-recordings/Exotel/a.mp3"
    )
    assert (
        strip_url("https://key:token@ccm-api.exotel.com:443/v3/x?y=1")
        == "https://ccm-api.exotel.com:443/v3/x"
    )


@pytest.mark.parametrize("secret", ["0123456789abcdef", "AKIAEXAMPLE"])
def test_redact_text_removes_signature_parts(secret: str) -> None:
    assert secret not in redact_text(f"failed: {SIGNED} boom")


def test_redact_text_removes_known_values_userinfo_and_auth_headers() -> None:
    text = "GET https://k:sekrit-token@h/x Authorization: Basic a2V5OnNla3JpdA== token=sekrit-token"
    out = redact_text(text, ["sekrit-token"])
    assert "sekrit-token" not in out and "a2V5OnNla3JpdA==" not in out


def test_logging_filter_scrubs_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("archiver.test-redact")
    caplog.handler.addFilter(Redactor(["my-api-token"]))
    try:
        raise RuntimeError(f"boom my-api-token {SIGNED}")
    except RuntimeError:
        logger.exception("while fetching %s with %s", SIGNED, "my-api-token")
    text = caplog.text
    assert "my-api-token" not in text and "0123456789abcdef" not in text
    assert "RuntimeError" in text

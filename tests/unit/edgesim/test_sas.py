"""SAS tokens: built like azure-iot-device builds them, verified strictly."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from edgesim.sas import SasError, build_token, generate_key, module_resource, parse_token, sign, verify_token

RESOURCE = module_resource("hub.azure-devices.net", "dev", "mod")
NOW = 1_700_000_000


def test_token_matches_the_sdk_format_and_signature():
    from azure.iot.device.common.auth.sastoken import RenewableSasToken
    from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism

    key = generate_key()
    signer = SymmetricKeySigningMechanism(base64.b64encode(key))  # type: ignore[no-untyped-call]
    sdk_token = RenewableSasToken(RESOURCE, signer, ttl=3600)  # type: ignore[no-untyped-call]
    ours = build_token(RESOURCE, key, sdk_token.expiry_time)
    assert ours == str(sdk_token)
    assert verify_token(str(sdk_token), key, RESOURCE).expiry == sdk_token.expiry_time


def test_verify_accepts_a_valid_token_and_reports_its_fields():
    key = generate_key()
    parsed = verify_token(build_token(RESOURCE, key, NOW + 60), key, RESOURCE, now=NOW)
    assert parsed.resource == RESOURCE
    assert parsed.expiry == NOW + 60
    assert parsed.key_name is None


def test_wrong_key_is_refused():
    token = build_token(RESOURCE, generate_key(), NOW + 60)
    with pytest.raises(SasError, match="signature"):
        verify_token(token, generate_key(), RESOURCE, now=NOW)


def test_expired_token_is_refused():
    key = generate_key()
    with pytest.raises(SasError, match="expired"):
        verify_token(build_token(RESOURCE, key, NOW), key, RESOURCE, now=NOW)


def test_token_for_another_resource_is_refused():
    key = generate_key()
    token = build_token(module_resource("hub.azure-devices.net", "dev", "other"), key, NOW + 60)
    with pytest.raises(SasError, match="not"):
        verify_token(token, key, RESOURCE, now=NOW)


def test_resource_compare_ignores_case_like_iot_hub():
    key = generate_key()
    token = build_token(RESOURCE.upper(), key, NOW + 60)
    assert verify_token(token, key, RESOURCE, now=NOW).resource == RESOURCE.upper()


def test_tampered_expiry_breaks_the_signature():
    key = generate_key()
    token = build_token(RESOURCE, key, NOW + 60).replace(f"se={NOW + 60}", f"se={NOW + 999999}")
    with pytest.raises(SasError, match="signature"):
        verify_token(token, key, RESOURCE, now=NOW)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("Bearer abc", "not a SharedAccessSignature"),
        ("SharedAccessSignature sr=a&sig=b", "missing"),
        ("SharedAccessSignature sr=a&sig=b&se=soon", "integer"),
        ("SharedAccessSignature sr=a&sig=b&se=1&x=2", "unknown"),
        ("SharedAccessSignature sr=a&sr=b&sig=b&se=1", "duplicate"),
        ("SharedAccessSignature sr=a&sig&se=1", "malformed"),
    ],
)
def test_malformed_tokens_are_refused(token, reason):
    with pytest.raises(SasError, match=reason):
        parse_token(token)


def test_key_name_is_kept_and_signature_is_url_encoded():
    key = generate_key()
    token = build_token(RESOURCE, key, NOW + 60, key_name="iothubowner")
    parsed = parse_token(token)
    assert parsed.key_name == "iothubowner"
    raw_sig = token.split("sig=", 1)[1].split("&", 1)[0]
    assert urllib.parse.unquote(raw_sig) == sign(key, parsed.signed_string)
    assert "+" not in raw_sig
    assert "/" not in raw_sig


def test_generated_keys_are_random_and_long_enough():
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(key) == 32 for key in keys)

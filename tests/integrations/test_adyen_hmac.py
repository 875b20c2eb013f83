"""The Adyen notification HMAC against Adyen's own published vectors, then ours."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from integrations.adyen.hmac import is_valid, sign, signing_string

# Adyen/adyen-python-api-library, test/UtilTest.py (test_notification_request_item_hmac)
# and Adyen/adyen-php-api-library, tests/Adyen/Util/HmacSignatureTest.php: the same item
# under two keys, and a REFUND of value 0 (a zero must be signed as "0", not "").
KEY_A = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
KEY_B = "DFB1EB5485895CFA84146406857104ABB4CBCABDC8AAF103A624C8F6A3EAAB00"
ITEM = {
    "pspReference": "7914073381342284",
    "merchantReference": "TestPayment-1407325143704",
    "merchantAccountCode": "TestMerchant",
    "amount": {"currency": "EUR", "value": 1130},
    "eventCode": "AUTHORISATION",
    "success": "true",
    "eventDate": "2019-05-06T17:15:34.121+02:00",
    "operations": ["CANCEL", "CAPTURE", "REFUND"],
    "paymentMethod": "visa",
}
# Adyen/adyen-python-api-library, test/mocks/util/{backslash,colon}_notification.json
# (test_webhooks_with_slashes): merchant references with characters that once had to be
# escaped in Adyen's older HPP signatures, and must not be in notifications.
KEY_C = "74F490DD33F7327BAECC88B2947C011FC02D014A473AAA33A8EC93E4DC069174"
SLASHES = [
    ("T7FD4VM4D3RZNN82", "\\\\slashes are fun", "nIgT81gaB5oJpn2jPXupDq68iRo2wUlBsuYjtYfwKqo="),
    ("M8NB66SBZSGLNK82", ":slashes are fun", "2EQYm7YJpKO4EtHSPu55SQTyWf8dkW5u2nD1tJFpViA="),
]


@pytest.mark.parametrize(
    ("key", "overrides", "expected"),
    [
        (KEY_A, {}, "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="),
        (KEY_B, {}, "Ny9gS2veKo5E4w8/OL6xz1/wvT/hYkAXy1xNc/QvO4I="),
        (
            KEY_A,
            {"eventCode": "REFUND", "amount": {"currency": "EUR", "value": 0}},
            "J7HhsgZo5KwqdB7LFZJV6rfQgp+RqC2kuYyw/3x3w+8=",
        ),
    ],
)
def test_adyen_library_vectors(key: str, overrides: dict, expected: str) -> None:
    item = {**ITEM, **overrides}
    assert sign(item, key) == expected
    assert sign(item, key.lower()) == expected
    assert is_valid({**item, "additionalData": {"hmacSignature": expected}}, [key])


@pytest.mark.parametrize(("psp", "reference", "signature"), SLASHES)
def test_adyen_library_vectors_with_slashes_and_colons(
    psp: str, reference: str, signature: str
) -> None:
    item = {
        "additionalData": {"hmacSignature": signature, "authCode": "076181"},
        "amount": {"currency": "EUR", "value": 1000},
        "eventCode": "AUTHORISATION",
        "merchantAccountCode": "AntoniStroinski",
        "merchantReference": reference,
        "pspReference": psp,
        "reason": "076181:1111:03/2030",
        "success": "true",
    }
    assert is_valid(item, [KEY_C])


def test_signing_string_order_and_missing_fields() -> None:
    item = {
        "pspReference": "QFQTPCQ8HXSKGK82",
        "originalReference": "9913140798220028",
        "merchantAccountCode": "Shop",
        "merchantReference": "op-1",
        "amount": {"currency": "EUR", "value": 315},
        "eventCode": "CAPTURE",
        "success": "true",
    }
    expected = "QFQTPCQ8HXSKGK82:9913140798220028:Shop:op-1:315:EUR:CAPTURE:true"
    assert signing_string(item) == expected
    del item["originalReference"]
    assert signing_string(item) == "QFQTPCQ8HXSKGK82::Shop:op-1:315:EUR:CAPTURE:true"


def test_our_vector_matches_a_plain_hmac() -> None:
    # Our own vector, computed independently of the module.
    key = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"
    message = b"PSP1:ORIG1:OrdersyncDev:3f2a:1470:EUR:AUTHORISATION_ADJUSTMENT:false"
    expected = base64.b64encode(hmac.new(bytes.fromhex(key), message, hashlib.sha256).digest())
    item = {
        "pspReference": "PSP1",
        "originalReference": "ORIG1",
        "merchantAccountCode": "OrdersyncDev",
        "merchantReference": "3f2a",
        "amount": {"value": 1470, "currency": "EUR"},
        "eventCode": "AUTHORISATION_ADJUSTMENT",
        "success": "false",
    }
    assert sign(item, key) == expected.decode()


def test_rotation_any_key_verifies_and_tampering_fails() -> None:
    signed = {**ITEM, "additionalData": {"hmacSignature": sign(ITEM, KEY_B)}}
    assert is_valid(signed, [KEY_A, KEY_B])
    assert not is_valid(signed, [KEY_A])
    assert not is_valid({**signed, "amount": {"currency": "EUR", "value": 1131}}, [KEY_B])
    assert not is_valid({**signed, "success": "false"}, [KEY_B])
    # Fields outside the signed string may change (Adyen adds additionalData freely).
    assert is_valid({**signed, "paymentMethod": "klarna"}, [KEY_B])


@pytest.mark.parametrize("additional", [None, {}, {"hmacSignature": ""}, {"hmacSignature": 5}])
def test_missing_signature_is_invalid(additional: object) -> None:
    item = dict(ITEM)
    if additional is not None:
        item["additionalData"] = additional
    assert not is_valid(item, [KEY_A])


def test_malformed_key_verifies_nothing() -> None:
    signed = {**ITEM, "additionalData": {"hmacSignature": sign(ITEM, KEY_A)}}
    assert not is_valid(signed, ["not-hex"])
    assert is_valid(signed, ["not-hex", KEY_A])

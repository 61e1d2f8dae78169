"""Settings: Blob Storage on IoT Edge's names, strict validation, credentials never shown."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from uploader import RedactingFilter, UploaderSettings, UploadOrder, redact, secrets_of

SAS_SIG = "sIgNaTuRe%2Bwith%2Fescapes%3D"
SAS_URL = (
    f"https://acct.blob.core.windows.net/?sv=2024-11-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01&sig={SAS_SIG}"
)


def _twin(**upload: Any) -> dict[str, Any]:
    return {"deviceToCloudUploadProperties": upload}


def test_blob_storage_on_iot_edge_names_are_accepted(account_key: str) -> None:
    desired = {
        "deviceToCloudUploadProperties": {
            "uploadOn": True,
            "uploadOrder": "NewestFirst",
            "cloudStorageConnectionString": f"AccountName=a;AccountKey={account_key}",
            "storageContainersForUpload": {"sensors": {"target": "%h-%d-sensors"}},
            "deleteAfterUpload": True,
        },
        "deviceAutoDeleteProperties": {
            "deleteOn": True,
            "deleteAfterMinutes": 30,
            "retainWhileUploading": True,
        },
        "transferProperties": {"concurrency": 4, "maxBytesPerSecond": 500_000},
    }
    s = UploaderSettings.model_validate(desired)
    upload = s.device_to_cloud_upload_properties
    assert upload.upload_order is UploadOrder.NEWEST_FIRST
    assert upload.storage_containers_for_upload["sensors"].target == "%h-%d-sensors"
    assert upload.storage_containers_for_upload["sensors"].blob_name == "%d/%m/%p"
    assert s.device_auto_delete_properties.delete_after_minutes == 30
    assert s.transfer_properties.max_bytes_per_second == 500_000


def test_defaults_upload_nothing_and_delete_nothing() -> None:
    s = UploaderSettings.model_validate({})
    assert s.device_to_cloud_upload_properties.upload_on is False
    assert s.device_to_cloud_upload_properties.delete_after_upload is False
    assert s.device_auto_delete_properties.delete_on is False


@pytest.mark.parametrize(
    ("desired", "message"),
    [
        ({"deviceToCloudUploadProperties": {"uploadOn": True, "bogus": 1}}, "bogus"),
        ({"transferProperties": {"concurrency": 0}}, "concurrency"),
        ({"deviceAutoDeleteProperties": {"retainWhileUploading": False}}, "never deleted"),
        (
            _twin(uploadOn=True, storageContainersForUpload={"*": {"target": "x"}}),
            "cloudStorageConnectionString",
        ),
        (_twin(uploadOn=True, cloudStorageConnectionString="x"), "storageContainersForUpload"),
        (_twin(storageContainersForUpload={"*": {"target": "%z"}}), "placeholder"),
        (_twin(storageContainersForUpload={"a/b": {"target": "x"}}), "top-level folder"),
        (_twin(storageContainersForUpload={"a": {"target": "x", "extra": 1}}), "extra"),
        (_twin(uploadOrder="Random"), "uploadOrder"),
        ({"transferProperties": {"retryInitialSeconds": 10, "retryMaxSeconds": 1}}, "retryMaxSeconds"),
    ],
)
def test_invalid_settings_are_rejected_with_the_reason(desired: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UploaderSettings.model_validate(desired)


def test_credentials_never_appear_in_repr_str_json_or_report(account_key: str) -> None:
    for connection, secret in (
        (f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={account_key}", account_key),
        (SAS_URL, SAS_SIG),
    ):
        s = UploaderSettings.model_validate(
            _twin(
                uploadOn=True,
                cloudStorageConnectionString=connection,
                storageContainersForUpload={"*": {"target": "abc"}},
            )
        )
        for shown in (repr(s), str(s), s.model_dump_json(), str(s.reportable())):
            assert secret not in shown
            assert "AccountKey" not in shown
        secret_value = s.device_to_cloud_upload_properties.cloud_storage_connection_string
        assert secret_value is not None
        assert secret_value.get_secret_value() == connection


def test_validation_errors_do_not_echo_the_connection_string(account_key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        UploaderSettings.model_validate(
            _twin(uploadOn=True, cloudStorageConnectionString=f"AccountKey={account_key}", unexpected=True)
        )
    assert account_key not in str(caught.value)


def test_redact_masks_keys_signatures_and_known_secrets(account_key: str) -> None:
    text = (
        f"failed: DefaultEndpointsProtocol=https;AccountName=a;AccountKey={account_key};EndpointSuffix=x "
        f"url={SAS_URL}&other=1 SharedAccessSignature=sv=1&sig=abc"
    )
    masked = redact(text)
    assert account_key not in masked
    assert SAS_SIG not in masked
    assert "AccountName=a" in masked
    assert "sv=2024-11-04" in masked
    assert "other=1" in masked
    # A secret that turns up outside any recognisable field is masked when it is known.
    assert redact(f"echo {account_key}", secrets_of(f"AccountKey={account_key}")) == "echo ***"
    decoded = "sIgNaTuRe+with/escapes="
    assert decoded in secrets_of(SAS_URL)
    assert decoded not in redact(f"signature {decoded}", secrets_of(SAS_URL))


def test_redacting_filter_masks_messages_arguments_and_tracebacks(
    account_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.uploader.redact")
    secrets = secrets_of(f"AccountKey={account_key}")
    caplog.handler.addFilter(RedactingFilter(secrets))
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("connecting with %s", f"AccountKey={account_key}")
        try:
            raise RuntimeError(f"boom {account_key}")
        except RuntimeError:
            logger.exception("failed")
    assert "connecting with" in caplog.text
    assert "failed" in caplog.text
    assert account_key not in caplog.text
    assert "boom ***" in caplog.text  # the traceback is still there, masked

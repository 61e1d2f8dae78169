import hashlib
import json

import pytest

from edgekit import EnvelopeError, Message, content_id, json_content_id, make_message, parse_message


def test_round_trip_keeps_body_and_summarises_in_properties():
    message = make_message(
        "file-ready",
        1,
        {"file_id": "ab" * 32, "size": 1234, "dataset": "pump-7"},
        {"dataset": "pump-7", "size": 1234, "ok": True, "ratio": 0.5},
        message_id="ab" * 32,
    )
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.message_id == "ab" * 32
    assert message.properties == {
        "schema": "edgeloop.file-ready/1",
        "kind": "file-ready",
        "dataset": "pump-7",
        "size": "1234",
        "ok": "true",
        "ratio": "0.5",
    }
    version, body = parse_message(message, "file-ready")
    assert version == "1"
    assert body == {
        "schema": "edgeloop.file-ready/1",
        "file_id": "ab" * 32,
        "size": 1234,
        "dataset": "pump-7",
    }


def test_non_ascii_survives_as_utf8():
    message = make_message("anomaly", "1.2", {"device": "Pumpe-Süd-温度"}, {"device": "Pumpe-Süd-温度"})
    assert "Pumpe-Süd-温度".encode() in message.body
    assert message.properties["device"] == "Pumpe-Süd-温度"
    version, body = parse_message(message, "anomaly")
    assert version == "1.2"
    assert body["device"] == "Pumpe-Süd-温度"


def test_minor_versions_accepted_other_major_rejected():
    assert parse_message(make_message("scores", "1.7", {}), "scores")[0] == "1.7"
    with pytest.raises(EnvelopeError, match="major version 1, got 2"):
        parse_message(make_message("scores", 2, {}), "scores")
    assert parse_message(make_message("scores", 2, {}), "scores", major=2)[0] == "2"


def test_wrong_kind_is_named_in_the_error():
    with pytest.raises(EnvelopeError, match="expected kind 'batch-ready', got 'file-ready'"):
        parse_message(make_message("file-ready", 1, {}), "batch-ready")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not text"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'{"a": 1}', "no 'schema'"),
        (b'{"schema": "other.file-ready/1"}', "is not 'edgeloop.<kind>/<version>'"),
        (b'{"schema": "edgeloop.file-ready/x"}', "is not 'edgeloop.<kind>/<version>'"),
    ],
)
def test_malformed_bodies_raise_clear_errors(body, error):
    with pytest.raises(EnvelopeError, match=error):
        parse_message(Message(body=body), "file-ready")


def test_make_message_refuses_bad_names_and_reserved_properties():
    with pytest.raises(ValueError, match="kind"):
        make_message("File_Ready", 1, {})
    with pytest.raises(ValueError, match="version"):
        make_message("file-ready", "v1", {})
    with pytest.raises(ValueError, match="set by the envelope"):
        make_message("file-ready", 1, {}, {"kind": "x"})
    with pytest.raises(ValueError, match="already has schema"):
        make_message("file-ready", 1, {"schema": "edgeloop.other/1"})


def test_nan_is_not_valid_json():
    with pytest.raises(ValueError, match="JSON"):
        make_message("scores", 1, {"mean": float("nan")})


def test_content_id_of_bytes_and_file_agree(tmp_path):
    data = bytes(range(256)) * 20000  # several read chunks
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert content_id(data) == expected
    assert content_id(path) == expected
    assert content_id(str(path)) == expected
    assert content_id(b"") == hashlib.sha256(b"").hexdigest()


def test_json_content_id_ignores_key_order():
    assert json_content_id({"a": 1, "b": [1, 2]}) == json_content_id({"b": [1, 2], "a": 1})
    assert json_content_id({"a": 1}) != json_content_id({"a": 2})
    assert len(json_content_id({})) == 64
    assert json.loads(Message.from_json({"x": "é"}).text()) == {"x": "é"}

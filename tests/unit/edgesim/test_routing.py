"""edgeHub routes: sources, sinks, the WHERE language, errors and per-endpoint dedup."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgesim.messages import HubMessage
from edgesim.routing import (
    DEFAULT_PRIORITY,
    Route,
    RouteError,
    Sink,
    evaluate_condition,
    parse_condition,
    parse_route,
    parse_routes,
    route_message,
)

UPSTREAM = "$upstream"


def module_message(
    module: str | None = "transformer",
    output: str | None = "batches",
    body: bytes = b"{}",
    json_body: bool = False,
    **app: str,
) -> HubMessage:
    system: dict[str, str] = {"connectionDeviceId": "edge-1"}
    if module is not None:
        system["connectionModuleId"] = module
    if output is not None:
        system["outputName"] = output
    if json_body:
        system["contentType"] = "application/json"
        system["contentEncoding"] = "utf-8"
    return HubMessage(body=body, app_properties=dict(app), system_properties=system)


def json_message(body: Any, **app: str) -> HubMessage:
    return module_message(body=json.dumps(body).encode(), json_body=True, **app)


def where(condition: str, message: HubMessage) -> bool:
    return evaluate_condition(condition, message)


# ---------------------------------------------------------------------------------------------
# sources


DEVICE_TELEMETRY = module_message(module=None, output=None)
TRANSFORMER_BATCHES = module_message("transformer", "batches")
TRANSFORMER_QUARANTINE = module_message("transformer", "quarantine")
INFERENCER_SCORES = module_message("gpu-inferencer", "scores")
TRANSFORMER_NO_OUTPUT = module_message("transformer", None)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/*", [True, True, True, True, True]),
        ("/messages/*", [True, True, True, True, True]),
        ("/messages/modules/*", [False, True, True, True, True]),
        ("/messages/modules/transformer/*", [False, True, True, False, True]),
        ("/messages/modules/transformer", [False, True, True, False, True]),
        ("/messages/modules/transformer/outputs/*", [False, True, True, False, False]),
        ("/messages/modules/transformer/outputs/batches", [False, True, False, False, False]),
        ("/twinChangeNotifications", [False, False, False, False, False]),
    ],
)
def test_source_forms_select_the_right_messages(source: str, expected: list[bool]) -> None:
    route = parse_route("r", f"FROM {source} INTO $upstream", 60)
    messages = [
        DEVICE_TELEMETRY,
        TRANSFORMER_BATCHES,
        TRANSFORMER_QUARANTINE,
        INFERENCER_SCORES,
        TRANSFORMER_NO_OUTPUT,
    ]
    assert [route.matches(m) for m in messages] == expected


def test_module_and_output_names_are_case_sensitive_but_keywords_are_not() -> None:
    route = parse_route("r", "from /MESSAGES/modules/transformer/OUTPUTS/batches into $UPSTREAM", 60)
    assert route.matches(TRANSFORMER_BATCHES)
    other_case = parse_route("r", "FROM /messages/modules/Transformer/outputs/batches INTO $upstream", 60)
    assert not other_case.matches(TRANSFORMER_BATCHES)


def test_output_name_must_match_exactly() -> None:
    route = parse_route("r", "FROM /messages/modules/transformer/outputs/batch INTO $upstream", 60)
    assert not route.matches(TRANSFORMER_BATCHES)


@pytest.mark.parametrize(
    "source",
    [
        "/messages",
        "/messages/modules",
        "messages/*",
        "/messages/modules/a/outputs",
        "/messages/modules/a/inputs/b",
    ],
)
def test_unknown_sources_are_rejected(source: str) -> None:
    with pytest.raises(RouteError, match="unknown source"):
        parse_route("r", f"FROM {source} INTO $upstream", 60)


# ---------------------------------------------------------------------------------------------
# sinks


@pytest.mark.parametrize(
    "sink_text",
    [
        'BrokeredEndpoint("/modules/gpu-inferencer/inputs/batches")',
        "BrokeredEndpoint('/modules/gpu-inferencer/inputs/batches')",
        'brokeredendpoint ( "/modules/gpu-inferencer/inputs/batches" )',
        'BrokeredEndpoint(\n  "/modules/gpu-inferencer/inputs/batches"\n)',
    ],
)
def test_brokered_endpoint_sink_forms(sink_text: str) -> None:
    route = parse_route("r", f"FROM /messages/* INTO {sink_text}", 60)
    assert route.sink == Sink("module", "gpu-inferencer", "batches")
    assert route.sink.endpoint_id == "gpu-inferencer/inputs/batches"


def test_upstream_sink() -> None:
    route = parse_route("r", "FROM /messages/* INTO $upstream", 60)
    assert route.sink == Sink("upstream", None, None)
    assert route.sink.endpoint_id == UPSTREAM


@pytest.mark.parametrize(
    ("sink_text", "reason"),
    [
        ('BrokeredEndpoint("/modules/m/outputs/o")', "BrokeredEndpoint address"),
        ("BrokeredEndpoint(\"/modules/m/inputs/i')", "sink"),
        ("$downstream", "sink"),
        ("", "unknown sink ''"),
    ],
)
def test_bad_sinks_are_rejected(sink_text: str, reason: str) -> None:
    with pytest.raises(RouteError, match=reason):
        parse_route("r", f"FROM /messages/* INTO {sink_text}", 60)


# ---------------------------------------------------------------------------------------------
# route objects, names, priorities, TTL


def test_string_route_gets_default_priority_and_the_global_ttl() -> None:
    route = parse_route("r", "FROM /* INTO $upstream", 7200)
    assert route.priority == DEFAULT_PRIORITY
    assert route.ttl_secs == 7200
    assert route.condition_text is None
    assert route.source == "/*"
    assert route.name == "r"


def test_route_object_priority_and_ttl_override() -> None:
    route = parse_route(
        "r", {"route": "FROM /* INTO $upstream", "priority": 0, "timeToLiveSecs": 86400}, 7200
    )
    assert (route.priority, route.ttl_secs) == (0, 86400)


def test_route_object_ttl_zero_means_use_the_global_ttl() -> None:
    route = parse_route("r", {"route": "FROM /* INTO $upstream", "priority": 3, "timeToLiveSecs": 0}, 7200)
    assert (route.priority, route.ttl_secs) == (3, 7200)


def test_no_expiry_when_the_resolved_ttl_is_not_positive() -> None:
    assert parse_route("r", "FROM /* INTO $upstream", 0).ttl_secs is None


@pytest.mark.parametrize("priority", [-1, 10, "1", 1.5, True])
def test_bad_priorities_are_rejected(priority: Any) -> None:
    with pytest.raises(RouteError, match="priority"):
        parse_route("r", {"route": "FROM /* INTO $upstream", "priority": priority}, 60)


@pytest.mark.parametrize("ttl", [-5, "60", 1.5])
def test_bad_ttls_are_rejected(ttl: Any) -> None:
    with pytest.raises(RouteError, match="timeToLiveSecs"):
        parse_route("r", {"route": "FROM /* INTO $upstream", "timeToLiveSecs": ttl}, 60)


def test_unknown_route_object_keys_and_missing_route_are_rejected() -> None:
    with pytest.raises(RouteError, match="unknown route keys"):
        parse_route("r", {"route": "FROM /* INTO $upstream", "prio": 1}, 60)
    with pytest.raises(RouteError, match="'route'"):
        parse_route("r", {"priority": 1}, 60)
    with pytest.raises(RouteError, match="string or an object"):
        parse_route("r", ["FROM /* INTO $upstream"], 60)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a.b", "$a", "a#b", "a b", ""])
def test_bad_route_names_are_rejected(name: str) -> None:
    with pytest.raises(RouteError, match="route names"):
        parse_route(name, "FROM /* INTO $upstream", 60)


@pytest.mark.parametrize("name", ["ingestToTransformer", "a-b_c", "anomalies2upstream"])
def test_good_route_names_are_accepted(name: str) -> None:
    assert parse_route(name, "FROM /* INTO $upstream", 60).name == name


def test_parse_routes_keeps_order_and_names_the_broken_route() -> None:
    routes = parse_routes(
        {
            "first": "FROM /messages/modules/a/* INTO $upstream",
            "second": {"route": "FROM /* INTO BrokeredEndpoint('/modules/b/inputs/in')", "priority": 1},
        },
        60,
    )
    assert [r.name for r in routes] == ["first", "second"]
    with pytest.raises(RouteError) as caught:
        parse_routes({"ok": "FROM /* INTO $upstream", "broken": "FROM /* WHERE (a INTO $upstream"}, 60)
    assert caught.value.route_name == "broken"
    assert "'broken'" in str(caught.value)


def test_route_without_into_is_rejected() -> None:
    with pytest.raises(RouteError, match="must end with INTO"):
        parse_route("r", "FROM /messages/* WHERE a = 1", 60)


def test_where_without_condition_is_rejected() -> None:
    with pytest.raises(RouteError, match="WHERE needs a condition") as caught:
        parse_route("r", "FROM /messages/* WHERE INTO $upstream", 60)
    assert caught.value.position == len("FROM /messages/* ")


def test_route_must_start_with_from() -> None:
    with pytest.raises(RouteError, match="FROM"):
        parse_route("r", "SELECT /* INTO $upstream", 60)


def test_garbage_between_source_and_into_is_rejected_with_position() -> None:
    with pytest.raises(RouteError, match="expected WHERE or INTO") as caught:
        parse_route("r", "FROM /* WHEN a = 1 INTO $upstream", 60)
    assert caught.value.position == 8


def test_condition_text_is_kept_verbatim() -> None:
    route = parse_route("r", "FROM /* WHERE   a = 'x INTO y'   INTO $upstream", 60)
    assert route.condition_text == "a = 'x INTO y'"
    assert route.matches(module_message(a="x INTO y"))


def test_route_constructed_directly_compiles_its_source_and_condition() -> None:
    route = Route("r", "/messages/modules/transformer/*", "rows > 10", Sink("upstream", None, None), 1, None)
    assert route.matches(module_message(rows="11"))
    assert not route.matches(module_message(rows="9"))
    with pytest.raises(RouteError):
        Route("r", "/*", "rows >", Sink("upstream", None, None), 1, None)


def test_routes_compare_by_their_fields() -> None:
    spec = "FROM /* WHERE a = 1 INTO $upstream"
    assert parse_route("r", spec, 60) == parse_route("r", spec, 60)
    assert parse_route("r", spec, 60) != parse_route("r", spec, 61)


# ---------------------------------------------------------------------------------------------
# WHERE: comparisons, logic, literals


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("kind = 'batch'", True),
        ("kind = 'Batch'", False),
        ("kind != 'batch'", False),
        ("kind <> 'other'", True),
        ("kind < 'c'", True),
        ("kind > 'c'", False),
        ("kind <= 'batch'", True),
        ("kind >= 'batch'", True),
        ("rows = 100", True),
        ("rows > 99.5", True),
        ("rows < 1e3", True),
        ("rows >= 100", True),
        ("rows <= 99", False),
        ("rows != 100", False),
        ("rows = 0x64", True),
        ("rows > -1", True),
        ("-rows < 0", True),
    ],
)
def test_comparison_operators(condition: str, expected: bool) -> None:
    assert where(condition, module_message(kind="batch", rows="100")) is expected


def test_numeric_comparison_converts_numeric_string_properties() -> None:
    message = module_message(temperature="9")
    # As strings "9" > "10"; numerically it is not.
    assert not where("temperature > 10", message)
    assert where("temperature < 10", message)
    assert where("temperature = 9.0", message)


def test_string_compared_with_string_is_not_numeric() -> None:
    assert where("temperature > '10'", module_message(temperature="9"))


def test_non_numeric_string_against_number_is_undefined_so_false_both_ways() -> None:
    message = module_message(temperature="hot")
    assert not where("temperature > 10", message)
    assert not where("temperature <= 10", message)
    assert not where("NOT (temperature > 10)", message)


def test_undefined_property_makes_comparisons_false_and_not_does_not_flip_it() -> None:
    message = module_message()
    assert not where("missing = 'x'", message)
    assert not where("missing != 'x'", message)
    assert not where("NOT (missing = 'x')", message)


def test_three_valued_logic_with_undefined() -> None:
    message = module_message(a="1")
    assert where("missing = 'x' OR a = 1", message)
    assert not where("missing = 'x' AND a = 1", message)
    # false AND undefined is false, so NOT of it is true.
    assert where("NOT (a = 2 AND missing = 'x')", message)
    # true OR undefined is true.
    assert not where("NOT (a = 1 OR missing = 'x')", message)


def test_keywords_are_case_insensitive() -> None:
    message = module_message(a="1", b="2")
    assert where("a = 1 and b = 2", message)
    assert where("a = 3 Or b = 2", message)
    assert where("not a = 3", message)
    assert where("IS_DEFINED(a) = TRUE", message)


def test_precedence_not_binds_tighter_than_and_which_binds_tighter_than_or() -> None:
    message = module_message(a="1", b="2", c="3")
    # OR binds loosest: true OR (false AND false)
    assert where("a = 1 OR b = 0 AND c = 0", message)
    # (false AND ...) OR true
    assert where("a = 0 AND b = 0 OR c = 3", message)
    # NOT applies to a = 1 only: (NOT true) AND true = false
    assert not where("NOT a = 1 AND b = 2", message)
    # NOT applies to a = 0 only: (NOT false) OR ... = true
    assert where("NOT a = 0 OR b = 0", message)
    # parentheses override: NOT (true AND true) = false
    assert not where("NOT (a = 1 AND b = 2)", message)
    assert not where("(a = 1 OR b = 0) AND c = 0", message)


def test_double_not() -> None:
    assert where("NOT NOT a = 1", module_message(a="1"))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("true", True),
        ("false", False),
        ("TRUE AND NOT FALSE", True),
        ("null = null", True),
        ("a = null", False),
        ("a != null", True),
        ("1 = 1.0", True),
        ("'x' = 'x'", True),
        ("'1' = 1", True),
        ("(((true)))", True),
        ("true = false", False),
        ("true != false", True),
        ("true < false", False),
        ("'abc'", False),
        ("1", False),
    ],
)
def test_literals(condition: str, expected: bool) -> None:
    assert where(condition, module_message(a="1")) is expected


def test_string_literal_escapes() -> None:
    assert where("name = 'O''Brien'", module_message(name="O'Brien"))
    assert where('name = "say ""hi"""', module_message(name='say "hi"'))
    assert where(r"name = 'O\'Brien'", module_message(name="O'Brien"))
    assert where(r"name = '\u00e9t\u00e9'", module_message(name="été"))
    assert where("name = 'a AND b OR NOT c'", module_message(name="a AND b OR NOT c"))


def test_bracketed_property_names() -> None:
    message = HubMessage(body=b"", app_properties={"device type": "pump", "a-b": "1", "AND": "x"})
    assert where("[device type] = 'pump'", message)
    assert where("[a-b] = 1", message)
    assert where("[AND] = 'x'", message)


def test_property_names_are_case_sensitive() -> None:
    assert not where("Severity = 'high'", module_message(severity="high"))


# ---------------------------------------------------------------------------------------------
# WHERE: system properties


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("$connectionModuleId = 'transformer'", True),
        ("$connectionDeviceId = 'edge-1'", True),
        ("$outputName = 'batches'", True),
        ("$contentType = 'application/json'", True),
        ("$contentEncoding = 'utf-8'", True),
        ("$messageId = 'm-1'", True),
        ("$correlationId = 'c-1'", True),
        ("IS_DEFINED($userId)", False),
    ],
)
def test_system_properties(condition: str, expected: bool) -> None:
    message = HubMessage(
        body=b"{}",
        system_properties={
            "connectionModuleId": "transformer",
            "connectionDeviceId": "edge-1",
            "outputName": "batches",
            "contentType": "application/json",
            "contentEncoding": "utf-8",
            "messageId": "m-1",
            "correlationId": "c-1",
        },
    )
    assert where(condition, message) is expected


def test_system_property_is_not_an_application_property_and_vice_versa() -> None:
    message = module_message(connectionModuleId="spoof")
    assert where("$connectionModuleId = 'transformer'", message)
    assert where("connectionModuleId = 'spoof'", message)


def test_application_property_named_with_dollar_wins_like_edgehub() -> None:
    message = HubMessage(
        body=b"", app_properties={"$contentType": "app"}, system_properties={"contentType": "sys"}
    )
    assert where("$contentType = 'app'", message)


# ---------------------------------------------------------------------------------------------
# WHERE: $body


def test_body_queries_on_json_utf8() -> None:
    message = json_message(
        {"temp": 31.5, "device": {"id": "pump-7", "tags": ["a", "b"]}, "ok": True, "n": None}
    )
    assert where("$body.temp > 30", message)
    assert where("$body.temp = 31.5", message)
    assert where("$body.device.id = 'pump-7'", message)
    assert where("$body.device.tags[1] = 'b'", message)
    assert where("$body.ok = true", message)
    assert where("$body.n = null", message)
    assert where("IS_NUMBER($body.temp) AND IS_STRING($body.device.id) AND IS_BOOL($body.ok)", message)
    assert not where("IS_DEFINED($body.missing)", message)
    assert not where("IS_DEFINED($body.device.tags[5])", message)
    assert not where("$body.device = 'x'", message)


def test_body_is_undefined_without_json_content_type_or_utf8_encoding() -> None:
    body = json.dumps({"temp": 40}).encode()
    plain = module_message(body=body)
    assert not where("IS_DEFINED($body.temp)", plain)
    wrong_encoding = HubMessage(
        body=body, system_properties={"contentType": "application/json", "contentEncoding": "utf-16"}
    )
    assert not where("$body.temp > 30", wrong_encoding)
    with_charset = HubMessage(
        body=body,
        system_properties={"contentType": "Application/JSON; charset=utf-8", "contentEncoding": "UTF-8"},
    )
    assert where("$body.temp > 30", with_charset)


def test_body_that_is_not_json_is_undefined_not_an_error() -> None:
    message = module_message(body=b"\xff not json", json_body=True)
    assert not where("$body.temp > 30", message)
    assert where("NOT IS_DEFINED($body.temp)", message)


def test_body_needs_a_path() -> None:
    with pytest.raises(RouteError, match=r"\$body needs a path"):
        parse_condition("$body = 1")


# ---------------------------------------------------------------------------------------------
# WHERE: functions


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("IS_DEFINED(severity)", True),
        ("IS_DEFINED(missing)", False),
        ("is_defined(severity)", True),
        ("IS_STRING(severity)", True),
        ("IS_STRING(missing)", False),
        ("IS_NUMBER(rows)", False),  # application properties are strings
        ("IS_NUMBER(3)", True),
        ("IS_BOOL(true)", True),
        ("IS_BOOL('true')", False),
        ("IS_NULL(null)", True),
        ("AS_NUMBER(rows) = 12", True),
        ("IS_NUMBER(AS_NUMBER(rows))", True),
        ("UPPER(severity) = 'HIGH'", True),
        ("LOWER(mixed) = 'abc'", True),
        ("LENGTH(severity) = 4", True),
        ("LENGTH(missing) = 0", False),
        ("STARTS_WITH(path, 'batches/')", True),
        ("STARTS_WITH(path, 'quarantine/')", False),
        ("ENDS_WITH(path, '.parquet')", True),
        ("CONTAINS(path, '2026')", True),
        ("CONTAINS(path, 'x')", False),
        ("STARTS_WITH(missing, 'a')", False),
        ("UPPER(LOWER(mixed)) = 'ABC'", True),
        ("UPPER(3) = '3'", False),
    ],
)
def test_functions(condition: str, expected: bool) -> None:
    message = module_message(severity="high", rows="12", mixed="AbC", path="batches/2026/01.parquet")
    assert where(condition, message) is expected


def test_unknown_function_and_wrong_arity_are_parse_errors() -> None:
    with pytest.raises(RouteError, match="unknown function FOO") as caught:
        parse_condition("a = 1 AND FOO(a)")
    assert caught.value.position == 10
    with pytest.raises(RouteError, match="STARTS_WITH takes 2 arguments, got 1"):
        parse_condition("STARTS_WITH(a)")
    with pytest.raises(RouteError, match="UPPER takes 1 argument, got 0"):
        parse_condition("UPPER() = 'A'")


# ---------------------------------------------------------------------------------------------
# WHERE: parse errors carry a position


@pytest.mark.parametrize(
    ("condition", "position", "reason"),
    [
        ("a = = 1", 4, "expected an operand"),
        ("(a = 1", 6, "expected ')'"),
        ("a = 1)", 5, "unexpected ')'"),
        ("a = 'open", 4, "unterminated string"),
        ("a = 1 AND", 9, "expected an operand"),
        ("a = 1 b = 2", 6, "unexpected 'b'"),
        ("a = 1 & b = 2", 6, "unexpected character '&'"),
        ("[a = 1", 0, "unterminated"),
        ("$ = 1", 0, "'$' must start"),
        ("a < b < c", 6, "do not chain"),
        ("$contentType.x = 1", 0, "has no members"),
        ("", 0, "empty condition"),
        ("AND = 1", 0, "keyword"),
    ],
)
def test_parse_errors_report_position_and_reason(condition: str, position: int, reason: str) -> None:
    with pytest.raises(RouteError) as caught:
        parse_condition(condition)
    assert reason in caught.value.reason
    assert caught.value.position == position


def test_condition_error_position_is_relative_to_the_route_string() -> None:
    text = "FROM /messages/* WHERE a = = 1 INTO $upstream"
    with pytest.raises(RouteError) as caught:
        parse_route("r", text, 60)
    assert caught.value.position == text.index("= 1")
    assert caught.value.route_name == "r"
    assert f"position {text.index('= 1')}" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# route_message: dedup per endpoint


def test_route_message_returns_only_matching_routes() -> None:
    routes = parse_routes(
        {
            "batchesToInferencer": "FROM /messages/modules/transformer/outputs/batches "
            "INTO BrokeredEndpoint('/modules/gpu-inferencer/inputs/batches')",
            "batchesToUploader": "FROM /messages/modules/transformer/outputs/batches "
            "INTO BrokeredEndpoint('/modules/cloud-share-uploader/inputs/batches')",
            "quarantine": "FROM /messages/modules/transformer/outputs/quarantine INTO $upstream",
        },
        7200,
    )
    chosen = route_message(routes, TRANSFORMER_BATCHES)
    assert [r.name for r in chosen] == ["batchesToInferencer", "batchesToUploader"]
    assert route_message(routes, INFERENCER_SCORES) == []


def test_two_routes_into_one_endpoint_deliver_once_with_the_highest_priority_and_its_ttl() -> None:
    routes = parse_routes(
        {
            "everything": "FROM /messages/* INTO $upstream",
            "anomalies": {
                "route": "FROM /messages/modules/gpu-inferencer/outputs/anomalies INTO $upstream",
                "priority": 0,
                "timeToLiveSecs": 86400,
            },
            "alsoAnomalies": {
                "route": "FROM /messages/modules/gpu-inferencer/* WHERE severity = 'high' INTO $upstream",
                "priority": 5,
                "timeToLiveSecs": 60,
            },
        },
        7200,
    )
    anomaly = module_message("gpu-inferencer", "anomalies", severity="high")
    chosen = route_message(routes, anomaly)
    assert len(chosen) == 1
    assert (chosen[0].name, chosen[0].priority, chosen[0].ttl_secs) == ("anomalies", 0, 86400)

    scores = module_message("gpu-inferencer", "scores", severity="high")
    chosen = route_message(routes, scores)
    assert [(r.name, r.ttl_secs) for r in chosen] == [("alsoAnomalies", 60)]


def test_equal_priorities_into_one_endpoint_keep_the_first_route() -> None:
    routes = parse_routes(
        {
            "one": {"route": "FROM /messages/* INTO $upstream", "priority": 2, "timeToLiveSecs": 10},
            "two": {"route": "FROM /* INTO $upstream", "priority": 2, "timeToLiveSecs": 20},
        },
        7200,
    )
    assert [r.name for r in route_message(routes, TRANSFORMER_BATCHES)] == ["one"]


def test_dedup_is_per_endpoint_not_global() -> None:
    routes = parse_routes(
        {
            "up1": "FROM /* INTO $upstream",
            "up2": "FROM /messages/* INTO $upstream",
            "mod1": "FROM /* INTO BrokeredEndpoint('/modules/m/inputs/a')",
            "mod2": "FROM /* INTO BrokeredEndpoint('/modules/m/inputs/b')",
            "mod3": {"route": "FROM /* INTO BrokeredEndpoint('/modules/m/inputs/a')", "priority": 1},
        },
        7200,
    )
    chosen = route_message(routes, TRANSFORMER_BATCHES)
    assert [r.sink.endpoint_id for r in chosen] == ["$upstream", "m/inputs/a", "m/inputs/b"]
    assert [r.name for r in chosen] == ["up1", "mod3", "mod2"]


def test_condition_filters_inside_route_message() -> None:
    routes = parse_routes(
        {
            "high": "FROM /messages/modules/gpu-inferencer/outputs/anomalies "
            "WHERE severity = 'high' INTO $upstream",
        },
        7200,
    )
    assert route_message(routes, module_message("gpu-inferencer", "anomalies", severity="high"))
    assert not route_message(routes, module_message("gpu-inferencer", "anomalies", severity="low"))
    assert not route_message(routes, module_message("gpu-inferencer", "anomalies"))


def test_twin_change_notification_route_never_takes_module_messages() -> None:
    routes = parse_routes({"twins": "FROM /twinChangeNotifications INTO $upstream"}, 7200)
    assert route_message(routes, TRANSFORMER_BATCHES) == []
    assert route_message(routes, DEVICE_TELEMETRY) == []


def test_parsed_condition_is_reusable_across_messages() -> None:
    condition = parse_condition("$body.score > threshold")
    assert condition.matches(json_message({"score": 0.9}, threshold="0.5"))
    assert not condition.matches(json_message({"score": 0.1}, threshold="0.5"))
    assert condition.text == "$body.score > threshold"

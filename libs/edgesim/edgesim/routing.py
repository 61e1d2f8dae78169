"""edgeHub routes: parsing the manifest's route strings and evaluating them against messages.

A route reads ``FROM <source> [WHERE <condition>] INTO <sink>``. The condition language is the
subset of IoT Hub's message-routing query language that edgeHub evaluates: comparisons, AND/OR/NOT,
literals, application properties, ``$``-system properties, ``$body.<path>`` and a handful of
built-in functions. Evaluation is three-valued like edgeHub's: an undefined operand makes a
comparison undefined, and a message is routed only when the whole condition is ``true``.

Pure logic, no I/O; every object here is immutable and safe to share between threads.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edgesim.messages import HubMessage

__all__ = [
    "DEFAULT_PRIORITY",
    "Condition",
    "Route",
    "RouteError",
    "Sink",
    "evaluate_condition",
    "parse_condition",
    "parse_route",
    "parse_routes",
    "route_message",
]

# edgeHub's RouteFactory.DefaultPriority: half of uint.MaxValue rounded down, so routes without a
# priority sort below every explicit 0..9 one.
DEFAULT_PRIORITY: Final[int] = 2_000_000_000
MAX_PRIORITY: Final[int] = 9

_ROUTE_NAME = re.compile(r"^[^.$# ]+$")


class RouteError(ValueError):
    """A route in the manifest that edgeHub would refuse; names the route and, for conditions, the
    0-based character position in the route string."""

    def __init__(self, reason: str, *, route_name: str | None = None, position: int | None = None) -> None:
        self.reason = reason
        self.route_name = route_name
        self.position = position
        where = f"route {route_name!r}: " if route_name is not None else ""
        at = f"at position {position}: " if position is not None else ""
        super().__init__(f"{where}{at}{reason}")

    def for_route(self, route_name: str, offset: int = 0) -> RouteError:
        """The same error attributed to a route, its position shifted by where the condition starts."""
        position = None if self.position is None else self.position + offset
        return RouteError(self.reason, route_name=route_name, position=position)


# ---------------------------------------------------------------------------------------------
# Sinks


@dataclass(frozen=True)
class Sink:
    kind: Literal["upstream", "module"]
    module: str | None
    input: str | None

    @property
    def endpoint_id(self) -> str:
        """A stable key for the destination: the store-and-forward queue name."""
        if self.kind == "upstream":
            return "$upstream"
        return f"{self.module}/inputs/{self.input}"


_UPSTREAM = re.compile(r"^\$upstream$", re.IGNORECASE)
_BROKERED = re.compile(r"^BrokeredEndpoint\s*\(\s*(?P<q>[\"'])(?P<address>.*?)(?P=q)\s*\)$", re.IGNORECASE)
_MODULE_INPUT = re.compile(r"^/modules/(?P<module>[^/\s]+)/inputs/(?P<input>[^/\s]+)$")


def _parse_sink(text: str) -> Sink:
    text = text.strip()
    if _UPSTREAM.match(text):
        return Sink("upstream", None, None)
    brokered = _BROKERED.match(text)
    if brokered is None:
        raise RouteError(
            f'unknown sink {text!r}: expected $upstream or BrokeredEndpoint("/modules/<m>/inputs/<i>")'
        )
    address = _MODULE_INPUT.match(brokered.group("address"))
    if address is None:
        raise RouteError(
            f"unknown BrokeredEndpoint address {brokered.group('address')!r}: "
            "expected /modules/<module>/inputs/<input>"
        )
    return Sink("module", address.group("module"), address.group("input"))


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class _SourcePattern:
    """What a FROM clause selects. ``module``/``output`` of None mean "any"."""

    telemetry: bool  # matches device/module telemetry at all (false only for /twinChangeNotifications)
    modules_only: bool  # excludes device-level telemetry (a message with no connectionModuleId)
    module: str | None
    output: str | None
    output_required: bool  # /outputs/* needs a named output, /messages/modules/<m> does not

    def matches(self, message: HubMessage) -> bool:
        if not self.telemetry:
            return False
        source_module = message.source_module
        if source_module is None:
            return not self.modules_only
        if self.module is not None and source_module != self.module:
            return False
        source_output = message.source_output
        if self.output_required and not source_output:
            return False
        return self.output is None or source_output == self.output


_SOURCE_FORMS: Final[list[tuple[re.Pattern[str], Callable[[re.Match[str]], _SourcePattern]]]] = [
    (re.compile(r"^/\*$"), lambda _m: _SourcePattern(True, False, None, None, False)),
    (re.compile(r"^/messages/\*$", re.IGNORECASE), lambda _m: _SourcePattern(True, False, None, None, False)),
    (
        re.compile(r"^/messages/modules/\*$", re.IGNORECASE),
        lambda _m: _SourcePattern(True, True, None, None, False),
    ),
    (
        re.compile(r"^/messages/modules/(?P<m>[^/*]+)(?:/\*)?$", re.IGNORECASE),
        lambda m: _SourcePattern(True, True, m.group("m"), None, False),
    ),
    (
        re.compile(r"^/messages/modules/(?P<m>[^/*]+)/outputs/\*$", re.IGNORECASE),
        lambda m: _SourcePattern(True, True, m.group("m"), None, True),
    ),
    (
        re.compile(r"^/messages/modules/(?P<m>[^/*]+)/outputs/(?P<o>[^/*]+)$", re.IGNORECASE),
        lambda m: _SourcePattern(True, True, m.group("m"), m.group("o"), True),
    ),
    (
        re.compile(r"^/twinChangeNotifications$", re.IGNORECASE),
        lambda _m: _SourcePattern(False, True, None, None, False),
    ),
]


def _parse_source(text: str) -> _SourcePattern:
    for pattern, build in _SOURCE_FORMS:
        found = pattern.match(text)
        if found is not None:
            return build(found)
    raise RouteError(
        f"unknown source {text!r}: expected /*, /messages/*, /messages/modules/*, /messages/modules/<m>[/*], "
        "/messages/modules/<m>/outputs/<o|*> or /twinChangeNotifications"
    )


# ---------------------------------------------------------------------------------------------
# Condition language: tokens


class _Undefined:
    """The query language's `undefined`: a missing property, or an operation on incompatible types."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Final = _Undefined()

# A value during evaluation: JSON types (float for every number) or UNDEFINED.
Value = str | float | bool | None | dict[str, Any] | list[Any] | _Undefined


@dataclass(frozen=True)
class _Token:
    kind: str  # "num" "str" "ident" "sysprop" "bracket" "op" "(" ")" "," "-" "eof"
    text: str
    position: int
    value: Any = None


_COMPARISON_OPS: Final = ("<=", ">=", "<>", "!=", "=", "<", ">")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `$name`, `$body.a.b`, `$body.list[0].x`: the path is validated when the AST is built.
_SYSPROP = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*(?:(?:\.[A-Za-z_][A-Za-z0-9_]*)|(?:\[\d+\]))*")
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "(),-":
            tokens.append(_Token(ch, ch, i))
            i += 1
            continue
        op = next((o for o in _COMPARISON_OPS if text.startswith(o, i)), None)
        if op is not None:
            tokens.append(_Token("op", op, i, "!=" if op == "<>" else op))
            i += len(op)
            continue
        if ch in "'\"":
            value, end = _read_string(text, i)
            tokens.append(_Token("str", text[i:end], i, value))
            i = end
            continue
        if ch == "[":
            end = text.find("]", i + 1)
            if end < 0:
                raise RouteError("unterminated [bracketed] property name", position=i)
            name = text[i + 1 : end]
            if not name:
                raise RouteError("empty [bracketed] property name", position=i)
            tokens.append(_Token("bracket", text[i : end + 1], i, name))
            i = end + 1
            continue
        if ch == "$":
            found = _SYSPROP.match(text, i)
            if found is None:
                raise RouteError(
                    "'$' must start a system property such as $contentType or $body.x", position=i
                )
            tokens.append(_Token("sysprop", found.group(), i, found.group()[1:]))
            i = found.end()
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            found = _NUMBER.match(text, i)
            assert found is not None  # a digit always starts a number
            literal = found.group()
            number = float(int(literal, 16)) if literal[:2].lower() == "0x" else float(literal)
            tokens.append(_Token("num", literal, i, number))
            i = found.end()
            continue
        found = _IDENT.match(text, i)
        if found is not None:
            tokens.append(_Token("ident", found.group(), i, found.group()))
            i = found.end()
            continue
        raise RouteError(f"unexpected character {ch!r}", position=i)
    tokens.append(_Token("eof", "", n))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    """A quoted literal: the quote doubled, or backslash-escaped, stands for itself (both are
    accepted by IoT Hub's grammar)."""
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                chars.append(quote)
                i += 2
                continue
            return "".join(chars), i + 1
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "'\"\\":
                chars.append(nxt)
                i += 2
                continue
            if nxt in "uU" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
                chars.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
        chars.append(ch)
        i += 1
    raise RouteError("unterminated string literal", position=start)


# ---------------------------------------------------------------------------------------------
# Condition language: AST


class _Node:
    def evaluate(self, ctx: _EvalContext) -> Value:
        raise NotImplementedError


@dataclass(frozen=True)
class _Const(_Node):
    value: Value

    def evaluate(self, ctx: _EvalContext) -> Value:
        return self.value


@dataclass(frozen=True)
class _AppProperty(_Node):
    name: str

    def evaluate(self, ctx: _EvalContext) -> Value:
        value = ctx.message.app_properties.get(self.name)
        return UNDEFINED if value is None else value


@dataclass(frozen=True)
class _SystemProperty(_Node):
    """`$name`. Like edgeHub, an application property literally named `$name` wins; otherwise the
    system property `name` (edgeHub looks it up by name, so `$outputName` works too)."""

    name: str

    def evaluate(self, ctx: _EvalContext) -> Value:
        app = ctx.message.app_properties.get("$" + self.name)
        if app is not None:
            return app
        value = ctx.message.system_properties.get(self.name)
        return UNDEFINED if value is None else value


@dataclass(frozen=True)
class _BodyPath(_Node):
    text: str
    path: tuple[str | int, ...]

    def evaluate(self, ctx: _EvalContext) -> Value:
        app = ctx.message.app_properties.get(self.text)
        if app is not None:
            return app
        current: Any = ctx.body()
        for step in self.path:
            if isinstance(step, int):
                if not isinstance(current, list) or step >= len(current):
                    return UNDEFINED
                current = current[step]
            else:
                if not isinstance(current, dict) or step not in current:
                    return UNDEFINED
                current = current[step]
        return _from_json(current)


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node

    def evaluate(self, ctx: _EvalContext) -> Value:
        value = self.operand.evaluate(ctx)
        return (not value) if isinstance(value, bool) else UNDEFINED


@dataclass(frozen=True)
class _And(_Node):
    left: _Node
    right: _Node

    def evaluate(self, ctx: _EvalContext) -> Value:
        left = self.left.evaluate(ctx)
        if left is False:
            return False
        right = self.right.evaluate(ctx)
        if right is False:
            return False
        if left is True and right is True:
            return True
        return UNDEFINED


@dataclass(frozen=True)
class _Or(_Node):
    left: _Node
    right: _Node

    def evaluate(self, ctx: _EvalContext) -> Value:
        left = self.left.evaluate(ctx)
        if left is True:
            return True
        right = self.right.evaluate(ctx)
        if right is True:
            return True
        if left is False and right is False:
            return False
        return UNDEFINED


@dataclass(frozen=True)
class _Negate(_Node):
    operand: _Node

    def evaluate(self, ctx: _EvalContext) -> Value:
        value = _as_number(self.operand.evaluate(ctx))
        return UNDEFINED if value is None else -value


@dataclass(frozen=True)
class _Compare(_Node):
    op: str
    left: _Node
    right: _Node

    def evaluate(self, ctx: _EvalContext) -> Value:
        return _compare(self.op, self.left.evaluate(ctx), self.right.evaluate(ctx))


@dataclass(frozen=True)
class _Call(_Node):
    name: str
    args: tuple[_Node, ...]

    def evaluate(self, ctx: _EvalContext) -> Value:
        _arity, function = _FUNCTIONS[self.name]
        return function(*(arg.evaluate(ctx) for arg in self.args))


def _is_number(value: Value) -> bool:
    return isinstance(value, float) and not isinstance(value, bool)


def _from_json(value: Any) -> Value:
    if isinstance(value, bool) or value is None or isinstance(value, str | dict | list):
        return value
    if isinstance(value, int | float):
        return float(value)
    return UNDEFINED


def _as_number(value: Value) -> float | None:
    """A number, or a string that reads as one: application properties are always strings, and IoT
    Hub compares `temperature > 30` numerically when the property holds a number."""
    if _is_number(value):
        assert isinstance(value, float)
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compare(op: str, left: Value, right: Value) -> Value:
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    if isinstance(left, dict | list) or isinstance(right, dict | list):
        return UNDEFINED
    if left is None or right is None:
        if op == "=":
            return left is None and right is None
        if op == "!=":
            return not (left is None and right is None)
        return UNDEFINED
    if isinstance(left, bool) or isinstance(right, bool):
        if not (isinstance(left, bool) and isinstance(right, bool)):
            return UNDEFINED
        if op == "=":
            return left == right
        if op == "!=":
            return left != right
        return UNDEFINED
    if isinstance(left, str) and isinstance(right, str):
        return _OPERATORS[op](left, right)
    a, b = _as_number(left), _as_number(right)
    if a is None or b is None:
        return UNDEFINED
    return _OPERATORS[op](a, b)


def _string_function(function: Callable[..., Value]) -> Callable[..., Value]:
    def checked(*args: Value) -> Value:
        if not all(isinstance(arg, str) for arg in args):
            return UNDEFINED
        return function(*args)

    return checked


def _length(value: Value) -> Value:
    return float(len(value)) if isinstance(value, str) else UNDEFINED


def _as_number_function(value: Value) -> Value:
    number = _as_number(value)
    return UNDEFINED if number is None else number


_FUNCTIONS: Final[dict[str, tuple[int, Callable[..., Value]]]] = {
    "IS_DEFINED": (1, lambda v: v is not UNDEFINED),
    "IS_STRING": (1, lambda v: isinstance(v, str)),
    "IS_NUMBER": (1, _is_number),
    "IS_BOOL": (1, lambda v: isinstance(v, bool)),
    "IS_NULL": (1, lambda v: v is None),
    "AS_NUMBER": (1, _as_number_function),
    "UPPER": (1, _string_function(str.upper)),
    "LOWER": (1, _string_function(str.lower)),
    "LENGTH": (1, _length),
    "STARTS_WITH": (2, _string_function(str.startswith)),
    "ENDS_WITH": (2, _string_function(str.endswith)),
    "CONTAINS": (2, _string_function(lambda s, part: part in s)),
}


# ---------------------------------------------------------------------------------------------
# Condition language: parser (recursive descent; precedence OR < AND < NOT < comparison < unary)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_keyword(self, word: str) -> bool:
        token = self.current
        return token.kind == "ident" and token.text.upper() == word

    def expect(self, kind: str, what: str) -> _Token:
        if self.current.kind != kind:
            raise RouteError(
                f"expected {what}, found {_describe(self.current)}", position=self.current.position
            )
        return self.advance()

    def parse(self) -> _Node:
        if self.current.kind == "eof":
            raise RouteError("empty condition", position=self.current.position)
        node = self.parse_or()
        if self.current.kind != "eof":
            raise RouteError(
                f"unexpected {_describe(self.current)} after a complete expression",
                position=self.current.position,
            )
        return node

    def parse_or(self) -> _Node:
        node = self.parse_and()
        while self.is_keyword("OR"):
            self.advance()
            node = _Or(node, self.parse_and())
        return node

    def parse_and(self) -> _Node:
        node = self.parse_not()
        while self.is_keyword("AND"):
            self.advance()
            node = _And(node, self.parse_not())
        return node

    def parse_not(self) -> _Node:
        if self.is_keyword("NOT"):
            self.advance()
            return _Not(self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self) -> _Node:
        left = self.parse_unary()
        if self.current.kind == "op":
            op = self.advance().value
            right = self.parse_unary()
            if self.current.kind == "op":
                raise RouteError("comparisons do not chain; use AND", position=self.current.position)
            return _Compare(op, left, right)
        return left

    def parse_unary(self) -> _Node:
        if self.current.kind == "-":
            self.advance()
            return _Negate(self.parse_unary())
        return self.parse_primary()

    def parse_primary(self) -> _Node:
        token = self.current
        if token.kind == "(":
            self.advance()
            node = self.parse_or()
            self.expect(")", "')'")
            return node
        if token.kind in ("num", "str"):
            self.advance()
            return _Const(token.value)
        if token.kind == "bracket":
            self.advance()
            return _AppProperty(token.value)
        if token.kind == "sysprop":
            self.advance()
            return _system_property(token)
        if token.kind == "ident":
            upper = token.text.upper()
            if upper in ("AND", "OR", "NOT"):
                raise RouteError(f"expected an operand, found keyword {token.text}", position=token.position)
            self.advance()
            if upper == "TRUE":
                return _Const(True)
            if upper == "FALSE":
                return _Const(False)
            if upper == "NULL":
                return _Const(None)
            if self.current.kind == "(":
                return self.parse_call(token)
            return _AppProperty(token.text)
        raise RouteError(f"expected an operand, found {_describe(token)}", position=token.position)

    def parse_call(self, name_token: _Token) -> _Node:
        name = name_token.text.upper()
        if name not in _FUNCTIONS:
            raise RouteError(f"unknown function {name_token.text}", position=name_token.position)
        self.expect("(", "'('")
        args: list[_Node] = []
        if self.current.kind != ")":
            args.append(self.parse_or())
            while self.current.kind == ",":
                self.advance()
                args.append(self.parse_or())
        self.expect(")", "')' or ','")
        arity = _FUNCTIONS[name][0]
        if len(args) != arity:
            raise RouteError(
                f"{name} takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}",
                position=name_token.position,
            )
        return _Call(name, tuple(args))


def _describe(token: _Token) -> str:
    return "end of condition" if token.kind == "eof" else repr(token.text)


_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _system_property(token: _Token) -> _Node:
    text: str = token.value
    head = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text)
    assert head is not None  # guaranteed by _SYSPROP
    rest = text[head.end() :]
    if head.group().lower() == "body":
        if not rest:
            raise RouteError("$body needs a path such as $body.temperature", position=token.position)
        path: list[str | int] = []
        for step in _PATH_STEP.finditer(rest):
            path.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
        return _BodyPath(token.text, tuple(path))
    if rest:
        raise RouteError(f"system property {token.text} has no members", position=token.position)
    return _SystemProperty(head.group())


@dataclass
class _EvalContext:
    message: HubMessage
    _body: Any = field(default=UNDEFINED)
    _body_read: bool = False

    def body(self) -> Any:
        """The message body as JSON, read once per evaluation; UNDEFINED unless edgeHub would
        query it (content type application/json and encoding UTF-8, as IoT Hub requires)."""
        if not self._body_read:
            self._body_read = True
            self._body = _read_json_body(self.message)
        return self._body


def _read_json_body(message: HubMessage) -> Any:
    content_type = message.system_properties.get("contentType", "")
    content_encoding = message.system_properties.get("contentEncoding", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return UNDEFINED
    if content_encoding.strip().lower() not in ("utf-8", "utf8"):
        return UNDEFINED
    try:
        return json.loads(message.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return UNDEFINED


class Condition:
    """A parsed WHERE condition."""

    __slots__ = ("_root", "text")

    def __init__(self, text: str, root: _Node) -> None:
        self.text = text
        self._root = root

    def evaluate(self, message: HubMessage) -> Value:
        """The condition's value for this message: True, False, UNDEFINED, or another value when
        the condition is not boolean (which never routes)."""
        return self._root.evaluate(_EvalContext(message))

    def matches(self, message: HubMessage) -> bool:
        return self.evaluate(message) is True

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def parse_condition(text: str) -> Condition:
    """Parse a WHERE condition; RouteError carries the 0-based position within `text`."""
    return Condition(text, _Parser(text).parse())


def evaluate_condition(text: str, message: HubMessage) -> bool:
    """Convenience for one-off checks: whether `message` satisfies the condition `text`."""
    return parse_condition(text).matches(message)


# ---------------------------------------------------------------------------------------------
# Routes


@dataclass(frozen=True)
class Route:
    name: str
    source: str
    condition_text: str | None
    sink: Sink
    priority: int
    ttl_secs: int | None
    _source_pattern: _SourcePattern | None = field(default=None, repr=False, compare=False)
    _condition: Condition | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled here so a Route built directly (not via parse_route) still validates and matches.
        if self._source_pattern is None:
            object.__setattr__(self, "_source_pattern", _parse_source(self.source))
        if self._condition is None and self.condition_text is not None:
            object.__setattr__(self, "_condition", parse_condition(self.condition_text))

    def matches(self, message: HubMessage) -> bool:
        """Whether this route takes the message: its source selects it and its condition is true."""
        assert self._source_pattern is not None
        if not self._source_pattern.matches(message):
            return False
        return self._condition is None or self._condition.matches(message)


_ROUTE_HEAD = re.compile(r"^\s*FROM\s+(?P<source>\S+)", re.IGNORECASE)
_ROUTE_TAIL = re.compile(
    r"\s+INTO\s+(?P<sink>\$upstream|BrokeredEndpoint\s*\(\s*(?P<q>[\"']).*?(?P=q)\s*\))\s*$",
    re.IGNORECASE,
)
_WHERE = re.compile(r"^\s+WHERE\s+", re.IGNORECASE)
_ROUTE_KEYS: Final = frozenset({"route", "priority", "timeToLiveSecs"})


def _parse_route_string(name: str, text: str) -> tuple[str, str | None, int, Sink]:
    """(source, condition text, condition offset in `text`, sink)."""
    head = _ROUTE_HEAD.match(text)
    if head is None:
        raise RouteError("a route must start with FROM <source>", route_name=name, position=0)
    tail = _ROUTE_TAIL.search(text, head.end())
    if tail is None:
        into = re.search(r"\sINTO\s+(.*)$", text[head.end() :], re.IGNORECASE)
        if into is not None:
            try:
                _parse_sink(into.group(1))
            except RouteError as error:
                raise error.for_route(name) from None
        raise RouteError("a route must end with INTO <sink>", route_name=name)
    try:
        sink = _parse_sink(tail.group("sink"))
        source = head.group("source")
        _parse_source(source)
    except RouteError as error:
        raise error.for_route(name) from None
    middle = text[head.end() : tail.start()]
    if not middle.strip():
        return source, None, 0, sink
    where = _WHERE.match(middle)
    if where is None and middle.strip().upper() == "WHERE":
        raise RouteError(
            "WHERE needs a condition",
            route_name=name,
            position=head.end() + len(middle) - len(middle.lstrip()),
        )
    if where is None:
        raise RouteError(
            f"expected WHERE or INTO after the source, found {middle.strip()!r}",
            route_name=name,
            position=head.end() + len(middle) - len(middle.lstrip()),
        )
    condition_start = head.end() + where.end()
    condition = text[condition_start : tail.start()].rstrip()
    return source, condition, condition_start, sink


def parse_route(name: str, spec: str | Mapping[str, Any], default_ttl_secs: int) -> Route:
    """One route from the manifest: a string, or `{"route", "priority", "timeToLiveSecs"}`.

    `default_ttl_secs` is storeAndForwardConfiguration.timeToLiveSecs; a route's own positive TTL
    overrides it (edgeHub reads a route TTL of 0 as "not set"). A resolved TTL <= 0 becomes None:
    no expiry.
    """
    if not isinstance(name, str) or not _ROUTE_NAME.match(name):
        raise RouteError(
            "route names must be non-empty and contain none of '.', '$', '#', ' '", route_name=name
        )
    priority = DEFAULT_PRIORITY
    ttl = 0
    if isinstance(spec, str):
        text = spec
    elif isinstance(spec, Mapping):
        unknown = set(spec) - _ROUTE_KEYS
        if unknown:
            raise RouteError(f"unknown route keys {sorted(unknown)}", route_name=name)
        text = spec.get("route")  # type: ignore[assignment]
        if not isinstance(text, str):
            raise RouteError("a route object needs a string 'route'", route_name=name)
        if "priority" in spec:
            priority = spec["priority"]
            if (
                not isinstance(priority, int)
                or isinstance(priority, bool)
                or not 0 <= priority <= MAX_PRIORITY
            ):
                raise RouteError(
                    f"priority must be an integer 0..{MAX_PRIORITY}, got {priority!r}", route_name=name
                )
        if "timeToLiveSecs" in spec:
            ttl = spec["timeToLiveSecs"]
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
                raise RouteError(
                    f"timeToLiveSecs must be a non-negative integer, got {ttl!r}", route_name=name
                )
    else:
        raise RouteError(f"a route is a string or an object, got {type(spec).__name__}", route_name=name)

    source, condition_text, condition_start, sink = _parse_route_string(name, text)
    condition = None
    if condition_text is not None:
        try:
            condition = parse_condition(condition_text)
        except RouteError as error:
            raise error.for_route(name, condition_start) from None
    resolved_ttl = ttl if ttl > 0 else default_ttl_secs
    return Route(
        name=name,
        source=source,
        condition_text=condition_text,
        sink=sink,
        priority=priority,
        ttl_secs=resolved_ttl if resolved_ttl > 0 else None,
        _source_pattern=_parse_source(source),
        _condition=condition,
    )


def parse_routes(routes: Mapping[str, Any], default_ttl_secs: int) -> list[Route]:
    """All routes of `$edgeHub.properties.desired.routes`, in manifest order."""
    if not isinstance(routes, Mapping):
        raise RouteError(f"routes must be an object of name -> route, got {type(routes).__name__}")
    return [parse_route(name, spec, default_ttl_secs) for name, spec in routes.items()]


def route_message(routes: Sequence[Route], message: HubMessage) -> list[Route]:
    """The routes that deliver `message`, one per endpoint.

    edgeHub delivers a message once per endpoint even when several routes lead there; the route
    kept is the one with the highest priority (lowest number; the earlier route on a tie), and its
    TTL applies. Endpoints come in the order their first matching route appears.
    """
    chosen: dict[str, Route] = {}
    for route in routes:
        if not route.matches(message):
            continue
        endpoint = route.sink.endpoint_id
        current = chosen.get(endpoint)
        if current is None or route.priority < current.priority:
            chosen[endpoint] = route
    return list(chosen.values())

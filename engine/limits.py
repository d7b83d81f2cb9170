"""What graphrun refuses to read, and the readers that enforce it without recursion.

Graph documents (YAML or JSON), ComfyUI workflows (JSON, PNG chunks) and param values are
untrusted input: a few hundred bytes can ask for gigabytes (YAML aliases), crash Python's
recursion (deep nesting) or its int-to-text conversion (thousands of digits). Every limit is
checked while reading, in one pass with an explicit stack, and reported as one located error:

* nesting: at most :data:`MAX_DEPTH` levels of lists and mappings;
* YAML aliases: ``*name`` may repeat at most :data:`MAX_ALIAS_VALUES` values in all (anchors
  and ``<<: *base`` merges used modestly work; an alias may not refer to a value it is inside);
* integers: at most :data:`MAX_INT_DIGITS` digits (INT inputs then check their 64-bit range);
* text: no NUL characters and no unpaired UTF-16 surrogates (neither can reach a file name,
  the console or a tokenizer safely);
* YAML tags: only JSON's kinds of values (text, numbers, booleans, null, lists, mappings);
  ``!!python/...``, ``!!binary``, ``!!set``, ``!!timestamp`` and custom tags are refused, and
  a date such as ``2024-01-01`` stays text;
* files: at most :data:`MAX_DOCUMENT_BYTES` for a YAML or JSON document.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import yaml

MAX_DEPTH = 100
MAX_ALIAS_VALUES = 10_000
MAX_INT_DIGITS = 100
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_VALUES = 10_000_000  # values in a Python object handed over directly (shared parts count each time)

_INT_LIMIT = 10**MAX_INT_DIGITS
_MAX_INT_TEXT = 4 * MAX_INT_DIGITS  # longer integer text is refused before converting it (base 2 needs ~3.3x)

Path_ = tuple[Union[str, int], ...]


class LimitError(ValueError):
    """A document exceeds what graphrun reads. line/column are 1-based where known; path is the
    place in the document (keys and list indexes) where known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None, path: Path_ = ()):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.path = path

    def where(self) -> str:
        """'line 3, column 7: ' / 'at nodes.a.seed: ' / '' for messages without a file position field."""
        if self.line is not None:
            return f"line {self.line}, column {self.column or 1}: "
        if self.path:
            return f"at {format_path(self.path)}: "
        return ""


class YAMLSyntaxError(ValueError):
    """The text is not YAML (or JSON). context/problem as PyYAML words them; line/column 1-based."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None):
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column


def format_path(path: Path_) -> str:
    """``("nodes", "a", "seed")`` -> ``nodes.a.seed``; list indexes as ``[0]``."""
    if len(path) > 12:  # a path as deep as the nesting limit is unreadable in full
        return f"{format_path(path[:6])}...{format_path(path[-3:])} ({len(path)} levels)"
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:
            out += ("." if out else "") + short_repr(part, 40)
    return out or "the document"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-:]{1,40}")


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() for messages: cut to about ``limit`` characters, safe for any value.

    (repr of a huge int raises ValueError and of a deeply nested list RecursionError; a 5 MB
    string must not end up in a message either.)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict)) and _too_deep_for_repr(value):
        return f"<a {type(value).__name__} nested too deeply to show>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_deep_for_repr(value: Any, depth: int = 20) -> bool:
    stack = [(value, 0)]
    seen = 0
    while stack:
        item, level = stack.pop()
        seen += 1
        if level > depth or seen > 10_000:
            return True
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, level + 1) for v in item)
    return False


# ---------------------------------------------------------------- text and numbers


def text_problem(text: str) -> str | None:
    """Why a string cannot be used (a NUL character, an unpaired surrogate), or None."""
    if "\x00" in text:
        return "text contains a NUL character (\\0)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = short_repr(text[exc.start])[1:-1]
            return f"text contains an unpaired surrogate ({shown}), which is not valid Unicode"
    return None


def join_surrogates(text: str) -> str:
    """A string with surrogate pairs (``"\\ud83d\\ude00"`` as JSON writes an emoji) made into the
    characters they stand for; unpaired surrogates stay."""
    if text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


BIG_INT = (
    f"an integer of more than {MAX_INT_DIGITS} digits is too large (graphrun reads at most {MAX_INT_DIGITS} digits)"
)


def int_problem(value: int) -> str | None:
    """Why an integer is too large to read, or None."""
    if value.bit_length() >= 333 and abs(value) >= _INT_LIMIT:
        return BIG_INT
    return None


# ---------------------------------------------------------------- YAML


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit types minus timestamps: ``2024-01-01`` stays text (graphrun has no date values)."""


_Resolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = _T + "str", _T + "int", _T + "float", _T + "bool", _T + "null"
_SEQ, _MAP, _MERGE = _T + "seq", _T + "map", _T + "merge"
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL}
_CONSTRUCT = yaml.constructor.SafeConstructor()
_RESOLVER = _Resolver()
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml: the same events, some 20x faster


def _mark(mark: Any) -> tuple[int | None, int | None]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (None, None)


@dataclass
class _Open:
    """A list or mapping being read."""

    value: Any
    path: Path_
    anchor: str | None
    line: int
    column: int
    size: int = 1  # values inside, itself included, aliases counted as what they repeat
    depth: int = 1  # levels of nesting from here down
    key: Any = None
    key_mark: Any = None
    has_key: bool = False
    merges: list = field(default_factory=list)  # (value, mark) of `<<` entries


@dataclass
class YAMLResult:
    """A parsed YAML document: the data, where each value starts (path -> 1-based line, column),
    and keys that appear twice in one mapping (path, line, column)."""

    data: Any
    positions: dict[Path_, tuple[int, int]]
    duplicates: list[tuple[Path_, int, int]]


def parse_yaml(text: str) -> YAMLResult:
    """Parse one YAML (or JSON) document within the limits above, without recursion.

    Raises YAMLSyntaxError for text that is not YAML and LimitError for a document beyond a limit.
    """
    if _FAST_LOADER is not None:
        try:
            return _compose(yaml.parse(text, Loader=_FAST_LOADER))
        except (yaml.YAMLError, UnicodeEncodeError):
            pass  # PyYAML's own parser words its errors better and reads JSON's "\ud83d\ude00" escapes
    try:
        return _compose(yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YAMLSyntaxError(problem, *_mark(mark)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YAMLSyntaxError(f"the character U+{code:04X} is not allowed in YAML text", line, column) from None
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(str(exc)) from None


def _compose(events: Iterator[Any]) -> YAMLResult:
    """Build Python values from parser events with an explicit stack, checking every limit."""
    positions: dict[Path_, tuple[int, int]] = {}
    duplicates: list[tuple[Path_, int, int]] = []
    anchors: dict[str, tuple[Any, int, int, int]] = {}  # name -> (value, size, depth, line)
    open_anchors: set[str] = set()
    stack: list[_Open] = []
    root: list[Any] = []
    documents = 0
    alias_values = 0

    def child_path() -> Path_:
        top = stack[-1]
        if isinstance(top.value, list):
            return top.path + (len(top.value),)
        return top.path + (top.key,) if top.has_key else top.path

    def add(value: Any, size: int, depth: int, mark: Any) -> None:
        """Put a finished value into the list or mapping being read (or make it the document)."""
        line, column = _mark(mark)
        if not stack:
            root.append(value)
            positions.setdefault((), (line, column))
            return
        top = stack[-1]
        top.size += size
        top.depth = max(top.depth, depth + 1)
        if isinstance(top.value, list):
            positions[top.path + (len(top.value),)] = (line, column)
            top.value.append(value)
            return
        if not top.has_key:
            if isinstance(value, (dict, list)):
                raise LimitError("a mapping key must be text or a number, not a list or mapping", line, column)
            top.key, top.key_mark, top.has_key = value, mark, True
            return
        key, key_mark = top.key, top.key_mark
        top.has_key = False
        if key is _MERGE_KEY:
            top.merges.append((value, mark))
            return
        path = top.path + (key,)
        if key in top.value:
            duplicates.append((path, *_mark(key_mark)))
        top.value[key] = value
        positions[path] = (line, column)

    for event in events:
        kind = type(event)
        if kind is yaml.ScalarEvent:
            value = _scalar(event, bool(stack) and isinstance(stack[-1].value, dict) and not stack[-1].has_key)
            if event.anchor is not None:
                _new_anchor(event, anchors, open_anchors)
                anchors[event.anchor] = (value, 1, 0, event.start_mark.line + 1)
            add(value, 1, 0, event.start_mark)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            line, column = _mark(event.start_mark)
            if len(stack) + 1 > MAX_DEPTH:
                raise LimitError(f"lists and mappings nest deeper than {MAX_DEPTH} levels here", line, column)
            mapping = kind is yaml.MappingStartEvent
            if event.tag not in (None, "!", _MAP if mapping else _SEQ):
                raise LimitError(_tag_message(event.tag), line, column)
            if stack and isinstance(stack[-1].value, dict) and not stack[-1].has_key:
                raise LimitError("a mapping key must be text or a number, not a list or mapping", line, column)
            path = child_path() if stack else ()
            positions[path] = (line, column)
            if event.anchor is not None:
                _new_anchor(event, anchors, open_anchors)
                open_anchors.add(event.anchor)
            stack.append(_Open({} if mapping else [], path, event.anchor, line, column))
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            done = stack.pop()
            if done.merges:
                done.value = _merged(done)
            if done.anchor is not None:
                open_anchors.discard(done.anchor)
                anchors[done.anchor] = (done.value, done.size, done.depth, done.line)
            add(done.value, done.size, done.depth, _StartMark(done.line, done.column))
        elif kind is yaml.AliasEvent:
            line, column = _mark(event.start_mark)
            if event.anchor in open_anchors:
                raise LimitError(
                    f"alias *{event.anchor} is used inside the value it names (a structure that contains itself)",
                    line, column,
                )
            if event.anchor not in anchors:
                raise YAMLSyntaxError(f"found undefined alias {event.anchor!r}", line, column)
            value, size, depth, _ = anchors[event.anchor]
            alias_values += size
            if alias_values > MAX_ALIAS_VALUES:
                raise LimitError(
                    f"YAML aliases repeat more than {MAX_ALIAS_VALUES} values in all (is this a 'billion laughs' "
                    "document?); write the values out, or use fewer aliases",
                    line, column,
                )
            if len(stack) + depth > MAX_DEPTH:
                raise LimitError(
                    f"alias *{event.anchor} nests lists and mappings deeper than {MAX_DEPTH} levels", line, column
                )
            add(value, size, depth, event.start_mark)
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise YAMLSyntaxError(
                    "expected a single document in the stream but found another document", *_mark(event.start_mark)
                )
    return YAMLResult(root[0] if root else None, positions, duplicates)


class _MergeKey:
    """The ``<<`` key of a YAML merge."""


_MERGE_KEY = _MergeKey()


@dataclass
class _StartMark:
    """A finished list or mapping's start, in PyYAML's 0-based mark form."""

    line1: int
    column1: int

    @property
    def line(self) -> int:
        return self.line1 - 1

    @property
    def column(self) -> int:
        return self.column1 - 1


def _new_anchor(event: Any, anchors: dict, open_anchors: set) -> None:
    if event.anchor in anchors or event.anchor in open_anchors:
        first = anchors[event.anchor][3] if event.anchor in anchors else None
        raise YAMLSyntaxError(
            f"found duplicate anchor {event.anchor!r}" + (f" (first defined on line {first})" if first else ""),
            *_mark(event.start_mark),
        )


def _tag_message(tag: str) -> str:
    shown = "!!" + tag[len(_T):] if tag.startswith(_T) else tag
    return (
        f"the YAML tag {shown} is not supported: a graph holds text, numbers, booleans, null, lists and "
        "mappings only (quote the value to keep it as text)"
    )


def _scalar(event: Any, is_key: bool) -> Any:
    """One scalar as the safe loader reads it, within the limits."""
    line, column = _mark(event.start_mark)
    text = event.value
    tag = event.tag
    if tag is None or tag == "!":
        tag = _RESOLVER.resolve(yaml.ScalarNode, text, event.implicit)
    if tag == _MERGE and is_key:
        return _MERGE_KEY
    if tag not in _SCALAR_TAGS:
        raise LimitError(_tag_message(tag), line, column)
    if tag == _STR:
        text = join_surrogates(text)
        problem = text_problem(text)
        if problem:
            raise LimitError(problem, line, column)
        return text
    if tag == _INT:
        if len(text) > _MAX_INT_TEXT:
            raise LimitError(BIG_INT, line, column)
        try:
            value = _CONSTRUCT.construct_yaml_int(yaml.ScalarNode(tag, text))
        except ValueError:
            raise YAMLSyntaxError(f"{text!r} is not an integer", line, column) from None
        problem = int_problem(value)
        if problem:
            raise LimitError(problem, line, column)
        return value
    try:
        if tag == _FLOAT:
            return _CONSTRUCT.construct_yaml_float(yaml.ScalarNode(tag, text))
        if tag == _BOOL:
            return _CONSTRUCT.construct_yaml_bool(yaml.ScalarNode(tag, text))
    except (ValueError, KeyError):
        raise YAMLSyntaxError(f"{short_repr(text)} is not a {tag[len(_T):]}", line, column) from None
    return None  # null


def _merged(done: _Open) -> dict:
    """A mapping with its ``<<`` merges applied as PyYAML applies them: keys written in the mapping
    win over merged ones, and in ``<<: [*a, *b]`` the earlier mapping wins."""
    base: dict = {}
    for value, mark in done.merges:
        if isinstance(value, dict):
            parts = [value]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            parts = list(reversed(value))
        else:
            raise YAMLSyntaxError(
                "while constructing a mapping expected a mapping or list of mappings for merging", *_mark(mark)
            )
        for part in parts:
            base.update(part)
    return {**base, **done.value}


# ---------------------------------------------------------------- JSON

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|-?\d+')


class _BigInt(Exception):
    pass


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BigInt(text)
    return int(text)


def parse_json(text: str) -> tuple[Any, list[str]]:
    """Parse JSON text within the limits. Returns (value, keys that appear twice in one object).

    Raises json.JSONDecodeError for text that is not JSON and LimitError (with the line) for a
    document beyond a limit. (json.loads itself recurses; a document deeper than Python's stack
    is reported as too deep, like any document over :data:`MAX_DEPTH`.)
    """
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            duplicates.extend(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return obj

    try:
        value = json.loads(text, parse_int=_json_int, object_pairs_hook=pairs)
    except RecursionError:
        raise _json_limit(text, "depth") from None
    except _BigInt:
        raise _json_limit(text, "int") from None
    try:
        check_value(value)
    except LimitError as exc:
        if exc.message.startswith("lists and mappings nest"):
            raise _json_limit(text, "depth") from None
        raise
    return value, duplicates


def _json_limit(text: str, kind: str) -> LimitError:
    """The LimitError for JSON text, with the line and column of the first place over the limit."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if kind == "depth" and depth > MAX_DEPTH:
                break
        elif token in "]}":
            depth -= 1
        elif kind == "int" and token[0] != '"' and len(token.lstrip("-")) > MAX_INT_DIGITS:
            break
    else:
        match = None
    message = (
        f"lists and mappings nest deeper than {MAX_DEPTH} levels here"
        if kind == "depth"
        else BIG_INT
    )
    if match is None:
        return LimitError(message)
    line = text.count("\n", 0, match.start()) + 1
    return LimitError(message, line, match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1)


# ---------------------------------------------------------------- Python values


def check_value(value: Any, *, text: bool = True, max_problems: int = 20) -> None:
    """Check a parsed or hand-made value (dicts, lists, tuples, scalars) against the limits.

    Iterative: nesting deeper than MAX_DEPTH, a list or dict inside itself, more than MAX_VALUES
    values, integers over MAX_INT_DIGITS digits and (with ``text``) bad strings, in keys too.
    Raises LimitError for the first problem, with its path.
    """
    problems = list(value_problems(value, text=text, max_problems=1))
    if problems:
        raise problems[0]


def value_problems(value: Any, *, text: bool = True, max_problems: int = 20) -> Iterator[LimitError]:
    """Every problem :func:`check_value` would raise for, up to ``max_problems`` (structural ones stop the walk)."""
    found = 0
    count = 0
    on_path: set[int] = set()  # ids of the containers from the root to the one being read
    # Paths are kept as (parent, key) links and spelt out only for a problem: most values have none.
    stack: list[tuple[Any, Any, int]] = [(value, None, 1)]
    leave = object()

    def spell(link: Any) -> Path_:
        parts: list[Any] = []
        while link is not None:
            link, key = link
            parts.append(key)
        return tuple(reversed(parts))

    def scalar_problem(item: Any) -> str | None:
        if item.__class__ is str:
            return text_problem(item) if text else None
        if isinstance(item, str):
            return text_problem(str(item)) if text else None
        if isinstance(item, int) and not isinstance(item, bool):
            return int_problem(item)
        return None

    if not isinstance(value, (dict, list, tuple)):
        problem = scalar_problem(value)
        if problem:
            yield LimitError(problem)
        return
    while stack:
        item, link, depth = stack.pop()
        if item is leave:
            on_path.discard(link)
            continue
        if depth > MAX_DEPTH:
            yield LimitError(f"lists and mappings nest deeper than {MAX_DEPTH} levels here", path=spell(link))
            return
        if id(item) in on_path:
            yield LimitError("a list or mapping contains itself", path=spell(link))
            return
        on_path.add(id(item))
        stack.append((leave, id(item), 0))
        is_dict = isinstance(item, dict)
        pairs = item.items() if is_dict else enumerate(item)
        count += len(item)
        if count > MAX_VALUES:
            yield LimitError(f"the document holds more than {MAX_VALUES} values", path=spell(link))
            return
        for key, child in pairs:
            cls = child.__class__
            child_problem = key_problem = None
            if cls is str:  # the common cases first: this loop sees every value of a large graph
                if not (child.isascii() and "\x00" not in child):
                    child_problem = scalar_problem(child)
            elif cls is dict or cls is list or isinstance(child, (dict, list, tuple)):
                stack.append((child, (link, key), depth + 1))
            elif not (cls is float or cls is bool or child is None):
                child_problem = scalar_problem(child)
            if is_dict and not (key.__class__ is str and key.isascii() and "\x00" not in key):
                key_problem = scalar_problem(key)
            for problem, where in ((key_problem, "key: "), (child_problem, "")):
                if problem:
                    found += 1
                    yield LimitError(where + problem, path=spell((link, key)))
                    if found >= max_problems:
                        return

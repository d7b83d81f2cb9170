"""The frontend's transforms of widget values before it queues a prompt, as far as they are deterministic.

* Dynamic prompts (`dynamicPrompts` STRING widgets): `/* … */` and `// …` comments are stripped, `{a|b}` choice
  groups are found (ComfyUI would pick an option at random, so the converter reports them), braces of groups
  without `|` are removed and `\\{ \\} \\|` unescaped.
* `applyTextReplacements` on save-node filename prefixes: `%date:…%` and `%Node.widget%`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

__all__ = [
    "strip_prompt_comments",
    "expand_dynamic_prompt",
    "SAVE_NODE_TYPES",
    "NOT_FOUND",
    "WidgetFinder",
    "format_date",
    "apply_text_replacements",
]

# --- dynamic prompts ------------------------------------------------------------------------------------------------

# The frontend's comment regex; JavaScript's `.` stops at any line terminator, hence the explicit class.
_COMMENT_RE = re.compile(r"/\*[\s\S]*?\*/|//[^\n\r\u2028\u2029]*")
_UNESCAPE_RE = re.compile(r"\\([{}|])")


def strip_prompt_comments(text: str) -> str:
    """Remove `/* … */` and `// …` comments like the frontend (which also eats the tail of `http://…`)."""
    return _COMMENT_RE.sub("", text)


def expand_dynamic_prompt(text: str) -> tuple[str, list[str]]:
    """Apply the frontend's dynamic-prompt processing as far as it is deterministic.

    Returns the processed text and the list of `{a|b}` choice groups found (outermost ones, as written).
    With no choice groups the text is exactly what ComfyUI sends: comments stripped, braces of groups without
    `|` removed, `\\{ \\} \\|` unescaped. With choice groups ComfyUI would pick options at random; the caller
    decides what to do, the returned text then still contains the groups.
    """
    body, choices = _expand_groups(strip_prompt_comments(text))
    return _UNESCAPE_RE.sub(r"\1", body), choices


@dataclass
class _GroupFrame:
    start: int  # index of the opening brace; -1 for the top level
    options: list[list[str]]
    choices_before: int  # number of choice groups recorded when this group opened


def _expand_groups(text: str) -> tuple[str, list[str]]:
    """Resolve `{…}` groups without `|` and record groups with `|`. Iterative: nesting depth is unbounded."""
    stack = [_GroupFrame(-1, [[]], 0)]
    choices: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        frame = stack[-1]
        if char == "\\" and i + 1 < len(text):
            frame.options[-1].append(text[i : i + 2])  # escapes survive until the final unescape
            i += 2
            continue
        if char == "{":
            stack.append(_GroupFrame(i, [[]], len(choices)))
        elif char == "|" and len(stack) > 1:
            frame.options.append([])
        elif char == "}" and len(stack) > 1:
            _close_group(stack, choices, text[frame.start : i + 1])
        else:
            frame.options[-1].append(char)
        i += 1
    while len(stack) > 1:  # an unclosed group runs to the end of the text
        _close_group(stack, choices, text[stack[-1].start :])
    return "".join(stack[0].options[0]), choices


def _close_group(stack: list[_GroupFrame], choices: list[str], source: str) -> None:
    frame = stack.pop()
    if len(frame.options) > 1:
        del choices[frame.choices_before :]  # report the outermost choice group only
        choices.append(source)
        piece = source
    else:
        piece = "".join(frame.options[0])
    stack[-1].options[-1].append(piece)


# --- text replacements in save-node filename prefixes ---------------------------------------------------------

_REPLACE_RE = re.compile(r"%([^%]+)%")
_DATE_TOKEN_RE = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")

#: Node types whose `filename_prefix` the frontend passes through `applyTextReplacements`.
SAVE_NODE_TYPES: frozenset[str] = frozenset(
    {
        "SaveImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveWEBM",
        "SaveVideo",
        "SaveAudio",
        "SaveAudioMP3",
        "SaveAudioOpus",
        "SaveLatent",
        "SaveGLB",
        "CheckpointSave",
        "ImageOnlyCheckpointSave",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "LoraSave",
    }
)

#: Returned by a widget finder when the node or widget does not exist.
NOT_FOUND = object()

WidgetFinder = Callable[[str, str], Any]


def format_date(fmt: str, now: datetime) -> str:
    """Expand the frontend's date tokens (`yyyy yy MM M dd d hh h mm m ss s`, 24-hour clock)."""
    fields = {
        "yyyy": f"{now.year}",
        "yy": f"{now.year}"[2:],
        "MM": f"{now.month:02d}",
        "M": f"{now.month}",
        "dd": f"{now.day:02d}",
        "d": f"{now.day}",
        "hh": f"{now.hour:02d}",
        "h": f"{now.hour}",
        "mm": f"{now.minute:02d}",
        "m": f"{now.minute}",
        "ss": f"{now.second:02d}",
        "s": f"{now.second}",
    }
    return _DATE_TOKEN_RE.sub(lambda m: fields[m.group(0)], fmt)


def apply_text_replacements(value: str, now: datetime, find_widget: WidgetFinder | None = None) -> str:
    """The frontend's `applyTextReplacements` for save-node filename prefixes.

    `%Node.widget%` (node found by "Node name for S&R", then by title) becomes the widget value with `/` and `\\`
    replaced by `_`; any other `%text%` with no single dot and starting with `date:` becomes a formatted date.
    Everything else (`%width%`, unknown nodes) is left for the backend.
    """

    def substitute(match: re.Match[str]) -> str:
        text = match.group(1)
        parts = text.split(".")
        if len(parts) != 2:
            # Same as the frontend: with 0 or 2+ dots only the part before the first dot is considered.
            if parts[0].startswith("date:"):
                return format_date(parts[0][len("date:") :], now)
            return match.group(0)
        found = find_widget(parts[0], parts[1]) if find_widget else NOT_FOUND
        if found is NOT_FOUND:
            return match.group(0)
        return re.sub(r"[/\\]", "_", _js_string("" if found is None else found))

    return _REPLACE_RE.sub(substitute, value)


def _js_string(value: Any) -> str:
    """String(value) as JavaScript writes it, for the value kinds widgets hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            power = int(exponent)
            text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
        return text
    if isinstance(value, list):
        return ",".join(_js_string(v) for v in value)
    return str(value)


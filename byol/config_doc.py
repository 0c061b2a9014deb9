"""The config reference, generated from the schema itself (byol/config.py): every key with its type,
default and the comment written beside it, so the documentation cannot drift from the code.

    python -m byol.config_doc              # the reference as Markdown (the docs site builds it so)

The comments are read from config.py's source (`tokenize`): a field's comment is the one on its line,
plus the comment-only lines that follow it at the same column (a comment continued). A key without
a comment is an error here (`tests/test_config_doc.py`), so a new setting arrives documented.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass

from byol import config as schema


@dataclass
class KeyDoc:
    key: str            # section.key (section.sub.key for nested sections)
    type: str
    default: object
    comment: str
    choices: tuple = ()


def _comments(cls) -> dict[str, str]:
    """{field name: its comment} for one dataclass, from its source lines."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))          # a class defined inside a function is indented
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments: dict[str, str] = {}
    current, column = None, None
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and i + 1 < len(tokens) and tokens[i + 1].string == ":":
            current, column = tok.string, None
        elif tok.type == tokenize.COMMENT and current is not None:
            line_start = tok.line.lstrip().startswith("#")      # alone on its line: a continuation
            if column is None and not line_start:        # on the field's own line
                comments[current], column = tok.string.lstrip("# ").rstrip(), tok.start[1]
            elif column is not None and tok.start[1] == column:   # a continued comment, aligned
                comments[current] += " " + tok.string.lstrip("# ").rstrip()
            else:
                current = None
    return comments


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "(" + ", ".join(_type_name(a) for a in typing.get_args(hint)) + ")"
    args = typing.get_args(hint)
    if args and origin is not None and origin is not dict:
        return " | ".join(_type_name(a) for a in args)
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def schema_keys(cls=schema.Config, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of the schema, in declaration order."""
    hints, comments, out = typing.get_type_hints(cls), _comments(cls), []
    defaults = cls()
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += schema_keys(hint, key + ".")
        else:
            out.append(KeyDoc(key, _type_name(hint), getattr(defaults, f.name), comments.get(f.name, ""),
                              schema.CHOICES.get(key, ())))
    return out


def _value(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, tuple):
        return "(" + ", ".join(map(str, value)) + ")"
    return "{}" if value == {} else str(value)


def markdown() -> str:
    """The reference page: one table per section, every key, its type, default and comment."""
    keys = schema_keys()
    out = ["# Config reference", "",
           "Every key of the schema (`byol/config.py`), generated from it when the site is built: the type, "
           "the default and the comment beside the key in the code. Set keys in a YAML file (`--config`) or on "
           "the command line as `section.key=value`; unknown keys and wrong types are errors that name the key.",
           ""]
    section = None
    for k in keys:
        top = k.key.split(".")[0]
        if top != section:
            section = top
            out += ["", f"## `{section}`", "", "| key | type | default | what |", "|---|---|---|---|"]
        what = k.comment.replace("|", "\\|")
        if k.choices and not all(c in k.comment for c in k.choices):
            what += f" (one of: {', '.join(k.choices)})"
        out.append(f"| `{k.key}` | {k.type.replace('|', chr(92) + '|')} | `{_value(k.default)}` | {what} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

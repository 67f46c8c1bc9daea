"""YAML loading that remembers the line of every value.

PyYAML's constructors drop source positions, so we compose the node graph ourselves and
build plain Python values next to a ``{path: line}`` map. A path is the tuple of mapping
keys and sequence indexes that leads to a value, e.g. ``("nodes", 3, "asn")``.
Duplicate mapping keys are reported (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from router.config.problems import Problem

YamlPath = tuple[str | int, ...]

# libyaml's parser composes the same nodes, with the same marks, several times faster
# (2,196 nodes of the world deployment: about 3 s in pure Python).
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class LocatedYaml:
    """A parsed YAML document with the 1-based line of each value."""

    file: str
    data: Any
    lines: dict[YamlPath, int] = field(default_factory=dict)
    key_order: dict[YamlPath, list[tuple[str, int]]] = field(default_factory=dict)

    def line(self, path: YamlPath) -> int:
        """Line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: YamlPath, message: str) -> Problem:
        return Problem(self.file, self.line(path), message)


def load_yaml(path: Path, display: str) -> tuple[LocatedYaml | None, list[Problem]]:
    """Parse ``path``; on a syntax error return ``None`` and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(display, 1, f"cannot read file: {exc}")]
    fast = _load_flow_lines(text, display)
    if fast is not None:
        return fast, []
    try:
        try:
            root = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            # Parse again in pure Python so a broken file reads the same with or without
            # libyaml (its messages differ); only broken files pay for it.
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            what = f"{what} (column {mark.column + 1})"
        if exc.context and exc.context_mark is not None and exc.problem:
            # e.g. "while parsing a flow mapping" that began on an earlier line: say where.
            what = f"{what}, {exc.context} that starts at line {exc.context_mark.line + 1}"
        return None, [Problem(display, line, f"YAML syntax error: {what}")]
    except yaml.YAMLError as exc:
        return None, [Problem(display, 1, f"YAML syntax error: {exc}")]
    doc = LocatedYaml(display, None)
    problems: list[Problem] = []
    if root is None:
        doc.data = None
        return doc, problems
    doc.data = _build(root, (), doc, problems)
    return doc, problems


def _scalar(node: yaml.ScalarNode) -> Any:
    # The composer already resolved the implicit tag (int, float, bool, null, str), so we
    # only dispatch to SafeLoader's constructor for it; unknown tags raise ConstructorError.
    constructors = yaml.SafeLoader.yaml_constructors
    constructor = constructors.get(node.tag) or constructors[None]
    return constructor(_SCALAR_LOADER, node)


_SCALAR_LOADER = yaml.SafeLoader("")


def _build(node: yaml.Node, path: YamlPath, doc: LocatedYaml, problems: list[Problem]) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        order: list[tuple[str, int]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem(doc.file, key_node.start_mark.line + 1, "mapping keys must be scalars")
                )
                continue
            key = _scalar(key_node)
            key_line = key_node.start_mark.line + 1
            if key in result:
                first = doc.lines.get(path + (key,), key_line)
                problems.append(
                    Problem(
                        doc.file, key_line, f'duplicate key "{key}" (first defined at line {first})'
                    )
                )
                continue
            order.append((str(key), key_line))
            result[key] = _build(value_node, path + (key,), doc, problems)
            # The key's own line is the most useful place to point at for its value.
            doc.lines[path + (key,)] = key_line
        doc.key_order[path] = order
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, problems) for i, item in enumerate(node.value)]
    try:
        return _scalar(node)
    except yaml.YAMLError as exc:
        problems.append(Problem(doc.file, node.start_mark.line + 1, f"bad value: {exc}"))
        return None


# The shape a generated inventory is written in (geodata/build_world.py): top-level keys,
# each holding a block sequence of one-line flow mappings of simple scalars. PyYAML composes
# such a file at about 15 us a value (20,000 nodes: seconds, even with libyaml), so
# ``_load_flow_lines`` reads it directly, accepting only what it can read exactly as YAML
# does: any other line, value or key (and any duplicate) sends the file to the full parser.
_SKIP_LINE = re.compile(r"\s*(?:#.*)?")
_TOP_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?:\s+#.*)?\s*")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# Unrolled (a run of plain characters, then escapes each followed by a run) so that the
# regex engine takes a string in runs, not a branch per character.
_QUOTED = r'"[^"\\]*(?:\\(?:u(?![dD][89a-fA-F])[0-9A-Fa-f]{4}|["\\])[^"\\]*)*"'
_TOKEN = r"[A-Za-z0-9_.+-]+"
# A whole item line: "  - {" entries "}" and an optional comment. Checked as one regex so
# that the entries can then be taken out with one findall (with a regex call and a
# classification per value, the 170,000 values of the world inventory took 0.29 s of CPU;
# this way 0.19 s).
_ITEM_LINE = re.compile(
    rf"  - \{{\s*((?:{_NAME}:\s+(?:{_QUOTED}|{_TOKEN})\s*,\s*)*{_NAME}:\s+(?:{_QUOTED}|{_TOKEN}))"
    r"\s*\}\s*(?:#.*)?"
)
# One entry, its value split by kind into groups (name, then exactly one of): a quoted
# string without escapes or control characters (its text is its value), a quoted string
# json reads with the same meaning as YAML (the escapes \", \\ and \uXXXX outside the
# surrogates), an int, a float, a dotted quad, a word, or any other token (not plain
# enough: the file goes to PyYAML). The lookahead keeps a kind from taking a token's prefix.
_ENTRY = re.compile(
    rf"({_NAME}):\s+"
    r'(?:("[^"\\\x00-\x1f]*")'
    rf"|({_QUOTED})"
    r"|([-+]?(?:0|[1-9][0-9]*))"
    r"|([-+]?(?:0|[1-9][0-9]*)\.[0-9]+)"
    r"|([0-9]{1,3}(?:\.[0-9]{1,3}){3})"
    r"|([A-Za-z][A-Za-z0-9_-]*)"
    rf"|({_TOKEN}))"
    r"(?=\s*,|$)"
)
# Words YAML 1.1 reads as booleans or null (and y/n, which some YAML readers do): never plain
# strings here.
_SPECIAL_WORDS = frozenset({"yes", "no", "true", "false", "on", "off", "null", "y", "n"})
# Tabs, and what YAML (or str.splitlines) takes as line breaks besides "\n".
_OTHER_BREAKS = re.compile("[\t\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _item(line: str, names_seen: set[str]) -> dict[str, object] | None:
    """The mapping of one ``  - {k: v, ...}`` line as PyYAML's SafeLoader reads it, or None
    if the line is not one or holds anything this reader is not sure of."""
    whole = _ITEM_LINE.fullmatch(line)
    if whole is None:
        return None
    entries = _ENTRY.findall(line, whole.start(1), whole.end(1))
    item: dict[str, object] = {}
    for name, simple, escaped, integer, decimal, quad, word, _other in entries:
        if name not in names_seen:
            if name.lower() in _SPECIAL_WORDS:
                return None
            names_seen.add(name)
        value: object
        if simple:
            value = simple[1:-1]
        elif escaped:
            try:
                value = json.loads(escaped)
            except ValueError:
                return None  # e.g. a control character, which YAML refuses too
        elif integer:
            value = int(integer)
        elif decimal:
            value = float(decimal)
        elif quad:
            value = quad
        elif word and word.lower() not in _SPECIAL_WORDS:
            value = word
        else:
            return None  # e.g. 0777, 1e5, .5, ~ or a YAML 1.1 boolean
        item[name] = value
    if len(item) != len(entries):
        return None  # a duplicate key
    return item


def _load_flow_lines(text: str, display: str) -> LocatedYaml | None:
    """The document if every line is blank, a comment, a top-level ``key:`` or a
    ``  - {k: v, ...}`` item of simple scalars; else None (read it with PyYAML)."""
    if _OTHER_BREAKS.search(text):
        return None
    doc = LocatedYaml(display, None)
    lines, key_order = doc.lines, doc.key_order
    data: dict[str, list] = {}
    top_order: list[tuple[str, int]] = []
    current: list | None = None
    key = ""
    names_seen: set[str] = set()  # entry names known not to be special words
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith("  - {") and current is not None:
            item = _item(line, names_seen)
            if item is None:
                return None
            path = (key, len(current))
            lines[path] = number
            for name in item:
                lines[(key, path[1], name)] = number
            key_order[path] = [(name, number) for name in item]
            current.append(item)
            continue
        if _SKIP_LINE.fullmatch(line):
            continue
        top = _TOP_KEY_LINE.fullmatch(line)
        if top is None:
            return None
        key = top.group(1)
        if key in data or key.lower() in _SPECIAL_WORDS or (current is not None and not current):
            return None  # a duplicate, a special word, or a key with no items (null)
        current = data[key] = []
        top_order.append((key, number))
        lines.setdefault((), number)
        lines[(key,)] = number
    if not data or not current:
        return None
    key_order[()] = top_order
    doc.data = data
    return doc


def unsorted_keys(doc: LocatedYaml) -> list[Problem]:
    """Report mappings whose keys are not in sorted order (keeps policy diffs reviewable)."""
    problems = []
    for path, order in doc.key_order.items():
        keys = [k for k, _ in order]
        expected = sorted(keys)
        for (key, line), want in zip(order, expected):
            if key != want:
                where = "/".join(str(p) for p in path) or "top level"
                problems.append(
                    Problem(
                        doc.file,
                        line,
                        f'keys out of order in {where}: expected "{want}" here, found "{key}"',
                    )
                )
                break
    return problems

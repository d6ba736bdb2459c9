"""Filling templates of generated code, and the kernel arguments `launch()` passes by keyword.

A template is Python source with `{name}` placeholders (literal braces doubled, as in
`str.format`). A placeholder alone on its line takes a list of lines, indented as the
placeholder is, and an empty list removes the line; any other placeholder takes a string.
`fill` raises `TemplateError` naming the template and the placeholder when one is left
unfilled, and when a snippet has no placeholder (a misspelt name), so that no `{name}`
reaches a generated module.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

WIDTH = 115  # the column past which the generator breaks the lines it lays out itself
_BLOCK = re.compile(r"^( *)\{(\w+)\}$")


class TemplateError(ValueError):
    """A template and the snippets given to fill it do not match."""


def fill(name: str, template: str, **snippets) -> str:
    """`template` with every placeholder replaced by its snippet (see the module docstring)."""
    used, out = set(), []
    for line in template.split("\n"):
        block = _BLOCK.match(line)
        if block and block[2] in snippets and not isinstance(snippets[block[2]], str):
            used.add(block[2])
            out += [block[1] + text if text else text for text in snippets[block[2]]]
            continue
        for _, field, _, _ in string.Formatter().parse(line):
            if field is None:
                continue
            if field not in snippets:
                raise TemplateError(f"template {name}: placeholder {{{field}}} was left unfilled")
            if not isinstance(snippets[field], str):
                raise TemplateError(f"template {name}: placeholder {{{field}}} sits inside a line, so it takes "
                                    f"a string, not {type(snippets[field]).__name__}")
            used.add(field)
        out.append(line.format_map(snippets))
    unused = sorted(snippets.keys() - used)
    if unused:
        raise TemplateError(f"template {name} has no placeholder for {', '.join(unused)}")
    return "\n".join(out)


def indent(lines: list[str], spaces: int) -> list[str]:
    return [" " * spaces + line if line else line for line in lines]


@dataclass(frozen=True)
class Arg:
    """A kernel parameter, and the expression `launch()` passes for it."""

    name: str
    value: str
    constexpr: bool = False

    @property
    def param(self) -> str:
        return f"{self.name}: tl.constexpr" if self.constexpr else self.name

    @property
    def call(self) -> str:
        """How a @triton.jit helper receiving the same name passes it on (constexprs by keyword)."""
        return f"{self.name}={self.name}" if self.constexpr else self.name


def signature(groups: list[list[Arg]]) -> list[str]:
    """Parameter lines of a kernel or helper: one line per group."""
    return [", ".join(a.param for a in group) + "," for group in groups if group]


def keywords(groups: list[list[Arg]], spaces: int) -> list[str]:
    """`name=value,` arguments of a launch: each group from a new line, and a group that does
    not fit in one line broken between the arguments taken from different objects
    (`q.stride(0)`, then `k.stride(0)`) where it can, elsewhere only past WIDTH."""
    lines = []
    for group in groups:
        runs: list[list[str]] = []
        for i, arg in enumerate(group):
            if i == 0 or _root(arg.value) != _root(group[i - 1].value):
                runs.append([])
            runs[-1].append(f"{arg.name}={arg.value},")
        line = ""
        for run in runs:
            if line and spaces + len(line) + 1 + len(" ".join(run)) > WIDTH:
                lines.append(line)
                line = ""
            for item in run:
                if line and spaces + len(line) + 1 + len(item) > WIDTH:
                    lines.append(line)
                    line = ""
                line = f"{line} {item}" if line else item
        if line:
            lines.append(line)
    return lines


def _root(value: str) -> str:
    """The name an argument's expression starts from: `q` for `q.stride(0)`."""
    return re.match(r"\W*(\w*)", value)[1]

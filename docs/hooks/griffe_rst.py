"""Griffe extension: render the reST markup of this project's docstrings as Markdown.

The code documents itself in reST (``:param x:`` fields, ``:class:`` roles, ``.. math::``
blocks), like pytorch-ood, while mkdocstrings renders docstring text as Markdown. griffe's
``sphinx`` parser handles the fields; this extension rewrites the rest before parsing:

* ``:math:`x``` -> ``$x$`` and ``.. math::`` blocks -> ``$$ ... $$`` (pymdownx.arithmatex);
* ``:class:`~a.b.C```, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``
  -> a link to the object when it belongs to this package (an *optional* autoref: no link and
  no warning if the object is not on any page), inline code otherwise;
* ``text::`` + indented block -> ``text:`` + fenced code block;
* ``.. note::`` / ``.. warning::`` -> admonitions; Sphinx autodoc directives are dropped;
* ```text <url>`_`` -> ``[text](url)``;
* ``#:`` comments (Sphinx's attribute doc-comments, on the lines above an assignment or at its
  end) become the docstring of the attribute, so that documented constants are rendered.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``), only when the docs are built.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

PACKAGE = "uniad_plugin"

_ROLE_RE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj|const|math):`([^`]+)`")
_LINK_RE = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")
_DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_ADMONITIONS = {"note", "warning", "tip", "important", "caution", "danger", "seealso", "hint"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines indented deeper than ``base`` from ``start`` on (blank lines included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end], end


def _language(code: str) -> str:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    if first.startswith("[") and "]" in first:
        return "toml"
    if re.match(r"(uniad|python|pip|mkdocs|\$ )\b", first):
        return "bash"
    return "python"


def _blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE_RE.match(line)
        if m:
            pad, name, arg = m.group(1), m.group(2), m.group(3)
            body, end = _block(lines, i + 1, len(pad))
            body_text = textwrap.dedent("\n".join(body)).strip("\n")
            if name == "math":
                math = "\n".join(s for s in (arg, body_text) if s)
                out += [pad + "$$", *(pad + s for s in math.splitlines()), pad + "$$"]
            elif name in _ADMONITIONS:
                kind = "info" if name == "seealso" else name
                out.append(f"{pad}!!! {kind}")
                content = "\n".join(s for s in (arg, body_text) if s)
                out += [f"{pad}    {s}" if s else "" for s in content.splitlines()]
            elif name.startswith("auto") or name in ("currentmodule", "module"):
                pass  # Sphinx autodoc: mkdocstrings renders the objects itself
            else:
                out += [pad + f"**{name}** {arg}".rstrip(), *body]
            i = end
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(":"):
            body, end = _block(lines, i + 1, _indent(line))
            if any(s.strip() for s in body):
                stripped = line.rstrip()[:-2].rstrip()
                if stripped.strip():
                    out.append(stripped + ":")
                code = textwrap.dedent("\n".join(body)).strip("\n")
                pad = " " * _indent(line)
                out += ["", pad + "```" + _language(code)]
                out += [(pad + s) if s else "" for s in code.splitlines()]
                out.append(pad + "```")
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _doc_comment(obj: griffe.Object) -> str:
    """The ``#:`` comment of an attribute: the lines right above it, or the end of its line."""
    if obj.lineno is None:
        return ""
    try:
        lines = obj.module.lines
    except (AttributeError, OSError, ValueError):
        return ""
    if not 0 < obj.lineno <= len(lines):
        return ""
    own = lines[obj.lineno - 1]
    if "#: " in own:
        return own.split("#: ", 1)[1].strip()
    above: list[str] = []
    i = obj.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        above.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return "\n".join(above)


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of every object of the package once it is loaded."""

    def __init__(self, **_: Any) -> None:
        super().__init__()
        self._root: griffe.Object | None = None

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != PACKAGE:
            return
        self._root = pkg
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is None and obj.is_attribute:
            comment = _doc_comment(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, parent=obj, lineno=obj.lineno)
        if obj.docstring is not None:
            obj.docstring.value = self.convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)

    # ------------------------------------------------------------------ conversion
    def convert(self, text: str, obj: griffe.Object) -> str:
        text = _blocks(text)
        text = _LINK_RE.sub(lambda m: f"[{m.group(1)}]({m.group(2)})", text)
        return _ROLE_RE.sub(lambda m: self._role(m.group(1), m.group(2), obj), text)

    def _exists(self, path: str) -> bool:
        if self._root is None or not path.startswith(PACKAGE):
            return False
        rest = path[len(PACKAGE) + 1 :]
        if not rest:
            return True
        try:
            self._root[rest]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
        return True

    def _resolve(self, target: str, obj: griffe.Object) -> str | None:
        module = obj if obj.is_module else obj.module
        if target.startswith("."):
            path = f"{module.path}{target}"
            return path if self._exists(path) else None
        if target.startswith(PACKAGE + ".") or target == PACKAGE:
            return target
        head, _, tail = target.partition(".")
        try:
            path = obj.resolve(head)
        except griffe.NameResolutionError:
            candidate = f"{module.path}.{target}"
            return candidate if self._exists(candidate) else None
        path = f"{path}.{tail}" if tail else path
        return path if path.startswith(PACKAGE) else None

    def _role(self, role: str, target: str, obj: griffe.Object) -> str:
        if role == "math":
            return f"${target}$"
        short = target.startswith("~")
        target = target.lstrip("~")
        title = target.lstrip(".")
        if short:
            title = title.rsplit(".", 1)[-1]
        if role in ("func", "meth"):
            title += "()"
        path = self._resolve(target, obj)
        if path is None:
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

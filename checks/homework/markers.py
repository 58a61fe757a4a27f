"""Solution markers: find each `# BEGIN SOLUTION` … `# END SOLUTION` block and cut it out.

A block sits inside a function body. Its optional `# HINT: …` line becomes the message of the
`raise NotImplementedError("<module>.<function>: <hint>")` that replaces the block, at the
block's indentation, so the student file still imports and the first call says what to do.
A marker outside a function, an unclosed or nested block is an error naming file and line:
a silently half-stripped file would hand out the solution.
"""

import ast
import re
from typing import NamedTuple

BEGIN, END, HINT = "# BEGIN SOLUTION", "# END SOLUTION", "# HINT:"
DEFAULT_HINT = "write this function (its docstring says what it computes)"


class MarkerError(ValueError):
    pass


class Block(NamedTuple):
    function: str  # qualified name inside the module: "softmax_forward", "Adam.step"
    begin: int  # 0-based index of the BEGIN line
    end: int  # 0-based index of the END line
    indent: str
    hint: str


def _functions(source, path):
    """(first line, last line, qualified name) of every function, 1-based, outermost first."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=path), "")
    return found


def blocks(source, path="<source>"):
    """Every solution block of a file, in order."""
    lines, functions, found, open_at = source.splitlines(), _functions(source, path), [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if open_at is not None:
                raise MarkerError(f"{path}:{i + 1}: BEGIN SOLUTION inside the block opened at line {open_at + 1}")
            open_at = i
        elif text == END:
            if open_at is None:
                raise MarkerError(f"{path}:{i + 1}: END SOLUTION without BEGIN SOLUTION")
            inside = [name for first, last, name in functions if first < open_at + 1 <= last]
            if not inside:
                raise MarkerError(f"{path}:{open_at + 1}: a solution block must sit inside a function body")
            hints = [l.strip()[len(HINT):].strip() for l in lines[open_at + 1:i] if l.strip().startswith(HINT)]
            indent = re.match(r"\s*", lines[open_at]).group()
            found.append(Block(inside[-1], open_at, i, indent, " ".join(hints) or DEFAULT_HINT))
            open_at = None
        elif "BEGIN SOLUTION" in text or "END SOLUTION" in text:
            raise MarkerError(f"{path}:{i + 1}: malformed marker {text!r}: write exactly {BEGIN!r} or {END!r}")
    if open_at is not None:
        raise MarkerError(f"{path}:{open_at + 1}: BEGIN SOLUTION is never closed")
    return found


def strip(source, module, path="<source>"):
    """The student version of one file: every block replaced by a NotImplementedError."""
    lines, out, last = source.splitlines(keepends=True), [], 0
    for block in blocks(source, path):
        out += lines[last:block.begin]
        message = f"{module}.{block.function}: {block.hint}"
        out.append(f"{block.indent}raise NotImplementedError({message!r})\n")
        last = block.end + 1
    out += lines[last:]
    return "".join(out)


def solution_lines(sources):
    """Lines that occur only inside solution blocks (stripped): none may reach a student."""
    inside, outside = set(), set()
    for path, source in sources.items():
        lines, spans = source.splitlines(), blocks(source, path)
        in_block = {i for b in spans for i in range(b.begin, b.end + 1)}
        for i, line in enumerate(lines):
            text = line.strip()
            if not text:
                continue
            if i in in_block and not (text in (BEGIN, END) or text.startswith(HINT)):
                inside.add(text)
            elif i not in in_block:
                outside.add(text)
    return inside - outside

"""Error categories and one-line debugging hints, derived from how a run ended.

The category is a typed field of every result; callers never parse stderr themselves. For Python
programs it is the class of the final exception of the traceback on stderr.
"""

from __future__ import annotations

import enum
import re


class Category(enum.Enum):
    """Mirrors ``flywheel.common.v1.ErrorCategory`` (names match the proto without the prefix)."""

    UNSPECIFIED = 0
    SYNTAX_ERROR = 1
    NAME_ERROR = 2
    TYPE_ERROR = 3
    INDEX_ERROR = 4
    KEY_ERROR = 5
    VALUE_ERROR = 6
    ZERO_DIVISION_ERROR = 7
    ATTRIBUTE_ERROR = 8
    IMPORT_ERROR = 9
    RECURSION_ERROR = 10
    ASSERTION_ERROR = 11
    EOF_ERROR = 12
    TIMEOUT = 13
    MEMORY = 14
    RESOURCE_LIMIT = 15
    WRONG_ANSWER = 16
    OTHER = 17


_BY_EXCEPTION = {
    "SyntaxError": Category.SYNTAX_ERROR,
    "IndentationError": Category.SYNTAX_ERROR,
    "TabError": Category.SYNTAX_ERROR,
    "NameError": Category.NAME_ERROR,
    "UnboundLocalError": Category.NAME_ERROR,
    "TypeError": Category.TYPE_ERROR,
    "IndexError": Category.INDEX_ERROR,
    "KeyError": Category.KEY_ERROR,
    "ValueError": Category.VALUE_ERROR,
    "ZeroDivisionError": Category.ZERO_DIVISION_ERROR,
    "AttributeError": Category.ATTRIBUTE_ERROR,
    "ImportError": Category.IMPORT_ERROR,
    "ModuleNotFoundError": Category.IMPORT_ERROR,
    "RecursionError": Category.RECURSION_ERROR,
    "AssertionError": Category.ASSERTION_ERROR,
    "EOFError": Category.EOF_ERROR,
    "MemoryError": Category.MEMORY,
}

HINTS = {
    Category.SYNTAX_ERROR: "The code does not parse: check brackets, colons, quotes and indentation at the reported line.",
    Category.NAME_ERROR: "A name is used before it is defined: check spelling, imports and variable scope.",
    Category.TYPE_ERROR: "An operation got a value of the wrong type: check argument counts and convert input strings with int()/float().",
    Category.INDEX_ERROR: "Check list bounds: an index is past the end of a sequence (off-by-one or empty input?).",
    Category.KEY_ERROR: "A dictionary key is missing: use dict.get() or check the key exists first.",
    Category.VALUE_ERROR: "A value has the right type but a bad content: check how the input is parsed (split, int()).",
    Category.ZERO_DIVISION_ERROR: "A division or modulo by zero: guard the divisor for the zero case.",
    Category.ATTRIBUTE_ERROR: "An object lacks the attribute or method used: check its type (None?) and the method name.",
    Category.IMPORT_ERROR: "A module cannot be imported: only the standard library is available in the sandbox.",
    Category.RECURSION_ERROR: "Recursion went too deep: add a base case or rewrite it iteratively.",
    Category.ASSERTION_ERROR: "An assertion failed: compare the asserted condition with the actual values.",
    Category.EOF_ERROR: "The program read past the end of its input: read exactly as many lines as the input has.",
    Category.TIMEOUT: "The program ran out of time: look for an infinite loop or use a faster algorithm.",
    Category.MEMORY: "The program used too much memory: avoid building huge lists or strings; stream the data.",
    Category.RESOURCE_LIMIT: "A resource limit was hit (output size, file size or process count): print less, write less, fork less.",
    Category.WRONG_ANSWER: "The output differs from the expected one: check the output format and edge cases.",
    Category.OTHER: "The program failed: read the last lines of stderr.",
}

# The final line of a Python traceback: `pkg.ModError: message` or a bare `ValueError`.
_FINAL = re.compile(r"^([A-Za-z_][\w.]*)(?::(?:\s(.*))?)?$")


def last_exception(stderr: str) -> tuple[str, str] | None:
    """(exception class name, final traceback line) from a Python stderr, or None.

    The final exception line is the last non-indented line after a ``Traceback`` header, or, for
    a SyntaxError (printed without a header), a last line naming a ``...Error``.
    """
    lines = [ln for ln in stderr.rstrip().splitlines()[-60:] if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    if last.startswith((" ", "\t")):
        return None
    m = _FINAL.match(last.strip())
    if not m:
        return None
    name = m.group(1).rsplit(".", 1)[-1]
    if "Traceback (most recent call last)" in stderr or name.endswith(("Error", "Exception")):
        return name, last.strip()[:500]
    return None


def category_for_exception(name: str) -> Category:
    return _BY_EXCEPTION.get(name, Category.OTHER)


def hint(category: Category) -> str:
    return HINTS.get(category, "")

"""Sphinx configuration: furo, MyST pages, an API reference from the docstrings.

Built strictly in CI: ``python -m sphinx -W -n --keep-going -b html docs docs/_build/html``.
No inventory is fetched at build time (no intersphinx): references to the standard
library are resolved offline to docs.python.org by ``_python_reference`` below, and
references to other projects' types in signatures (redis-py, OpenTelemetry) are listed in
``nitpick_ignore_regex``; a broken reference to any name of coalesce still fails.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.util.inspect import stringify_signature

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import coalesce  # noqa: E402 - found through the path set just above

project = "coalesce"
author = "the coalesce authors"
copyright = "2026, the coalesce authors"
release = coalesce.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"coalesce {release}"
html_static_path = ["_static"]

# The API reference: signatures carry the types, descriptions carry the prose.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

nitpicky = True
# Types from other projects that appear in signatures; without their inventories they
# cannot be linked, and fetching those is what this build must not do.
nitpick_ignore_regex = [
    (r"py:(class|obj)", r"(redis\.|Redis$).*"),
    (r"py:(class|obj)", r"opentelemetry\..*"),
    # Type variables and aliases of the signatures, explained in the text around them.
    (
        r"py:(class|obj)",
        r"(coalesce\._\w+\.|typing\.~)?(P|P2|R|R_co|S|S_contra|T|T_contra)(\.args|\.kwargs)?",
    ),
    (
        r"py:(class|obj)",
        r"(coalesce\.\w+\.)?(ASGIApp|Scope|Receive|Send|Environ|WSGIApp|ExcInfo|Write)",
    ),
    (r"py:(class|obj)", r"(coalesce\.redis\.)?OnBackendError"),
    # Private classes that public signatures mention.
    (r"py:(class|obj)", r"coalesce\.\w+\._\w+"),
    (r"py:(class|obj)", r"_\w+"),
]

# Standard-library modules whose names may appear in signatures and docstrings.
_STDLIB = (
    "abc",
    "asyncio",
    "builtins",
    "collections",
    "collections.abc",
    "contextvars",
    "functools",
    "inspect",
    "threading",
    "time",
    "types",
    "typing",
)
# Built-in names and the page of the Python docs that describes each.
_BUILTINS = {
    "None": "constants",
    "Ellipsis": "constants",
    "bool": "functions",
    "float": "functions",
    "int": "functions",
    "object": "functions",
    "type": "functions",
    "bytes": "stdtypes",
    "dict": "stdtypes",
    "list": "stdtypes",
    "str": "stdtypes",
    "tuple": "stdtypes",
    "frozenset": "stdtypes",
    "BaseException": "exceptions",
    "Exception": "exceptions",
    "RuntimeError": "exceptions",
    "TypeError": "exceptions",
    "ValueError": "exceptions",
}


def _python_reference(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Link a standard-library name to its page on docs.python.org, offline."""
    if node.get("refdomain") != "py":
        return None
    target: str = node.get("reftarget", "")
    if target in _BUILTINS:
        return _external(f"library/{_BUILTINS[target]}.html#{target}", contnode)
    module, _, name = target.rpartition(".")
    while module and module not in _STDLIB:
        module, _, head = module.rpartition(".")
        name = f"{head}.{name}"
    if not module or not _exists(module, name):
        return None
    return _external(f"library/{module}.html#{module}.{name}", contnode)


def _exists(module: str, name: str) -> bool:
    """Whether ``module`` really has ``name``, so a typo is still reported."""
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _external(path: str, contnode: Any) -> Any:
    reference = nodes.reference("", "", internal=False, refuri=f"https://docs.python.org/3/{path}")
    reference += contnode
    return reference


# How Sphinx writes the parts of a ParamSpec and type variables in a signature
# (``~typing.~P``, ``~P``, ``~coalesce._flight.R``), and what a reader expects instead.
_TYPEVAR_NOISE = re.compile(
    r"~(?:typing\.~|coalesce\.[\w.]*\.)?(?=(?:P2?|R(?:_co)?|S(?:_contra)?|T(?:_contra)?)\b)"
)


def _signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: str | None
) -> tuple[str | None, str | None] | None:
    """Readable signatures: the real ones of the middleware, none for protocols."""
    if what == "class" and getattr(obj, "_is_protocol", False):
        return "", None
    if what == "class" and signature and signature.startswith("(*args"):
        # The middleware checks its arguments in __new__ to name a misspelt option;
        # what a caller passes is __init__'s signature.
        init = inspect.signature(obj.__init__)
        init = init.replace(parameters=list(init.parameters.values())[1:])
        signature = stringify_signature(init, show_return_annotation=False)
    if signature is None:
        return None
    signature = re.sub(r"\*args: ~typing\.~P", "*args: P.args", signature)
    signature = re.sub(r"\*\*kwargs: ~typing\.~P", "**kwargs: P.kwargs", signature)
    signature = re.sub(r"\*args: ~P\b", "*args: P.args", signature)
    signature = re.sub(r"\*\*kwargs: ~P\b", "**kwargs: P.kwargs", signature)
    signature = _TYPEVAR_NOISE.sub("", signature)
    signature = signature.replace("Callable[[P], ", "Callable[P, ").replace("[[...], ", "[..., ")
    return signature, ret and _TYPEVAR_NOISE.sub("", ret)


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _python_reference)
    app.connect("autodoc-process-signature", _signature)
    return {"parallel_read_safe": True}

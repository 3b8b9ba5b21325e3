"""Generated JSON schemas of the subset the grammar enforces: leaves, objects of them, and nestings."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

WORDS = st.sampled_from(["id", "name", "size", "tags", "ok", "when", "kind", "note"])
LEAVES: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.integers(0, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.tuples(st.integers(0, 3), st.integers(3, 8)).map(
        lambda b: {"type": "string", "minLength": b[0], "maxLength": b[1]}
    ),
    st.lists(st.text("abcxyz", min_size=1, max_size=5), min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v}),
    st.sampled_from(["date", "time", "date-time", "uuid"]).map(lambda f: {"type": "string", "format": f}),
    st.sampled_from([r"^\d{3}-\d{2}$", "^[a-c]+(x|yz)?$", r"^[A-Z][a-z]{1,4}\.[0-9]$"]).map(
        lambda p: {"type": "string", "pattern": p}
    ),
)


def objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of one to three properties drawn from `children`, some required, some closed."""

    def build(properties: dict[str, Any], required: list[bool], closed: bool) -> dict[str, Any]:
        names = list(properties)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        schema["required"] = [n for n, r in zip(names, required, strict=False) if r]
        if closed:
            schema["additionalProperties"] = False
        return schema

    return st.builds(
        build,
        st.dictionaries(WORDS, children, min_size=1, max_size=3),
        st.lists(st.booleans(), max_size=3),
        st.booleans(),
    )


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        objects(children),
        st.tuples(children, st.integers(0, 2), st.integers(2, 3)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[2]}
        ),
        st.lists(children, min_size=2, max_size=3).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=5,
)

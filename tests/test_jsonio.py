"""jsonio: a key named twice is refused on reading; NaN and infinities are written as JSON carries them."""

import json

import pytest

from otas import jsonio


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', '{"x": {"b": 1, "c": 2, "b": 3}}', '[{"k": 1, "k": 1}]'])
def test_a_key_named_twice_is_refused(text):
    with pytest.raises(jsonio.DuplicateKeyError, match="appear twice"):
        jsonio.loads_unique(text)
    assert isinstance(jsonio.DuplicateKeyError("x"), ValueError)


def test_non_finite_numbers_are_written_as_strict_json():
    out = jsonio.dumps({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": (2, "x")})
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": None, "b": ["inf", "-inf", 1.5], "c": [2, "x"]
    }  # fmt: skip


def test_a_large_object_with_a_key_twice_is_refused_naming_it():
    # a request body may hold tens of thousands of keys: finding the twice-named ones takes one pass
    # (counting each key over the whole list took 44 s for 40,000 keys, on the server's event loop)
    text = "{" + ",".join(f'"k{i}": 0' for i in range(50_000)) + ', "k7": 1, "k3": 2}'
    with pytest.raises(jsonio.DuplicateKeyError, match=r"\['k3', 'k7'\]"):
        jsonio.loads_unique(text)

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

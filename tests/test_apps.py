"""The applications file is a file from anywhere: every bad one is a ValueError naming the file and
the entry, quickly, whatever YAML can express (aliases that expand exponentially, deep nesting,
tags, binary bytes)."""

from __future__ import annotations

import time

import pytest

from otas.apps import load_apps, parse_apps

GOOD = "apps:\n  - {name: novel, slo_ms: 500, utility: 1.0, task: novel}\n"
BAD = {
    "laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ) + "apps: [*i]\n",
    "laughs_in_name": "x: &x [[y, y, y, y, y, y, y, y], [y, y, y, y, y, y, y, y]]\n"
    "apps:\n  - {name: *x, slo_ms: 500, utility: 1, task: novel}\n",
    "deep": "apps: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_map": "apps: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "python_tag": "apps:\n  - !!python/object/apply:os.system ['true']\n",
    "two_docs": GOOD + "---\n" + GOOD,
    "binary": "\udcff\udcfe",
    "name_slash": "apps:\n  - {name: a/b, slo_ms: 500, utility: 1, task: novel}\n",
    "name_control": 'apps:\n  - {name: "\\0\\u202e", slo_ms: 500, utility: 1, task: novel}\n',
    "name_long": "apps:\n  - {name: " + "x" * 65 + ", slo_ms: 500, utility: 1, task: novel}\n",
    "name_number": "apps:\n  - {name: 5, slo_ms: 500, utility: 1, task: novel}\n",
    "slo_text": "apps:\n  - {name: a, slo_ms: fast, utility: 1, task: novel}\n",
    "slo_date": "apps:\n  - {name: a, slo_ms: 2024-01-01, utility: 1, task: novel}\n",
    "slo_nan": "apps:\n  - {name: a, slo_ms: .nan, utility: 1, task: novel}\n",
    "utility_bool": "apps:\n  - {name: a, slo_ms: 5, utility: yes, task: novel}\n",
    "task_list": "apps:\n  - {name: a, slo_ms: 5, utility: 1, task: [novel]}\n",
    "duplicate": GOOD + "  - {name: novel, slo_ms: 900, utility: 1.0, task: novel}\n",
    "empty": "",
    "name_newline": 'apps:\n  - {name: "a\\n", slo_ms: 500, utility: 1, task: novel}\n',
    "utility_huge": "apps:\n  - {name: a, slo_ms: 5, utility: 1.0e+308, task: novel}\n",
    "slo_huge": "apps:\n  - {name: a, slo_ms: 1.0e+300, utility: 1, task: novel}\n",
    "too_many": "apps:\n" + "".join(f"  - {{name: a{i}, slo_ms: 500, utility: 1, task: novel}}\n" for i in range(257)),
    "duplicate_key": "apps:\n  - {name: a, slo_ms: 5, utility: 1, task: novel, slo_ms: 50000}\n",
    "duplicate_key_block": "apps:\n  - name: a\n    slo_ms: 5\n    utility: 1\n    task: novel\n    task: blur\n",
    "duplicate_apps": GOOD + "apps: []\n",
    "top_level_extra": GOOD + "policy: fixed:0\nmax_batch: 1\n",
    "huge_file": "# " + "x" * (1 << 20) + "\n" + GOOD,
    "e_notation": "apps:\n  - {name: a, slo_ms: 1e9, utility: 1, task: novel}\n",
    "slo_base60": "apps:\n  - {name: a, slo_ms: 1:30, utility: 1, task: novel}\n",  # YAML 1.1 read 90
    "utility_base60": "apps:\n  - {name: a, slo_ms: 500, utility: 1:30.5, task: novel}\n",
    "unknown_keys_of_mixed_types": "apps:\n  - {name: a, slo_ms: 500, utility: 1, task: novel, 1: 2, foo: 3, ~: 4}\n",
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_applications_file_is_a_quick_value_error(tmp_path, name):
    p = tmp_path / "apps.yaml"
    text = BAD[name]
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="apps.yaml") as e:
        load_apps(p)
    assert time.perf_counter() - t0 < 5 and len(str(e.value)) < 2000  # no exponential repr


def test_a_good_file_and_names_users_give(tmp_path):
    p = tmp_path / "apps.yaml"
    p.write_text(GOOD)
    assert [a.name for a in load_apps(p)] == ["novel"]
    ok = parse_apps([{"name": "cam-2.v1_x", "slo_ms": 5, "utility": 0, "task": "blur"}])
    assert ok[0].name == "cam-2.v1_x" and ok[0].utility == 0.0


def test_messages_that_point_at_the_fix(tmp_path):
    """A number YAML 1.1 reads as text (1e9) is named as such, with a spelling it reads; a directory is
    called a directory, not a missing file."""
    p = tmp_path / "apps.yaml"
    p.write_text("apps:\n  - {name: a, slo_ms: 1e9, utility: 1, task: novel}\n")
    with pytest.raises(ValueError, match="write 1.0e"):
        load_apps(p)
    with pytest.raises(ValueError, match="is a directory"):
        load_apps(tmp_path)
    p.write_bytes(b"apps: []\n\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8 text .byte 9.; save it as UTF-8"):
        load_apps(p)
    p.write_text("apps: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_apps(p)


def test_yaml_merge_keys_share_settings_and_keys_given_override_them(tmp_path):
    """`<<: *base` (YAML merge keys) shares settings between applications; a key given beside the merge
    overrides the merged one, as YAML says; a key given twice beside it is still refused."""
    p = tmp_path / "apps.yaml"
    base = "base: &base {slo_ms: 500, utility: 1.0, task: novel}\n"
    p.write_text(base + "apps:\n  - {<<: *base, name: a}\n  - {<<: *base, name: b, slo_ms: 900}\n")
    with pytest.raises(ValueError, match="unknown top-level key"):  # `base:` itself is not a setting
        load_apps(p)
    p.write_text(
        "apps:\n  - &a {name: a, slo_ms: 500, utility: 1.0, task: novel}\n  - {<<: *a, name: b, slo_ms: 900}\n"
    )
    apps = load_apps(p)
    assert [(x.name, x.slo_ms, x.task) for x in apps] == [("a", 500.0, "novel"), ("b", 900.0, "novel")]
    p.write_text("apps:\n  - &a {name: a, slo_ms: 500, utility: 1.0, task: novel}\n  - {<<: *a, name: b, name: c}\n")
    with pytest.raises(ValueError, match="duplicate key"):
        load_apps(p)

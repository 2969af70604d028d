"""The applications file: a YAML list of {name, slo_ms, utility, task}, parsed with errors that
name the entry and the fix; and the packaged defaults per device kind. No torch."""

from __future__ import annotations

import re
import reprlib
from pathlib import Path

import yaml

from otas.types import NAME, App

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 60, 60
"""Entries quoted in errors are cut short: a YAML file of nested aliases (a "billion laughs") is
small on disk but its full repr is not."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (YAML forbids it; PyYAML keeps
    the last value, so a typo'd second `slo_ms:` would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: the base class merges; keys given
                continue  # here override merged ones, as YAML says, so only these are checked for repeats
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class raises its own clear error
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {_short.repr(key)}",
                    key_node.start_mark,
                )  # fmt: skip
        return super().construct_mapping(node, deep)


# YAML 1.1's base-60 numbers: `slo_ms: 1:30` would silently be 90. These are PyYAML's own int and float
# patterns without their base-60 forms, so such a value is text, which the parser refuses as no number.
_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, _INT if tag.endswith(":int") else _FLOAT if tag.endswith(":float") else rx) for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


MAX_APPS = 256
"""Applications one server takes (each is a queue the scheduler weighs at every decision: at 1,000,
a decision took ~23 ms here, and every admin change re-prices them all on the event loop)."""
MAX_UTILITY = 1e9
"""Utility per correct answer, at most (utilities are relative; far larger values overflow the price
of device time, which multiplies them by rates and latencies)."""
MAX_SLO_MS = 1e9
"""About 11.6 days."""


def parse_apps(data: object, source: str = "<apps>", allow_empty: bool = False) -> list[App]:
    """Build applications from parsed YAML: a list of {name, slo_ms, utility, task}, or
    {"apps": [...]} (empty only with `allow_empty`). Raises ValueError naming the entry and the fix."""
    if isinstance(data, dict) and "apps" in data:
        if extra := sorted(str(k) for k in data if k != "apps"):  # a setting put here would be ignored
            raise ValueError(f"{source}: unknown top-level keys {extra[:10]}; the file holds `apps:` only")
        data = data["apps"]
    if allow_empty and data in ([], None):
        return []
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: expected a non-empty list of applications (or a key `apps:`)")
    if len(data) > MAX_APPS:
        raise ValueError(f"{source}: {len(data)} applications; one server takes at most {MAX_APPS}")
    apps: list[App] = []
    for i, entry in enumerate(data):
        where = f"{source}: application #{i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is {_short.repr(entry)}; write a mapping with name, slo_ms, utility, task")
        missing = [k for k in ("name", "slo_ms", "utility", "task") if k not in entry]
        extra = sorted(map(str, set(entry) - {"name", "slo_ms", "utility", "task"}))  # (YAML keys: any type)
        if missing or extra:
            raise ValueError(f"{where} {_short.repr(entry)}: missing keys {missing}, unknown keys {extra}")
        for key in ("name", "task"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ValueError(f"{where}: {key}={_short.repr(entry[key])}; use a non-empty string (quote it in YAML)")
        numbers = [entry["slo_ms"], entry["utility"]]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            hint = ""
            if any(isinstance(v, str) and _is_number(v) for v in numbers):  # YAML 1.1 reads 1e9 as text
                hint = " (YAML reads a number like 1e9 as text: write 1.0e+9, or 1000000000)"
            raise ValueError(f"{where}: slo_ms and utility must be numbers, got {_short.repr(entry)}{hint}")
        try:
            slo, utility = float(entry["slo_ms"]), float(entry["utility"])
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{where}: slo_ms or utility is too large to be a number of ms or of utility") from None
        if not 0 < slo <= MAX_SLO_MS:
            raise ValueError(
                f"{where}: slo_ms={entry['slo_ms']!r}; use a latency in ms, above 0 and at most {MAX_SLO_MS:g}"
            )
        if not 0 <= utility <= MAX_UTILITY:
            raise ValueError(f"{where}: utility={entry['utility']!r}; use a number in [0, {MAX_UTILITY:g}]")
        if not NAME.match(entry["name"]):
            raise ValueError(f"{where}: name {_short.repr(entry['name'])}; use 1-64 letters, digits, '_', '.' or '-'")
        apps.append(App(name=entry["name"], slo_ms=slo, utility=utility, task=entry["task"]))
    names = [a.name for a in apps]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: application names must be unique, got {names}")
    return apps


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


MAX_FILE_BYTES = 1 << 20
"""An applications file larger than this is refused before parsing (256 applications take ~20 KB;
a 6 MB list took a minute and 700 MB to parse before its length was refused)."""


def load_apps(path: str | Path, allow_empty: bool = False) -> list[App]:
    """Read an applications YAML file (see otas/configs/apps.yaml)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"applications file {p} is a directory; give the YAML file")
    if not p.is_file():
        raise ValueError(f"applications file {p} does not exist; see otas/configs/apps.yaml for the format")
    if (size := p.stat().st_size) > MAX_FILE_BYTES:
        raise ValueError(f"applications file {p} has {size} bytes; at most {MAX_FILE_BYTES} (256 applications fit)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{p}: not valid YAML ({str(e)[:300]})") from None
    return parse_apps(data, source=str(p), allow_empty=allow_empty)


def default_apps_path(device: str = "cpu") -> Path:
    """The packaged applications file for a device kind: 'cpu' or 'h100'."""
    name = "apps.yaml" if device == "cpu" else f"apps-{device}.yaml"
    return Path(__file__).parent / "configs" / name

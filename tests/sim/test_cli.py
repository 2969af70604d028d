import json
from pathlib import Path

import pytest

from otas.config import default_apps_path, load_apps
from otas.sim.cli import simulate
from tests.cli_runs import assert_refused, invoke, write

DATA = Path(__file__).resolve().parents[1] / "data"


def test_simulate_writes_json_and_plots(tmp_path, capsys):
    prof = f"{DATA / 'handmade_tiny__cpu.json'},{DATA / 'handmade_small__cpu.json'}"
    simulate(
        trace="step",
        apps=default_apps_path("cpu"),
        profile=prof,
        policies="otas,fixed:0,model-switch,oracle",
        load="0.5,1.5",
        seed=0,
        noise=False,
        lookahead=8,
        max_batch=64,
        json_out=tmp_path / "o.json",
        plots=tmp_path / "plots",
    )
    out = json.loads((tmp_path / "o.json").read_text())
    assert {r["policy"] for r in out["runs"]} == {"otas", "fixed:0", "model-switch", "oracle (bound)"}
    assert all(r["vs_oracle"] <= 1.0 + 1e-9 for r in out["runs"])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "over_time_step_load0.5.png",
        "over_time_step_load1.5.png",
        "sweep_step.png",
    ]
    assert "otas" in capsys.readouterr().out


def test_packaged_apps_files_load():
    for dev in ("cpu", "h100"):
        apps = load_apps(default_apps_path(dev))
        assert [a.task for a in apps] == ["novel", "lowlight", "blur"]


def test_load_apps_errors(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_text("apps:\n  - {name: x, slo_ms: -5, utility: 1, task: novel}\n")
    with pytest.raises(ValueError, match="slo_ms=-5"):
        load_apps(bad)
    bad.write_text("apps:\n  - {name: x, slo: 5}\n")
    with pytest.raises(ValueError, match="missing keys"):
        load_apps(bad)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: ["--policies", "bogus"], "bogus"),
        (lambda d: ["--policies", "fixed:abc"], "fixed:"),
        (lambda d: ["--trace", str(d / "missing.csv")], "does not exist"),
        (lambda d: ["--trace", str(d)], "is not a file"),
        (lambda d: ["--trace", write(d / "empty.csv", b"")], "no requests"),
        (lambda d: ["--trace", write(d / "head.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n")], "no requests"),
        (lambda d: ["--trace", write(d / "latin.csv", b"TIMESTAMP,ContextTokens\n\xff\xfe,1\n")], "UTF-8"),
        (lambda d: ["--json", str(d)], "a directory"),
        (lambda d: ["--plots", write(d / "file.png", b"x")], "an existing file"),
        (lambda d: ["--load", "inf"], "--load"),
        (lambda d: ["--load", "nan"], "--load"),
        (lambda d: ["--load", "1e300"], "--load"),
        (lambda d: ["--load", "1e-320"], "--load"),
        (lambda d: ["--load", "1,,2"], "--load"),
        (lambda d: ["--load", "1,2,"], "--load"),
        (lambda d: ["--load", "1,2,1"], "given twice"),
        (lambda d: ["--profile", ","], "at least one profile"),
        (lambda d: ["--json", str(Path(write(d / "f", b"x")) / "x.json")], "cannot write"),
        (lambda d: ["--plots", str(Path(write(d / "g", b"x")) / "plots")], "cannot write"),
        (
            lambda d: [
                "--trace",
                write(d / "one.csv", b"TIMESTAMP,ContextTokens\n" + b"2023-11-16 18:15:46.68,3\n" * 2),
            ],
            "one instant",
        ),
        (
            lambda d: ["--trace", write(d / "exp.csv", b"TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.5e3,3\n")],
            "not digits",
        ),
        (lambda d: ["--seed", "-1"], "seed"),
        (lambda d: ["--max-queue-delay-ms", "inf"], "max_queue_delay_ms"),
        (lambda d: ["--max-batch", "100000000"], "max_batch"),
        (lambda d: ["--host-ms", "-1"], "--host-ms"),
        (lambda d: ["--host-ms", "inf"], "--host-ms"),
        (lambda d: ["--host-ms", "nan"], "--host-ms"),
    ],
)
def test_simulate_refuses_bad_input_without_a_traceback(tmp_path, make, message):
    prof = str(DATA / "handmade_tiny__cpu.json")
    args = ["simulate", "--profile", prof, "--policies", "fixed:0", "--trace", "step", *make(tmp_path)]
    assert_refused(invoke(args), message)


def test_simulate_takes_a_host_time_per_batch(tmp_path):
    """`--host-ms`: every batch holds the server that much longer (the simulator's `host_ms`); recorded in
    the JSON; under a heavy load a fixed γ then earns less than with a host that takes no time."""
    prof = str(DATA / "handmade_tiny__cpu.json")
    utility = {}
    for h in ("0", "5"):
        out = tmp_path / f"h{h}.json"
        args = ["simulate", "--profile", prof, "--policies", "fixed:0", "--trace", "step", "--load", "2"]
        assert invoke([*args, "--host-ms", h, "--json", str(out)]).exit_code == 0
        res = json.loads(out.read_text())
        assert res["meta"]["host_ms"] == float(h)
        utility[h] = res["runs"][0]["utility"]
    assert utility["5"] < utility["0"]


def test_model_switch_with_one_model_is_refused(tmp_path):
    """With one profile there is no model to switch to: it ran as fixed:0, silently."""
    prof = str(DATA / "handmade_tiny__cpu.json")
    args = ["simulate", "--profile", prof, "--policies", "model-switch", "--trace", "step"]
    assert_refused(invoke(args), "two or more models")


def test_profile_json_with_a_key_twice_and_a_trace_with_a_bom(tmp_path):
    """A profile naming a key twice is refused (json kept the last); a trace whose header starts with a
    byte-order mark (as some editors write) reads as any other."""
    prof = json.loads((DATA / "handmade_tiny__cpu.json").read_text())
    text = json.dumps(prof)
    twice = tmp_path / "twice.json"
    twice.write_text(text[:-1] + ', "model": "other"}')
    assert_refused(invoke(["simulate", "--profile", str(twice), "--trace", "step"]), "appear twice")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfTIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,3\n2023-11-16 18:15:47.68,3\n")
    res = invoke(["simulate", "--profile", str(DATA / "handmade_tiny__cpu.json"), "--policies", "fixed:0",
                  "--trace", str(bom)])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_an_slo_nothing_can_meet_is_warned_of(tmp_path):
    prof = DATA / "handmade_tiny__cpu.json"
    apps = tmp_path / "apps.yaml"
    apps.write_text("apps:\n  - {name: quick, slo_ms: 0.001, utility: 1, task: novel}\n")
    res = invoke(["simulate", "--profile", str(prof), "--policies", "fixed:0", "--trace", "step", "--apps", str(apps)])
    assert "SLO 0.001 ms is below the fastest batch of one" in res.output.replace("\n", " ")


def test_many_applications_get_a_table_of_their_own():
    """Past six applications the per-application columns would squeeze the policy table past reading:
    they move to a table of their own, one row per application, and the key columns stay whole."""
    from rich.console import Console

    from otas.sim.report import table

    apps = {f"application_{i}": 0.5 + i / 100 for i in range(20)}
    rows = [
        {"policy": p, "utility": 12345.6, "vs_oracle": 0.987, "slo_attainment": 0.9, "slo_attainment_per_app": apps,
         "mean_accuracy_served": 0.8, "mean_gamma": -3.0, "mean_batch": 12.0, "rejected": 0, "expired": 1, "late": 2}
        for p in ("otas", "fixed:0")
    ]  # fmt: skip
    console = Console(width=120, record=True)
    table(rows, "twenty", console)
    text = console.export_text()
    assert "12345.6" in text and "0.987" in text and "…" not in text
    assert "application_19" in text and "SLO attainment per" in text

"""Build the otas models and their H100 profiles on a GPU machine, resumably, under a time budget.

    OTAS_CIFAR10=.carry/cifar10-jpg.tar.gz python scripts/gpu_pipeline.py --budget 540 --out $OUT

Stages run in order and are skipped once their output exists under runs/ (a warm machine keeps
runs/ between calls): tiny backbone -> tiny prompts -> tiny profile -> small backbone -> small
prompts -> small profile. Every call copies the finished artefacts to --out (fp16 checkpoints,
split into 15 MB parts where larger: `cat NAME.part-* > NAME` rebuilds them) with the logs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = Path("runs")
MODELS = {
    "vit_tiny_p2_c5": dict(arch="vit_tiny_p2", epochs=150, drop_path=0.1),
    "vit_small_p2_c5": dict(arch="vit_small_p2", epochs=300, drop_path=0.1),
}
PROMPT_EPOCHS = {"vit_tiny_p2_c5": (20, 10), "vit_small_p2_c5": (6, 5)}  # (prompt, head) epochs
DONE = Path(".carry/done")  # finished fp16 checkpoints and profiles carried to a fresh machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=540.0, help="seconds of work in this call")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    t0 = time.time()
    left = lambda: args.budget - (time.time() - t0)
    os.environ.setdefault("OTAS_CACHE", str(RUNS / "cache"))
    RUNS.mkdir(exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    logf = open(args.out / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    import timm
    import torch

    log(
        f"torch {torch.__version__} timm {timm.__version__} device "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
    )
    from otas.train.backbone import BackboneConfig, train_backbone
    from otas.train.prompts import PromptConfig, train_prompts

    for name in args.models.split(","):
        spec = MODELS[name]
        bb, full = RUNS / f"{name}.backbone.safetensors", RUNS / f"{name}.safetensors"
        prof = RUNS / f"{name}__h100.json"
        if not full.is_file() and (DONE / full.name).is_file():  # finished on an earlier machine
            for f in [DONE / full.name, *DONE.glob(f"{name}__*.json")]:
                shutil.copy(f, RUNS / f.name)
            log(f"{name}: took the finished checkpoint from {DONE}")
        epochs, head_epochs = PROMPT_EPOCHS[name]
        cfg = PromptConfig(epochs=epochs, head_epochs=head_epochs)
        if not prompts_complete(full, cfg):
            if not bb.is_file():
                if left() < 60:
                    break
                bcfg = BackboneConfig(
                    arch=spec["arch"], epochs=spec["epochs"], drop_path=spec["drop_path"], time_budget_s=left() - 30
                )
                if not train_backbone(bcfg, bb, log=log)["done"]:
                    break
            if left() < 60:
                break
            cfg.time_budget_s = left() - 60
            train_prompts(cfg, bb, full, log=log)
            if not prompts_complete(full, cfg):
                break
        shipped = export_one(full, RUNS / "fp16", log)  # profile exactly what is shipped
        base = [sys.executable, "-m", "otas.cli", "profile", str(shipped), "--device", "cuda"]
        runs = {
            RUNS / f"{name}__h100-fp32.json": ["--dtype", "float32", "--batch-sizes", "1", "--min-time-s", "0.05"],
            prof: ["--batch-sizes", "1,8,64,256"],
            RUNS / f"{name}__h100-graphs.json": [
                "--batch-sizes",
                "1,8,64,256",
                "--mode",
                "graphs",
                "--accuracy-from",
                str(prof),
            ],
        }
        for out, extra in runs.items():
            if out.is_file():
                continue
            if left() < 150:
                break
            log("running " + " ".join(base + extra + ["--out", str(out)]))
            rc = subprocess.run(base + extra + ["--out", str(out)]).returncode
            if rc != 0:  # a failed profile must not stop the training of the next model
                log(f"profile {out.name} failed with exit code {rc}")
    if all((RUNS / f"{n}__h100-graphs.json").is_file() for n in args.models.split(",")) and left() > 200:
        bench_finished(args.out, log)
    export(args.out, log)
    log(f"done with {left():.0f}s of budget left")


def bench_finished(out: Path, log) -> None:
    """`otas bench gpu` on every finished (profiled) model of this machine, once."""
    done = RUNS / ".benched"
    models = [
        RUNS / "fp16" / f.name.replace("__h100-graphs.json", ".safetensors") for f in RUNS.glob("*__h100-graphs.json")
    ]
    names = ",".join(sorted(m.stem for m in models))
    if not models or (done.is_file() and done.read_text() == names):
        return
    from otas.profile.gpubench import run_gpu_bench

    log(f"bench gpu: {names}")
    res = run_gpu_bench(sorted(models), [1, 8, 64, 256], RUNS)
    done.write_text(names)
    log(f"bench gpu done in {res['meta']['wall_s']:.0f}s")


def prompts_complete(full: Path, cfg) -> bool:
    from otas.models.checkpoint import read_header

    if not full.is_file():
        return False
    res = read_header(full)["meta"].get("prompt_results", {})
    want = 1 + len([g for g in cfg.gammas if g > 0])
    return all(len(res.get(t, {})) >= want for t in cfg.tasks)


def export_one(f: Path, out: Path, log) -> Path:
    """An fp16 copy of checkpoint `f` in folder `out` (the form models are shipped in)."""
    import torch

    from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint

    half = out / f.name
    if not half.is_file() or half.stat().st_mtime < f.stat().st_mtime:
        save_checkpoint(load_checkpoint(f), half, read_header(f)["meta"], dtype=torch.float16)
        log(f"exported {f.name} as fp16")
    return half


def export(out: Path, log) -> None:
    """fp16 copies of finished checkpoints (parts of 15 MB) and profiles to `out`."""
    for f in sorted(RUNS.glob("*.safetensors")):
        if f.name.endswith(".state.safetensors") or (
            f.name.endswith(".backbone.safetensors") and (RUNS / f.name.replace(".backbone", "")).is_file()
        ):
            continue
        half = export_one(f, RUNS / "fp16", log)
        if half.stat().st_size > 15_000_000:
            subprocess.run(["split", "-b", "15000000", "-d", str(half), str(out / half.name) + ".part-"], check=True)
        else:
            shutil.copy(half, out / half.name)
    for f in sorted(RUNS.glob("*.json")):
        shutil.copy(f, out / f.name)


if __name__ == "__main__":
    main()

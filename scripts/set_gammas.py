"""Set the γ set Γ stored in a checkpoint, without touching its weights.

Only merging γ (< 0) can be added or removed this way: they need no parameters. Prompt γ (> 0)
have trained prompts and heads, so they must match what the checkpoint holds.

    python scripts/set_gammas.py CHECKPOINT -48,-32,-20,-16,-12,-8,0,4,8,16
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otas.adapt.config import AdaptConfig
from otas.models.checkpoint import read_header


def set_gammas(path: Path, gammas: tuple[int, ...]) -> None:
    header = read_header(path)
    old = AdaptConfig(**header["adapt"])
    new = AdaptConfig(**{**header["adapt"], "gammas": gammas})
    if old.prompt_gammas != new.prompt_gammas:
        raise ValueError(f"prompt gammas must stay {old.prompt_gammas} (trained), got {new.prompt_gammas}")
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    header["adapt"]["gammas"] = list(new.gammas)
    metadata["otas"] = json.dumps(header)
    save_file(load_file(str(path)), str(path), metadata=metadata)


if __name__ == "__main__":
    ckpt, spec = Path(sys.argv[1]), sys.argv[2]
    set_gammas(ckpt, tuple(int(g) for g in spec.split(",")))
    print(f"{ckpt}: gammas = {read_header(ckpt)['adapt']['gammas']}")

"""Configuration of token adaptation (torch-free, so it can be read without loading a model)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_GAMMAS = (-48, -32, -20, -16, -12, -8, 0, 4, 8, 16)


@dataclass
class AdaptConfig:
    """Which γ a model serves and how prompts and merging behave."""

    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    """The configured set Γ: γ < 0 merges |γ| tokens per block, γ > 0 prepends γ prompts, 0 is stock."""
    deep: bool = True
    """VPT-deep (fresh prompts at every block) rather than shallow (prompts at the input only)."""
    proportional_attn: bool = True
    """Add log(size) to the attention logits of merged tokens (ToMe's proportional attention)."""
    merge_every: int = 1
    """Merge only in every k-th block, k·|γ| tokens at a time: the same tokens merged over the depth in
    fewer, larger steps (each step has a fixed cost; merging earlier also saves more FLOPs). k is the
    most: a γ whose k·|γ| tokens the first block cannot merge takes the largest k that it can. It
    changes which tokens merge, so a profile is measured with it (`otas profile --merge-every`) and
    the server runs the schedule its profile was measured with."""
    tasks: dict[str, int] = field(default_factory=dict)
    """Downstream task name -> number of classes (the backbone's own task is always served too)."""

    def __post_init__(self) -> None:
        self.gammas = tuple(sorted(int(g) for g in self.gammas))
        if 0 not in self.gammas:
            raise ValueError(f"gammas must include 0 (the stock model), got {self.gammas}")
        if len(set(self.gammas)) != len(self.gammas):
            raise ValueError(f"gammas must be unique, got {self.gammas}")
        if int(self.merge_every) != self.merge_every or self.merge_every < 1:
            raise ValueError(f"merge_every={self.merge_every!r}: use an integer >= 1 (1 = merge in every block)")
        for name, n in self.tasks.items():
            if not name or "/" in name or int(n) < 2:
                raise ValueError(f"task {name!r} with {n} classes: names must be non-empty without '/', n >= 2")

    @property
    def prompt_gammas(self) -> tuple[int, ...]:
        return tuple(g for g in self.gammas if g > 0)

    def check_gamma(self, gamma: int) -> int:
        if int(gamma) != gamma or int(gamma) not in self.gammas:
            raise ValueError(f"gamma={gamma!r} is not in the configured set {list(self.gammas)}")
        return int(gamma)

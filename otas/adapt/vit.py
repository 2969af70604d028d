"""A timm VisionTransformer whose forward takes γ: prompting (γ > 0), merging (γ < 0), stock (γ = 0).

γ is an argument of `forward`, never state: one `AdaptiveViT` can run concurrent batches with
different γ. Parameters beyond the frozen backbone are, per downstream task and per γ > 0, a prompt
set (depth, γ, C) and a linear head; per task a γ = 0 head that merging reuses.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from otas.adapt.config import AdaptConfig
from otas.adapt.merge import merge_schedule
from otas.adapt.ops import REFERENCE, MergeOps
from otas.adapt.timm_compat import check_vit
from otas.data.preprocess import Preprocess

SOURCE = "source"
"""Name of the backbone's own task; its head is the timm model's `head`."""


def key(task: str, gamma: int) -> str:
    return f"{task}/{gamma}"


class MergeCapWarning(UserWarning):
    """A configured γ asks for more merges per block than the last blocks have tokens for."""


class AdaptiveViT(nn.Module):
    def __init__(
        self,
        vit: nn.Module,
        config: AdaptConfig,
        source_classes: Sequence[str] | None = None,
        preprocess: Preprocess | None = None,
    ):
        super().__init__()
        check_vit(vit)
        self.vit = vit
        self.config = config
        self.source_classes = list(source_classes) if source_classes else None
        self.task_classes: dict[str, list[str]] = {}
        self.preprocess = preprocess or Preprocess.from_vit(vit)
        """Input size, resize/crop, mean/std: the one declaration every input path reads."""
        if self.preprocess.size != vit.patch_embed.img_size[0]:
            size = vit.patch_embed.img_size
            raise ValueError(f"preprocess size {self.preprocess.size} differs from the model's input size {size}")
        C = vit.embed_dim
        depth = len(vit.blocks) if config.deep else 1
        self.prompts = nn.ParameterDict()
        self.heads = nn.ModuleDict()
        for task, n in config.tasks.items():
            self.heads[key(task, 0)] = nn.Linear(C, n)
            for g in config.prompt_gammas:
                p = torch.empty(depth, g, C)
                nn.init.trunc_normal_(p, std=0.02)
                self.prompts[key(task, g)] = nn.Parameter(p)
                self.heads[key(task, g)] = nn.Linear(C, n)
        schedules = {g: self.merge_schedule(g) for g in config.gammas if g < 0}  # raises on an impossible merge
        # γ whose r is capped in the last blocks -> tokens merged per block
        self.merge_caps = {g: s for g, s in schedules.items() if sum(s) < -g * len(s)}
        if self.merge_caps:  # one report per model, listing every capped γ
            caps = "; ".join(f"gamma={g}: {s}" for g, s in sorted(self.merge_caps.items()))
            warnings.warn(
                f"r capped where too few tokens remain in the last blocks ({self.num_tokens} tokens), "
                f"tokens merged per block: {caps}",
                MergeCapWarning,
                stacklevel=2,
            )

    # -- introspection ----------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block at γ = 0 (prefix + patches)."""
        return self.vit.num_prefix_tokens + self.vit.patch_embed.num_patches

    @property
    def tasks(self) -> list[str]:
        return [SOURCE, *self.config.tasks]

    def num_classes(self, task: str) -> int:
        return self.vit.num_classes if task == SOURCE else self.config.tasks[task]

    def servable(self, task: str) -> tuple[int, ...]:
        """The γ at which `task` can be served: the one declaration of which (task, γ) pairs exist.

        The backbone's own task has no prompts, so it is served at γ ≤ 0; a downstream task at every
        configured γ (a prompt set and head per γ > 0; merging reuses the γ = 0 head). Profiles,
        the scheduler and the server read this; nothing re-derives it.
        """
        if task == SOURCE:
            return tuple(g for g in self.config.gammas if g <= 0)
        if task not in self.config.tasks:
            raise ValueError(f"unknown task {task!r}; this model serves {self.tasks}")
        return tuple(self.config.gammas)

    def task_index(self, task: str | Sequence[str], batch: int, gamma: int) -> torch.Tensor:
        """Task names (one, or one per image) -> indices into `self.tasks` (B,), on the CPU.

        Raises ValueError for an unknown task or a (task, γ) pair that is not servable, so an index
        tensor reaching `forward_indexed` is always valid."""
        return torch.tensor(self.task_indices(task, batch, gamma), dtype=torch.long)

    def task_indices(self, task: str | Sequence[str], batch: int, gamma: int) -> list[int]:
        """`task_index` as a list, with no call into torch (the served GPU path writes it into a
        pinned buffer itself)."""
        gamma = self.config.check_gamma(gamma)
        tasks = self._tasks(task, batch)
        for t in set(tasks):
            if gamma not in self.servable(t):
                raise ValueError(f"task {t!r} is not served at gamma={gamma}; it is served at {list(self.servable(t))}")
        order = {t: i for i, t in enumerate(self.tasks)}
        return [order[t] for t in tasks]

    def merge_schedule(self, gamma: int, num_tokens: int | None = None) -> list[int]:
        """Tokens merged per block at γ < 0 (capped where too few tokens remain; see `merge_caps`)."""
        n, depth, p = num_tokens or self.num_tokens, len(self.vit.blocks), self.vit.num_prefix_tokens
        return merge_schedule(n, -gamma, depth, p, self.config.merge_every)

    def token_counts(self, gamma: int) -> list[int]:
        """Tokens entering each block, then leaving the last one, at γ."""
        gamma = self.config.check_gamma(gamma)
        n, depth = self.num_tokens, len(self.vit.blocks)
        if gamma >= 0:
            return [n + gamma] * (depth + 1)
        counts = [n]
        for r_l in self.merge_schedule(gamma):
            counts.append(counts[-1] - r_l)
        return counts

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, gamma: int = 0, task: str | Sequence[str] = SOURCE) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, K); K = the most classes among the batch's tasks.

        `task` is one task name or one per image; a task with fewer than K classes gets -inf logits
        in the extra columns, so softmax and argmax stay right. Runs `forward_indexed`'s path over
        the batch's own tasks only, so training one task touches no other task's parameters.
        """
        idx = self.task_index(task, x.shape[0], gamma)
        if gamma == 0 and bool((idx == 0).all()):
            return self.vit(x)  # exactly stock timm
        present = sorted(set(idx.tolist()))
        local = torch.tensor([present.index(i) for i in idx.tolist()], device=x.device)
        return self._indexed(x, gamma, local, [self.tasks[i] for i in present])

    def forward_features(self, x: torch.Tensor, gamma: int, task: str | Sequence[str]) -> torch.Tensor:
        """Images -> pooled, pre-head features (B, C) at γ."""
        idx = self.task_index(task, x.shape[0], gamma).to(x.device)
        P = self._prompt_table(gamma, x.dtype, self.tasks)[idx] if gamma > 0 else None
        return self._features(x, gamma, P)

    def forward_indexed(
        self, x: torch.Tensor, gamma: int, task_idx: torch.Tensor, ops: MergeOps = REFERENCE
    ) -> torch.Tensor:
        """Images (B, 3, H, W), tasks as indices into `self.tasks` (B,) -> logits (B, K) of every task,
        K the most classes of any task (-inf in a task's missing columns).

        Shapes depend only on (γ, B), and nothing reads tensors back to the host, so this is the
        form that CUDA graphs and torch.compile capture once per (γ, batch bucket). The indices
        must be servable at γ (`task_index` checks names; a source row at γ > 0 gets zero prompts).
        `ops`: how merged blocks attend and merge (`otas.adapt.ops`; all compute the same function).
        """
        return self._indexed(x, gamma, task_idx, self.tasks, ops)

    def _indexed(
        self, x: torch.Tensor, gamma: int, task_idx: torch.Tensor, tasks: list[str], ops: MergeOps = REFERENCE
    ) -> torch.Tensor:
        """The one forward with task selection: `task_idx` (B,) indexes `tasks`."""
        P = None
        if gamma > 0:
            P = self._prompt_table(gamma, x.dtype, tasks)[task_idx]  # (B, L, γ, C)
        feats = self._features(x, gamma, P, ops)  # (B, C)
        W, b = self._head_table(max(gamma, 0), feats.dtype, tasks)  # (T, K, C), (T, K)
        return torch.einsum("bc,bkc->bk", feats, W[task_idx]) + b[task_idx]  # (B, K)

    def _features(self, x: torch.Tensor, gamma: int, P: torch.Tensor | None, ops: MergeOps = REFERENCE) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # (B, N, C)
        p = vit.num_prefix_tokens
        size = None
        if gamma > 0:
            x = self._blocks_prompted(x, P.to(x.dtype))
        elif gamma < 0:
            x, size = self._blocks_merged(x, -gamma, ops)
        else:
            x = vit.blocks(x)
        x = vit.norm(x)
        if vit.global_pool == "token":
            x = x[:, 0]
        elif vit.global_pool == "avg":
            skip = p + max(gamma, 0)
            w = size[:, skip:] if size is not None else torch.ones_like(x[:, skip:, :1])
            x = (x[:, skip:] * w).sum(1) / w.sum(1)
        else:
            raise ValueError(f"global_pool={vit.global_pool!r} is not supported with token adaptation")
        return vit.head_drop(vit.fc_norm(x))

    def _prompt_table(self, gamma: int, dtype: torch.dtype, tasks: list[str]) -> torch.Tensor:
        """(T, L, γ, C) in `tasks` order; zeros for the source task, which has no prompts."""
        ref = self.prompts[key(next(iter(self.config.tasks)), gamma)]
        return torch.stack([torch.zeros_like(ref) if t == SOURCE else self.prompts[key(t, gamma)] for t in tasks]).to(
            dtype
        )

    def _head_table(self, gamma: int, dtype: torch.dtype, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads of `tasks` as (T, K, C) weights and (T, K) biases, -inf bias in padded classes."""
        K = max(self.num_classes(t) for t in tasks)
        C = self.vit.embed_dim
        W = self.vit.head.weight.new_zeros(len(tasks), K, C, dtype=dtype)
        b = W.new_full((len(tasks), K), float("-inf"))
        for i, t in enumerate(tasks):
            head = self._head(t, 0 if t == SOURCE else gamma)
            n = head.weight.shape[0]
            W[i, :n] = head.weight.to(dtype)
            b[i, :n] = head.bias.to(dtype) if head.bias is not None else 0
        return W, b

    def _blocks_prompted(self, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        """x (B, N, C), P (B, L, γ, C): insert γ prompts after the prefix; deep: fresh ones per block."""
        p, gamma = self.vit.num_prefix_tokens, P.shape[2]
        x = torch.cat([x[:, :p], P[:, 0], x[:, p:]], dim=1)  # (B, N + γ, C)
        for i, blk in enumerate(self.vit.blocks):
            if i > 0 and self.config.deep:
                x = torch.cat([x[:, :p], P[:, i], x[:, p + gamma :]], dim=1)
            x = blk(x)
        return x

    def _blocks_merged(self, x: torch.Tensor, r: int, ops: MergeOps = REFERENCE) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, C) -> tokens after the last block (B, N_L, C) and their sizes (B, N_L, 1)."""
        p = self.vit.num_prefix_tokens
        schedule = self.merge_schedule(-r, x.shape[1])
        size = torch.ones_like(x[..., :1])  # (B, N, 1)
        prop, merged = self.config.proportional_attn, False
        for i, (blk, r_l) in enumerate(zip(self.vit.blocks, schedule, strict=True)):
            # until the first merge every size is 1, so log(size) adds nothing: plain attention, no bias
            h, k = ops.attention(i, blk.attn, blk.norm1(x), size if prop and merged else None)
            h = blk.drop_path1(blk.ls1(h))
            if r_l > 0:  # merge the tokens of x + h (a fast merge adds as it reads)
                x, size = ops.merge(x, size, k, r_l, p, add=h)
                merged = True
            else:
                x = x + h
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x, size

    def _head(self, task: str, gamma: int) -> nn.Module:
        if task == SOURCE:
            return self.vit.head
        return self.heads[key(task, gamma)]

    def _tasks(self, task: str | Sequence[str], batch: int) -> list[str]:
        tasks = [task] * batch if isinstance(task, str) else list(task)
        if len(tasks) != batch:
            raise ValueError(f"got {len(tasks)} task names for a batch of {batch} images")
        for t in set(tasks):
            if t != SOURCE and t not in self.config.tasks:
                raise ValueError(f"unknown task {t!r}; this model serves {self.tasks}")
        return tasks

    # -- training helpers ------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter (prompts and task heads stay trainable)."""
        for prm in self.vit.parameters():
            prm.requires_grad_(False)

    def task_parameters(self, task: str, gamma: int) -> list[nn.Parameter]:
        params = list(self.heads[key(task, gamma)].parameters())
        if gamma > 0:
            params.append(self.prompts[key(task, gamma)])
        return params

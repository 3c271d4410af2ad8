"""LayerSync: pull a student block's hidden states towards a teacher block of the same denoiser.

The term added to the loss is -λ·mean_tokens cos(student, sg(teacher)): the teacher's hidden
states are detached, every token (a DiT token, or a UNet feature-map position with its
channels) counts once. Block indices follow SimpleTuner: an index above 0 is a 1-based depth
(the LayerSync paper's), so ``n`` names block ``n - 1``; 0 names the first block. The teacher
defaults to the student (the term is then a constant -λ). The blocks come from the family's
``FamilySpec.hidden_blocks``; forward hooks capture their outputs only inside
``LayerSync.capturing`` (the training forward pass), so validation and export never see them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def block_index(depth: int) -> int:
    """The 0-based block a LayerSync index names (SimpleTuner: 1-based first, 0 stays 0)."""
    return depth - 1 if depth > 0 else 0


def tokens(hidden: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens of a block output: DiT tokens (B, N, D) as they are, a UNet feature map
    (B, C, H, W) as H·W tokens of C channels."""
    if hidden.ndim == 3:
        return hidden
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2)
    raise ValueError(f"LayerSync cannot read hidden states of shape {tuple(hidden.shape)}")


def alignment_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(-weight · mean cosine similarity, the mean similarity) over (B, N, D) tokens; the
    teacher is detached."""
    s = torch.nn.functional.normalize(student.float(), dim=-1)
    t = torch.nn.functional.normalize(teacher.detach().float(), dim=-1)
    similarity = (s * t).sum(dim=-1).mean()
    return -weight * similarity, similarity


@dataclass(frozen=True)
class Settings:
    student: int  # 0-based block indices
    teacher: int
    weight: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings | None:
        if not options.get("layersync_enabled"):
            return None
        student = int(options["layersync_student_block"])
        teacher = options.get("layersync_teacher_block")
        return cls(
            student=block_index(student),
            teacher=block_index(student if teacher is None else int(teacher)),
            weight=float(options["layersync_lambda"]),
        )


def denoiser_blocks(
    denoiser: torch.nn.Module, hidden_blocks: tuple[tuple[str, int], ...]
) -> list[tuple[torch.nn.Module, int]]:
    """(block, output index) in forward order from ``FamilySpec.hidden_blocks``."""
    blocks: list[tuple[torch.nn.Module, int]] = []
    for path, output in hidden_blocks:
        module = denoiser.get_submodule(path)
        members = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
        blocks.extend((block, output) for block in members)
    return blocks


@dataclass
class Capture:
    """Forward hooks on some of ``blocks`` that keep each one's first output of a forward pass
    run inside ``capturing`` (gradient checkpointing re-runs blocks; the re-run is ignored)."""

    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    active: bool = False

    @classmethod
    def on(cls, blocks: list[tuple[torch.nn.Module, int]], indices: set[int]) -> Capture:
        capture = cls()
        for index in indices:
            block, output = blocks[index]
            block.register_forward_hook(capture._hook(index, output))
        return capture

    def _hook(self, index: int, output_index: int):
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            if self.active and index not in self.captured:
                self.captured[index] = output[output_index] if isinstance(output, tuple) else output

        return hook

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Capture the blocks' outputs during the forward pass inside this block."""
        self.captured.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False


def check_index(key: str, index: int, blocks: list, *, one_based: bool) -> None:
    """A clear error when block ``index`` (0-based) is beyond the denoiser's blocks."""
    if index < len(blocks):
        return
    named = f"block {index + 1} (1-based)" if one_based else f"block {index} (0-based)"
    accepted = f"1..{len(blocks)} (0 is the first block)" if one_based else f"0..{len(blocks) - 1}"
    raise ValueError(
        f"{key}: {named} does not exist; this denoiser has {len(blocks)} blocks, "
        f"accepted {accepted}"
    )


@dataclass
class LayerSync:
    settings: Settings
    capture: Capture

    @classmethod
    def attach(
        cls,
        options: Mapping[str, Any],
        denoiser: torch.nn.Module,
        hidden_blocks: tuple[tuple[str, int], ...],
    ) -> LayerSync | None:
        """Hooks on the student and teacher blocks of ``denoiser``; None when LayerSync is off."""
        settings = Settings.from_options(options)
        if settings is None:
            return None
        blocks = denoiser_blocks(denoiser, hidden_blocks)
        for key, index in (
            ("layersync_student_block", settings.student),
            ("layersync_teacher_block", settings.teacher),
        ):
            check_index(key, index, blocks, one_based=True)
        return cls(settings, Capture.on(blocks, {settings.student, settings.teacher}))

    def capturing(self) -> contextlib.AbstractContextManager:
        return self.capture.capturing()

    def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the weighted term, the mean similarity) of the last captured forward pass."""
        captured = self.capture.captured
        student = captured.pop(self.settings.student, None)
        teacher = captured.pop(self.settings.teacher, student)
        if student is None or teacher is None:
            raise RuntimeError("LayerSync: the student / teacher block did not run in the forward")
        s, t = tokens(student), tokens(teacher)
        if s.shape != t.shape:
            raise ValueError(
                f"layersync_student_block (block {self.settings.student + 1}) gives hidden "
                f"states {tuple(s.shape)} but layersync_teacher_block (block "
                f"{self.settings.teacher + 1}) gives {tuple(t.shape)}; choose two blocks of the "
                "same width and token count"
            )
        captured.clear()
        return alignment_loss(s, t, self.settings.weight)


def capturing(*users: Any) -> contextlib.AbstractContextManager:
    """Every given regulariser's ``capturing()`` (LayerSync, CREPA); None entries are off."""
    stack = contextlib.ExitStack()
    for user in users:
        if user is not None:
            stack.enter_context(user.capturing())
    return stack


def option_problems(
    options: Mapping[str, Any], *, hidden_blocks: tuple[tuple[str, int], ...], family: str
) -> list[tuple[str, str]]:
    """Why the LayerSync options cannot apply to this run: (option, message) pairs."""
    if not options.get("layersync_enabled"):
        return []
    problems = []
    if not hidden_blocks:
        problems.append(
            (
                "layersync_enabled",
                f"{family} does not expose its denoiser's block list to st_ray "
                "(FamilySpec.hidden_blocks), so LayerSync cannot hook its blocks",
            )
        )
    if options.get("layersync_student_block") is None:
        problems.append(("layersync_student_block", "is required when layersync_enabled is on"))
    if not float(options.get("layersync_lambda") or 0) > 0:
        problems.append(("layersync_lambda", "must be greater than 0 when LayerSync is enabled"))
    return problems

"""TREAD token routing: a random subset of image tokens skips a span of DiT blocks.

Follows SimpleTuner's ``tread_config``: ``{"routes": [{"selection_ratio": r,
"start_layer_idx": s, "end_layer_idx": e}, ...]}``. ``r`` is the fraction of image tokens
*dropped* (SimpleTuner keeps ``S - round(S·r)`` of ``S``); ``s`` and ``e`` index the family's
block list (``FamilySpec.hidden_blocks``, counted as one list), negative from the end, both
inclusive: the kept tokens run through blocks s..e, the dropped ones wait, and after block e
every token is back in place (the dropped ones unchanged, gradients flow to all). Text tokens
are never routed. The subset is uniform at random (SimpleTuner's router with its default
l1_reg 0), drawn per sample where positions live in the tokens; where the blocks take rotary
tables (``TokenRouting.rotary``), one subset is shared by the batch so the tables can be sliced
the way diffusers' attention expects them (SimpleTuner batches per-sample tables in its own
attention code). Routing runs only in training-mode forward passes with gradients on, inside
``Tread.routing`` (the training step): validation, evaluation and export never route.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from st_ray.models.family import FamilySpec, TokenRouting

OPTION = "tread_config"
ROUTE_KEYS = ("selection_ratio", "start_layer_idx", "end_layer_idx")
ACCEPTED = (
    'accepted: {"routes": [{"selection_ratio": r, "start_layer_idx": s, "end_layer_idx": e}, '
    "...]} with 0 <= r < 1 (the fraction of image tokens that skip the span) and integer block "
    "indices (negative from the end, s <= e, spans not overlapping)"
)


@dataclass(frozen=True)
class Route:
    ratio: float  # fraction of image tokens dropped
    start: int  # 0-based, inclusive
    end: int  # 0-based, inclusive


def config_value(options: Mapping[str, Any]) -> Any:
    """``tread_config`` as given inline, or read from the JSON file it names."""
    value = options.get(OPTION)
    if isinstance(value, str):
        from pathlib import Path

        from st_ray.config.sources import read_json

        return read_json(Path(value).expanduser(), f"{OPTION} file")
    return value


def route_problems(value: Any, blocks: int | None = None) -> list[str]:
    """What is wrong with a ``tread_config`` value (empty: nothing); ``blocks`` is the number
    of blocks when known, to check the indices against."""
    if not isinstance(value, Mapping) or not isinstance(value.get("routes"), list):
        return [f"needs a 'routes' list; {ACCEPTED}"]
    if not value["routes"]:
        return [f"'routes' is empty; {ACCEPTED}"]
    problems = [f"unknown key {k!r}; {ACCEPTED}" for k in value if k != "routes"]
    spans: list[tuple[int, int, int]] = []
    for i, route in enumerate(value["routes"]):
        where = f"routes[{i}]"
        if not isinstance(route, Mapping) or set(route) != set(ROUTE_KEYS):
            problems.append(
                f"{where} must have exactly the keys {', '.join(ROUTE_KEYS)}; {ACCEPTED}"
            )
            continue
        ratio, start, end = (route[k] for k in ROUTE_KEYS)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            problems.append(f"{where}.selection_ratio is {ratio!r}; {ACCEPTED}")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (start, end)):
            problems.append(
                f"{where}: layer indices {start!r}, {end!r} are not integers; {ACCEPTED}"
            )
            continue
        if blocks is not None:
            bad = [x for x in (start, end) if not -blocks <= x < blocks]
            if bad:
                problems.append(
                    f"{where}: layer {bad[0]} does not exist; this denoiser has {blocks} blocks, "
                    f"accepted {-blocks}..{blocks - 1}"
                )
                continue
            start, end = start % blocks, end % blocks
        elif (start < 0) != (end < 0):
            continue  # mixed signs: checked once the block count is known
        if start > end:
            problems.append(f"{where}: start_layer_idx comes after end_layer_idx; {ACCEPTED}")
            continue
        spans.append((start, end, i))
    if blocks is not None or all(s >= 0 for s, _, _ in spans) or all(s < 0 for s, _, _ in spans):
        spans.sort()
        for (_, end, i), (start, _, j) in zip(spans, spans[1:], strict=False):
            if start <= end:
                problems.append(f"routes[{i}] and routes[{j}] overlap; {ACCEPTED}")
    return problems


def resolve(value: Mapping[str, Any], blocks: int) -> list[Route]:
    """The routes in block order with 0-based indices; ValueError naming tread_config when
    they do not fit a denoiser of ``blocks`` blocks."""
    problems = route_problems(value, blocks)
    if problems:
        raise ValueError(f"{OPTION}: " + "; ".join(problems))
    routes = [
        Route(
            float(r["selection_ratio"]), r["start_layer_idx"] % blocks, r["end_layer_idx"] % blocks
        )
        for r in value["routes"]
    ]
    return sorted(routes, key=lambda r: r.start)


def keep_count(tokens: int, ratio: float) -> int:
    """Tokens kept of ``tokens`` when ``ratio`` of them are dropped (SimpleTuner's rounding)."""
    return tokens - int(round(tokens * ratio))


def draw_kept(
    batch: int, tokens: int, ratio: float, generator: torch.Generator, *, shared: bool
) -> torch.Tensor:
    """(batch, kept) indices of the tokens kept, ascending, uniformly at random per sample (or
    one draw for the whole batch when ``shared``)."""
    rows = 1 if shared else batch
    noise = torch.rand(rows, tokens, generator=generator)
    kept = noise.argsort(dim=1)[:, : keep_count(tokens, ratio)].sort(dim=1).values
    return kept.expand(batch, -1) if shared else kept


def gather(tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The kept rows of (B, S, D) ``tokens``."""
    return tokens.gather(1, kept.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restore(full: torch.Tensor, routed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``full`` (the tokens before the span) with the kept rows replaced by ``routed``."""
    index = kept.unsqueeze(-1).expand(-1, -1, full.shape[-1])
    return full.to(routed.dtype).scatter(1, index, routed)


def route_rotary(rotary: Any, kind: str, kept: torch.Tensor, text_tokens: int) -> Any:
    """The blocks' rotary argument for the kept image tokens (``kept`` shared by the batch)."""
    rows = kept[0]
    if kind == "text_first":
        return tuple(
            torch.cat([r[:text_tokens], r[text_tokens:][rows.to(r.device)]]) for r in rotary
        )
    if kind == "image_first":
        image, text = rotary
        return image[rows.to(image.device)], text
    raise ValueError(f"unknown TokenRouting.rotary {kind!r}")


@dataclass
class Tread:
    routes: list[Route]
    blocks: list[tuple[torch.nn.Module, int]]
    layout: TokenRouting
    generator: torch.Generator
    active: bool = False
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # route -> indices, per step
    saved: dict[int, torch.Tensor] = field(default_factory=dict)  # route -> tokens before it
    routed_tokens: list[int] = field(default_factory=list)  # tokens entering each route

    @classmethod
    def attach(
        cls, options: Mapping[str, Any], denoiser: torch.nn.Module, spec: FamilySpec
    ) -> Tread | None:
        """Hooks on the blocks of ``denoiser`` the routes span; None when tread_config is unset."""
        value = config_value(options)
        if value is None:
            return None
        if spec.token_routing is None:
            raise ValueError(f"{OPTION}: {refusal(spec)}")
        from st_ray.train.layersync import denoiser_blocks

        blocks = denoiser_blocks(denoiser, spec.hidden_blocks)
        generator = torch.Generator().manual_seed(int(options.get("seed") or 42))
        tread = cls(resolve(value, len(blocks)), blocks, spec.token_routing, generator)
        for index, route in enumerate(tread.routes):
            for position in range(route.start, route.end + 1):
                block, output = blocks[position]
                block.register_forward_pre_hook(tread._enter(index, position), with_kwargs=True)
            block, output = blocks[route.end]
            block.register_forward_hook(tread._leave(index, output))
        return tread

    def _live(self, module: torch.nn.Module) -> bool:
        return self.active and module.training and torch.is_grad_enabled()

    def _enter(self, index: int, position: int):
        route = self.routes[index]
        signature = inspect.signature(self.blocks[position][0].forward)

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            if not self._live(module):
                return None
            bound = signature.bind(*args, **kwargs)
            given = bound.arguments
            if position == route.start:
                tokens = given["hidden_states"]
                if index not in self.kept:  # first pass; a checkpoint recompute reuses it
                    b, s = tokens.shape[:2]
                    shared = self.layout.rotary != "none"
                    kept = draw_kept(b, s, route.ratio, self.generator, shared=shared)
                    self.kept[index] = kept.to(tokens.device)
                    self.routed_tokens.append(s)
                self.saved[index] = tokens
                given["hidden_states"] = gather(tokens, self.kept[index])
            self._route_extras(given, self.kept[index])
            return tuple(bound.args), dict(bound.kwargs)

        return hook

    def _route_extras(self, given: dict[str, Any], kept: torch.Tensor) -> None:
        """Slice what else in a block's arguments is indexed by image token."""
        if given.get("attention_mask") is not None or given.get("modulate_index") is not None:
            raise RuntimeError(
                f"{OPTION}: this denoiser's blocks take a per-image-token mask, which TREAD "
                "routing does not slice; train without tread_config"
            )
        text = given.get("encoder_hidden_states")
        text_tokens = 0 if text is None else text.shape[1]
        if self.layout.rotary != "none" and given.get("image_rotary_emb") is not None:
            rotary = given["image_rotary_emb"]
            given["image_rotary_emb"] = route_rotary(rotary, self.layout.rotary, kept, text_tokens)
        joint = given.get("joint_attention_kwargs")
        if joint and joint.get("attention_mask") is not None:  # keys laid out [text | image]
            mask = joint["attention_mask"]
            rows = kept[0].to(mask.device) + text_tokens
            keys = torch.cat([mask[..., :text_tokens], mask.index_select(-1, rows)], dim=-1)
            given["joint_attention_kwargs"] = {**joint, "attention_mask": keys}

    def _leave(self, index: int, output_index: int):
        def hook(module: torch.nn.Module, _args: Any, output: Any) -> Any:
            if not self._live(module) or index not in self.saved:
                return None
            kept, full = self.kept[index], self.saved.pop(index)
            if not isinstance(output, tuple):
                return restore(full, output, kept)
            out = list(output)
            out[output_index] = restore(full, out[output_index], kept)
            return tuple(out)

        return hook

    @contextlib.contextmanager
    def routing(self) -> Iterator[None]:
        """Route the training forward pass (and its backward's recomputations) inside this
        block; each entry draws new subsets."""
        self.kept.clear()
        self.saved.clear()
        self.routed_tokens.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False
            self.saved.clear()


def routing(tread: Tread | None) -> contextlib.AbstractContextManager:
    """``tread.routing()``, or nothing when TREAD is off."""
    return contextlib.nullcontext() if tread is None else tread.routing()


def refusal(spec: FamilySpec) -> str:
    return spec.token_routing_refused or (
        f"{spec.name} does not declare how its denoiser's blocks take image tokens "
        "(FamilySpec.token_routing), so TREAD cannot route them"
    )


def option_problems(
    options: Mapping[str, Any], spec: FamilySpec, blocks: int | None
) -> list[tuple[str, str]]:
    """Why tread_config cannot apply to this run: (option, message) pairs."""
    value = config_value(options)
    if value is None:
        return []
    if spec.token_routing is None:
        return [(OPTION, refusal(spec))]
    return [(OPTION, p) for p in route_problems(value, blocks)]


def block_count(spec: FamilySpec, model_path: Any) -> int | None:
    """The denoiser's block count from a local model folder's config.json, None when it is not
    on disk (then the build checks the indices)."""
    import json
    from pathlib import Path

    if spec.token_routing is None or not model_path:
        return None
    config = Path(str(model_path)) / spec.denoiser / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    try:
        return sum(int(values[k]) for k in spec.token_routing.layer_keys)
    except (KeyError, TypeError, ValueError):
        return None

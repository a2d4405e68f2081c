"""The bit-width environment of the search (SPEC §5, as in HAQ).

An episode walks the quantizable layers in forward order: one step for a layer's weight bits, then one for its
activation bits (or a single step for both when they are tied). Pinned layers (HAQ: the first and the last, at 8
bits) take no step. The state of a step is

    [layer index, C_in, C_out, kernel size, stride, feature-map size (H*W), #params, is-depthwise,
     weight-or-activation flag, previous action]

with every static feature min-max normalized across the episode's steps. An action a in [0, 1] becomes
b = round(b_min - 0.5 + a * (b_max - b_min + 1)) clipped to [b_min, b_max]. After the last step the policy is
repaired to the BitOPs budget: sweeps from the last layer to the first lower each unpinned layer's activation and
then weight bits by one, until the policy fits (or everything is at b_min, which the constructor rules out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from certquant.quant import LayerInfo, Policy, fp32_bitops
from certquant.utils.errors import CertquantError

STATE_FEATURES = (
    "layer_index",
    "c_in",
    "c_out",
    "kernel_size",
    "stride",
    "feature_map",
    "params",
    "is_depthwise",
    "is_activation",
    "previous_action",
)

# Budgets compare in floating point against exact integer BitOPs; a relative slack of 1e-12 lets the policy that
# exactly meets a budget (uniform W4A4 at 0.015625) fit.
_BUDGET_SLACK = 1e-12


@dataclass(frozen=True)
class EnvConfig:
    """The search space and the budget."""

    budget: float
    """BitOPs budget as a fraction of FP32 BitOPs, in (0, 1] (SPEC §4: 0.015625 = uniform W4A4)."""
    min_bits: int = 2
    """b_min: the lowest bit-width an action can choose (HAQ: 2)."""
    max_bits: int = 8
    """b_max: the highest bit-width an action can choose (HAQ: 8)."""
    pin_first_last: bool = True
    """Keep the first and the last layer at ``pin_bits`` for weights and activations; they take no step."""
    pin_bits: int = 8
    """The bit-width of pinned layers."""
    tie_weight_activation: bool = False
    """One step per layer choosing w_bits = a_bits, instead of one step for each."""

    def __post_init__(self) -> None:
        if not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise CertquantError(
                f"budget must be a fraction of FP32 BitOPs in (0, 1], got {self.budget} (e.g. 0.015625 = uniform W4A4)"
            )
        if not 1 <= self.min_bits <= self.max_bits <= 32:
            raise CertquantError(
                f"bit range must satisfy 1 <= min_bits <= max_bits <= 32, got [{self.min_bits}, {self.max_bits}]"
            )
        if not 1 <= self.pin_bits <= 32:
            raise CertquantError(f"pin_bits must be in [1, 32], got {self.pin_bits}")


def action_to_bits(action: float, min_bits: int, max_bits: int) -> int:
    """b = round(b_min - 0.5 + a * (b_max - b_min + 1)), clipped to [b_min, b_max] (SPEC §5)."""
    bits = round(min_bits - 0.5 + float(action) * (max_bits - min_bits + 1))
    return int(min(max(bits, min_bits), max_bits))


@dataclass(frozen=True)
class Step:
    """One decision of an episode: which layer, and whether it sets weight bits, activation bits, or both (tied)."""

    layer: int  # position in the layer list
    target: str  # "w", "a" or "wa"


class BitWidthEnv:
    """Episodes over ``layers``: ``reset()``, then ``step(action)`` until done, then ``policy()`` (repaired)."""

    def __init__(self, layers: Sequence[LayerInfo], config: EnvConfig, arch: str | None = None):
        if not layers:
            raise CertquantError("no quantizable layers: nothing to search")
        self.layers = list(layers)
        self.config = config
        self.arch = arch
        self.fp32 = fp32_bitops(self.layers)
        self.limit = config.budget * self.fp32 * (1 + _BUDGET_SLACK)
        last = len(self.layers) - 1
        self.pinned = {0, last} if config.pin_first_last else set()
        searchable = [i for i in range(len(self.layers)) if i not in self.pinned]
        if not searchable:
            raise CertquantError(
                f"all {len(self.layers)} layers are pinned: nothing to search (turn off first/last pinning)"
            )
        targets = ("wa",) if config.tie_weight_activation else ("w", "a")
        self.steps = [Step(i, t) for i in searchable for t in targets]
        self._features = self._static_features()

        floor = self.lowest_bits()
        if self.bitops(*floor) > self.limit:
            raise CertquantError(
                f"budget {config.budget:g} of FP32 BitOPs is unreachable: even the lowest bits give "
                f"{self.bitops(*floor) / self.fp32:.6g} (unpinned layers at {config.min_bits} bits"
                + (f", first/last at {config.pin_bits}" if self.pinned else "")
                + "): raise the budget"
                + (" or drop first/last pinning" if self.pinned else "")
            )
        self.reset()

    # -- the state ------------------------------------------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        return len(STATE_FEATURES)

    @property
    def episode_length(self) -> int:
        return len(self.steps)

    def _static_features(self) -> np.ndarray:
        """The first 9 features of every step, min-max normalized across steps (a constant column becomes 0)."""
        rows = []
        for step in self.steps:
            layer = self.layers[step.layer]
            rows.append(
                [
                    layer.index,
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size[0] * layer.kernel_size[1],
                    layer.stride[0],
                    layer.in_hw[0] * layer.in_hw[1],
                    layer.params,
                    float(layer.is_depthwise),
                    1.0 if step.target == "a" else 0.0,
                ]
            )
        table = np.asarray(rows, dtype=np.float64)
        low, span = table.min(0), table.max(0) - table.min(0)
        return ((table - low) / np.where(span > 0, span, 1.0)).astype(np.float32)

    def state(self) -> np.ndarray:
        """The state of the current step (the previous action is 0 at the first step)."""
        return np.append(self._features[self._t], np.float32(self._previous)).astype(np.float32)

    # -- an episode -----------------------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Start an episode: pinned layers at ``pin_bits``, every other layer at b_max until its step sets it."""
        cfg = self.config
        self._t, self._previous = 0, 0.0
        self._w = [cfg.pin_bits if i in self.pinned else cfg.max_bits for i in range(len(self.layers))]
        self._a = list(self._w)
        self.actions: list[float] = []
        return self.state()

    def step(self, action: float) -> tuple[np.ndarray | None, bool]:
        """Apply ``action`` to the current step; returns (next state or None at the end, done)."""
        if self._t >= len(self.steps):
            raise CertquantError("the episode is over: call reset() first")
        action = float(np.clip(action, 0.0, 1.0))
        step = self.steps[self._t]
        bits = action_to_bits(action, self.config.min_bits, self.config.max_bits)
        if "w" in step.target:
            self._w[step.layer] = bits
        if "a" in step.target:
            self._a[step.layer] = bits
        self.actions.append(action)
        self._previous = action
        self._t += 1
        done = self._t == len(self.steps)
        return (None if done else self.state()), done

    def chosen_bits(self) -> tuple[list[int], list[int]]:
        """(w_bits, a_bits) the actions chose so far, before any budget repair."""
        return list(self._w), list(self._a)

    def policy(self) -> Policy:
        """The finished episode's policy, repaired to the budget."""
        if self._t < len(self.steps):
            raise CertquantError(f"the episode is not finished ({self._t} of {len(self.steps)} steps)")
        w, a = self.repair(self._w, self._a)
        return Policy.from_lists(self.layers, w, a, arch=self.arch)

    def policy_from_actions(self, actions: Sequence[float]) -> Policy:
        """Run a whole episode from ``actions`` (one per step) and return the repaired policy."""
        if len(actions) != len(self.steps):
            raise CertquantError(f"{len(actions)} actions for an episode of {len(self.steps)} steps")
        self.reset()
        for action in actions:
            self.step(action)
        return self.policy()

    # -- cost and budget ------------------------------------------------------------------------------------------

    def bitops(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> int:
        """sum over layers of MACs * w_bits * a_bits (SPEC §4)."""
        return sum(layer.macs * w * a for layer, w, a in zip(self.layers, w_bits, a_bits))

    def fits(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> bool:
        return self.bitops(w_bits, a_bits) <= self.limit

    def lowest_bits(self) -> tuple[list[int], list[int]]:
        """Every unpinned layer at b_min, pinned ones at ``pin_bits``: the cheapest policy of the search space."""
        cfg = self.config
        w = [cfg.pin_bits if i in self.pinned else cfg.min_bits for i in range(len(self.layers))]
        return w, list(w)

    def repair(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> tuple[list[int], list[int]]:
        """Lower bits until the policy fits the budget (SPEC §5): sweeps from the last layer to the first, lowering
        each unpinned layer's activation bits and then its weight bits by one (both at once when tied), checking the
        budget after every change."""
        w, a = list(w_bits), list(a_bits)
        b_min, tied = self.config.min_bits, self.config.tie_weight_activation
        order = [i for i in reversed(range(len(self.layers))) if i not in self.pinned]
        while not self.fits(w, a):
            changed = False
            for i in order:
                if tied:
                    if w[i] > b_min or a[i] > b_min:
                        w[i], a[i] = max(b_min, w[i] - 1), max(b_min, a[i] - 1)
                        changed = True
                        if self.fits(w, a):
                            return w, a
                    continue
                for bits in (a, w):
                    if bits[i] > b_min:
                        bits[i] -= 1
                        changed = True
                        if self.fits(w, a):
                            return w, a
            if not changed:  # everything at b_min; the constructor checked that this fits
                break
        return w, a

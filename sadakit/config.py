"""SADA configuration: an attrs class that validates itself and names what is allowed."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import field, validators


def _int_at_least(minimum: int):
    def check(instance, attribute, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"SADAConfig.{attribute.name} must be an integer >= {minimum}, got {value!r}"
            )

    return check


def _fraction(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"SADAConfig.{attribute.name} must be a number in (0, 1], got {value!r}")


def _one_of(*allowed):
    def check(instance, attribute, value):
        if value not in allowed:
            raise ValueError(
                f"SADAConfig.{attribute.name} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
            )

    return check


#: Token counts of partial calls under ``SADAConfig.static_shapes``, as fractions of the grid.
TOKEN_BUCKETS = (0.25, 0.5, 0.75)


@attrs.frozen(kw_only=True)
class SADAConfig:
    """What SADA may do on a pipeline, and the guard rails around it.

    The defaults are safe for every family; each plugin offers its family's tuned defaults
    (``sadakit.default_config(pipe)``). Use ``attrs.evolve(config, field=value)`` for variants.
    """

    #: Skip whole denoiser calls where the trajectory is locally stable (step-wise sparsity).
    skip_steps: bool = field(default=True, validator=validators.instance_of(bool))
    #: Recompute only unstable tokens (plus anchors) on partial calls (token-wise sparsity).
    token_sparsity: bool = field(default=True, validator=validators.instance_of(bool))
    #: Calls always computed at the start. The criterion needs three drifts, so at least 3.
    warmup_calls: int = field(default=4, validator=_int_at_least(3))
    #: Fraction of the generation's calls also kept as warm-up (the larger of the two wins).
    warmup_fraction: float = field(default=0.2)
    #: Calls always computed at the end (fine detail is formed there).
    final_calls: int = field(default=2, validator=_int_at_least(0))
    #: Longest run of skipped calls per sample before a forced full refresh.
    max_consecutive_skips: int = field(default=1, validator=_int_at_least(1))
    #: What is extrapolated on a skipped call: the clean estimate x0 or the raw model output.
    extrapolation: Literal["x0", "output"] = field(default="x0", validator=_one_of("x0", "output"))
    #: Polynomial order of the extrapolation (1 = linear through the last two computed calls).
    extrapolation_order: int = field(default=1)
    #: From this fraction of the calls on, compute every ``late_phase_interval``-th call and
    #: extrapolate the others with a Lagrange polynomial of ``late_phase_order`` through the
    #: computed x0. The published code does this from step 24 of 50 (every 4th step, 4 terms);
    #: on the analytic testbed (docs/testbed.md) quadratic extrapolation every 2nd/3rd call from a
    #: quarter of the way in is 10-20x closer to the unaccelerated output at the same NFE.
    #: None: the stability criterion decides everywhere.
    late_phase_start: float | None = field(default=0.25)
    #: None = automatic: every 3rd call for generations of >= 40 calls (2x at 50 steps),
    #: every 2nd below (fewer nodes make wide extrapolation unsafe).
    late_phase_interval: int | None = field(default=None)
    #: None = automatic: quadratic through the computed calls at the automatic intervals (2, 3);
    #: at longer ones linear over the first half of each interval and x0 held over the rest, the
    #: budget plan's rule (docs/frontier.md: interval 6 went 24.0 -> 49.2 dB on shapes).
    late_phase_order: int | None = field(default=None)
    #: Fraction of the denoiser calls that run the network, planned ahead (sadakit/runtime/budget.py,
    #: docs/frontier.md): a warm-up, then every s-th call, s as small as the budget allows; each
    #: skipped call extrapolates x0 at the highest order (<= ``budget_order``) whose nodes span
    #: the gap. Replaces the criterion and the late phase (and
    #: with them partial calls); None: the criterion and the late-phase schedule decide.
    budget: float | None = field(default=None)
    #: Fewest calls computed in a row at the start of a budget plan (the plan may use more).
    budget_warmup_calls: int = field(default=1, validator=_int_at_least(1))
    #: Where a budget plan puts its calls: "warmup" = a warm-up, every s-th call, the final
    #: calls; "even" = call floor(i * N / K) for i < K, the grid "fewer steps" would take, with
    #: no warm-up (the final calls are still computed unless ``final_calls=0``). Which is closer
    #: depends on the model (docs/frontier.md, "plan shapes"); ``sadakit.tune`` tries both.
    budget_spread: Literal["warmup", "even"] = field(default="warmup", validator=_one_of("warmup", "even"))
    #: Highest extrapolation order of a budget plan (0 = the solver's own step over the gap).
    budget_order: int = field(default=1)
    #: Calls past the newest computed one beyond which a budget plan extrapolates at order 0;
    #: None (default): half the spacing of the computed calls, rounded up, at most 3 (docs/frontier.md).
    budget_order_gap: int | None = field(default=None, validator=validators.optional(_int_at_least(1)))
    #: Side of the window that gets one rotating anchor token on partial calls.
    anchor_window: int = field(default=2, validator=_int_at_least(1))
    #: Partial calls only when at most this fraction of a block's tokens must be recomputed.
    max_token_fraction: float = field(default=0.75, validator=_fraction)
    #: Which eligible blocks prune tokens: only the highest-resolution ones, or all.
    token_resolutions: Literal["highest", "all"] = field(
        default="highest", validator=_one_of("highest", "all")
    )
    #: Measure the denoiser's FLOPs once per input shape (torch's flop counter) for ``report``.
    count_flops: bool = field(default=True, validator=validators.instance_of(bool))
    #: For CUDA graphs (``torch.compile(mode="reduce-overhead")``): partial calls round their
    #: token count up to one of ``TOKEN_BUCKETS`` (fractions of the grid; the extra tokens are the
    #: next least stable ones) and a step computes all rows or none, so a generation shows each
    #: block at most ``len(TOKEN_BUCKETS) + 1`` shapes (docs/gpu.md#cuda-graphs).
    static_shapes: bool = field(default=False, validator=validators.instance_of(bool))

    @extrapolation_order.validator
    def _check_order(self, attribute, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            raise ValueError(f"SADAConfig.extrapolation_order must be an integer in 0..3, got {value!r}")

    @warmup_fraction.validator
    def _check_warmup_fraction(self, attribute, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"SADAConfig.warmup_fraction must be a number in [0, 1), got {value!r}")

    @late_phase_start.validator
    def _check_late_start(self, attribute, value):
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"SADAConfig.late_phase_start must be None or a number in (0, 1), got {value!r}")

    @late_phase_interval.validator
    def _check_late_interval(self, attribute, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise ValueError(f"SADAConfig.late_phase_interval must be None (automatic) or an integer >= 2, got {value!r}")

    def interval_for(self, expected_calls: int | None) -> int:
        """The late-phase interval for a generation of ``expected_calls`` calls."""
        if self.late_phase_interval is not None:
            return self.late_phase_interval
        return 3 if expected_calls is not None and expected_calls >= 40 else 2

    @budget.validator
    def _check_budget(self, attribute, value):
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise ValueError(f"SADAConfig.budget must be None or a fraction of the calls in (0, 1], got {value!r}")

    @budget_order.validator
    def _check_budget_order(self, attribute, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            raise ValueError(f"SADAConfig.budget_order must be an integer in 0..3, got {value!r}")

    @late_phase_order.validator
    def _check_late_order(self, attribute, value):
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            raise ValueError(f"SADAConfig.late_phase_order must be an integer in 0..3, got {value!r}")

    @property
    def history_len(self) -> int:
        """Computed x0 values kept per row for extrapolation."""
        late = (2 if self.late_phase_order is None else self.late_phase_order) if self.late_phase_start is not None else 0
        budget = self.budget_order if self.budget is not None else 0
        return max(self.extrapolation_order, late, budget) + 1

    @property
    def enabled(self) -> bool:
        return self.skip_steps or self.token_sparsity

    @property
    def budget_planned(self) -> bool:
        """Whether a budget plan decides the calls: it computes whole calls or none, so token
        sparsity never acts and no block residual needs keeping."""
        return self.skip_steps and self.budget is not None

    @property
    def prunes_tokens(self) -> bool:
        """Whether some call of a generation may run its blocks on part of the tokens."""
        return self.token_sparsity and not self.budget_planned

    @classmethod
    def disabled(cls) -> "SADAConfig":
        """Hooks installed, nothing skipped or pruned: outputs stay bit-identical (for testing)."""
        return cls(skip_steps=False, token_sparsity=False, late_phase_start=None)

    @classmethod
    def criterion_only(cls, **overrides) -> "SADAConfig":
        """Every skip decided by the stability criterion alone (no late-phase schedule)."""
        return cls(**{"late_phase_start": None, **overrides})

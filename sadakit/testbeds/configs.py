"""The testbed's named configurations, in one place.

Every benchmark row (solvers, SADA, AdaSDE) names one of these, so results from different
issues are measured on the same distributions and the same seeds. Add a configuration with
``register_config``; build one with ``get_testbed(name)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import attrs
from attrs import field, validators

from .errors import make_error_denoiser
from .gmm import GaussianMixture


def _shape(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if not (isinstance(value, tuple) and value and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"TestbedConfig.{attribute.name} must be a non-empty tuple of positive ints, got {value!r}")


@attrs.frozen(kw_only=True)
class ErrorSpec:
    """A deliberate estimation error in the denoiser (see ``sadakit.testbeds.errors``)."""

    kind: str = field(validator=validators.in_(("field", "covariance")))
    magnitude: float = field(validator=validators.and_(validators.instance_of(float), validators.ge(0.0)))
    seed: int = field(default=1234, validator=validators.instance_of(int))


@attrs.frozen(kw_only=True)
class TestbedConfig:
    """A mixture (``layout`` ``"ring"`` in 2-D or ``"random"``) and an optional denoiser error."""

    __test__ = False  # not a pytest class

    name: str = field(validator=validators.instance_of(str))
    data_shape: tuple[int, ...] = field(converter=tuple, validator=_shape)
    n_components: int = field(validator=[validators.instance_of(int), validators.ge(1)])
    seed: int = field(validator=validators.instance_of(int))
    layout: str = field(default="random", validator=validators.in_(("random", "ring")))
    std_range: tuple[float, float] = field(default=(0.2, 0.5), converter=tuple)
    mean_scale: float = field(default=1.0)
    error: ErrorSpec | None = field(default=None)
    description: str = field(default="")

    def build_mixture(self) -> GaussianMixture:
        if self.layout == "ring":
            if self.data_shape != (2,):
                raise ValueError(f"layout 'ring' needs data_shape (2,), got {self.data_shape}")
            return GaussianMixture.ring(self.n_components, radius=2.0 * self.mean_scale, std=self.std_range[0])
        return GaussianMixture.random(
            self.data_shape, self.n_components, self.seed, mean_scale=self.mean_scale, std_range=self.std_range
        )


@attrs.frozen
class Testbed:
    """A built configuration: the true distribution and the denoiser solvers run on.

    ``denoiser`` is ``mixture`` itself unless the config injects an error; distribution metrics
    always compare against ``mixture`` (the truth).
    """

    __test__ = False

    config: TestbedConfig
    mixture: GaussianMixture
    denoiser: Any

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.config.data_shape

    @property
    def seed(self) -> int:
        return self.config.seed


CONFIGS: dict[str, TestbedConfig] = {}


def register_config(config: TestbedConfig) -> TestbedConfig:
    """Add a named configuration (names are unique)."""
    if config.name in CONFIGS:
        raise ValueError(f"testbed config {config.name!r} already exists")
    CONFIGS[config.name] = config
    return config


@lru_cache(maxsize=None)
def get_testbed(name: str) -> Testbed:
    """Build (once) the testbed of a registered configuration."""
    if name not in CONFIGS:
        raise KeyError(f"unknown testbed config {name!r}; known: {', '.join(CONFIGS)}")
    config = CONFIGS[name]
    mixture = config.build_mixture()
    denoiser = mixture if config.error is None else make_error_denoiser(
        mixture, config.error.kind, config.error.magnitude, config.error.seed
    )
    return Testbed(config, mixture, denoiser)


register_config(TestbedConfig(
    name="gmm2d-8", data_shape=(2,), n_components=8, seed=0, layout="ring", std_range=(0.2, 0.2),
    description="8 equal modes on a radius-2 circle, std 0.2: strongly multimodal, 2-D",
))
register_config(TestbedConfig(
    name="gmm64-16", data_shape=(64,), n_components=16, seed=1,
    description="16 random components in 64-D, diagonal stds in [0.2, 0.5]",
))
register_config(TestbedConfig(
    name="latent-4x16x16", data_shape=(4, 16, 16), n_components=8, seed=2, mean_scale=0.8,
    std_range=(0.3, 0.6), description="8 components on an SD-like 4x16x16 latent (d = 1024)",
))
register_config(TestbedConfig(
    name="gmm64-16-err", data_shape=(64,), n_components=16, seed=1,
    error=ErrorSpec(kind="field", magnitude=0.05),
    description="gmm64-16 with a smooth 5 % (RMS at pure noise) error field in the denoiser",
))

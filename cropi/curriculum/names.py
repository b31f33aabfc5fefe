"""Registries of the curriculum layer and the check of every registered name a config holds.

Names (selection policy, scorer, projector, rollout and score backends, comparison arms) are
checked here, against the registries of the layers that own them, rather than in
:mod:`cropi.config`, which sits below them all. Torch-free: the CLI builds its help texts from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cropi.config import RunConfig
from cropi.influence.registries import PROJECTORS
from cropi.influence.scorers import SCORERS
from cropi.rollout.backends import SAMPLERS
from cropi.select import FUSIONS, POLICIES
from cropi.utils.errors import CropiError
from cropi.utils.registry import Registry

SCORE_BACKENDS: Registry[Any] = Registry("score backend")
"""``score.backend -> fn(run, stage, sets) -> Timings`` that fills the stage's feature stores."""
SCORE_BACKENDS.register_lazy("local", "cropi.curriculum.score_phase:local_features")
SCORE_BACKENDS.register_lazy("ray", "cropi.scale.ray_score:ray_features")

NAMED_FIELDS: dict[str, Registry[Any] | tuple[str, ...]] = {
    "select.policy": POLICIES, "score.scorer": SCORERS, "score.fusion": FUSIONS,
    "projection.kind": PROJECTORS, "rollout.backend": SAMPLERS, "score.backend": SCORE_BACKENDS,
}
"""Config fields whose value must be a registered name (or one of a fixed set)."""


def field_names(dotted: str) -> list[str]:
    """The names a field of :data:`NAMED_FIELDS` accepts (for help texts)."""
    names = NAMED_FIELDS[dotted]
    return names.names() if isinstance(names, Registry) else list(names)


def check_names(cfg: RunConfig) -> None:
    """One line naming the field and the accepted names when a config names an unknown one."""
    for dotted in NAMED_FIELDS:
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in field_names(dotted):
            raise CropiError(f"unknown name {value!r}", field=dotted,
                             fix=f"use one of {', '.join(field_names(dotted))}")


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: a selection policy, optionally a fixed scorer, optionally stage 0's
    selection reused at every later stage (no re-scoring)."""

    name: str
    policy: str
    scorer: str | None = None
    once: bool = False


ARMS: Registry[Arm] = Registry("arm")
"""Arms with their own names; every registered selection policy is also an arm of its own name
(:func:`get_arm`)."""
for _arm in (Arm("cropi", "influence"), Arm("cropi-paper", "influence", scorer="paper"),
             Arm("influence-once", "influence", once=True)):
    ARMS.register(_arm.name, _arm)
del _arm


def arm_names() -> list[str]:
    """Every arm name: the named arms, then the policies that are not ``influence``."""
    return ARMS.names() + [p for p in POLICIES.names() if p != "influence" and p not in ARMS]


def get_arm(name: str) -> Arm:
    if name in ARMS:
        return ARMS.get(name)
    if name in POLICIES:
        return Arm(name, name)
    raise CropiError(f"unknown arm {name!r}", field="--arms", fix=f"use {', '.join(arm_names())}")

"""Selection policies (the registry :data:`POLICIES`), budget, target fusion and statistics.

Policies receive arrays; this package never imports ``cropi.influence``, the stores or torch.
"""

from cropi.select.fusion import FUSIONS, fuse, order_desc, rank_order
from cropi.select.policies import (
    POLICIES,
    FullPolicy,
    InfluencePolicy,
    LearnabilityPolicy,
    PassRatePolicy,
    RandomPolicy,
    SelectionContext,
    SelectionPolicy,
    available_policies,
    budget,
    get_policy,
    policy_fact,
    register_policy,
    select_ids,
)
from cropi.select.stats import read_selection, selection_stats, write_selection

__all__ = [
    "POLICIES",
    "policy_fact",
    "FUSIONS",
    "fuse",
    "order_desc",
    "rank_order",
    "FullPolicy",
    "InfluencePolicy",
    "LearnabilityPolicy",
    "PassRatePolicy",
    "RandomPolicy",
    "SelectionContext",
    "SelectionPolicy",
    "available_policies",
    "budget",
    "get_policy",
    "read_selection",
    "register_policy",
    "select_ids",
    "selection_stats",
    "write_selection",
]

"""How well semantic IDs separate items, and the ``sid_collision`` policy for items that share one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbole_diffgm.errors import InputError

COLLISION_POLICIES = ("keep", "disambiguate")


@dataclass(frozen=True)
class CollisionReport:
    items: int
    unique_sids: int
    colliding_items: int  # items whose SID at least one other item has
    collision_groups: int  # SIDs shared by two or more items
    largest_group: int
    codes_used: tuple[int, ...]  # distinct codes per digit
    code_entropy: tuple[float, ...]  # bits per digit; log2(codebook_size) is the most a digit can carry

    def __str__(self) -> str:
        used = ", ".join(f"{n}" for n in self.codes_used)
        entropy = ", ".join(f"{bits:.2f}" for bits in self.code_entropy)
        return (
            f"{self.items:,} items, {self.unique_sids:,} unique SIDs, {self.colliding_items:,} items share a SID "
            f"({self.collision_groups:,} groups, largest {self.largest_group}); codes used per digit [{used}], "
            f"entropy per digit [{entropy}] bits"
        )


def collision_report(codes: np.ndarray) -> CollisionReport:
    """The report for ``codes`` ``[n_items, n_digits]`` (no padding row)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group_size = counts[inverse.reshape(-1)]
    entropies = []
    for digit in codes.T:
        share = np.bincount(digit) / len(digit)
        share = share[share > 0]
        entropies.append(float(-(share * np.log2(share)).sum()))
    return CollisionReport(
        items=len(codes),
        unique_sids=len(counts),
        colliding_items=int((group_size > 1).sum()),
        collision_groups=int((counts > 1).sum()),
        largest_group=int(counts.max()),
        codes_used=tuple(len(np.unique(digit)) for digit in codes.T),
        code_entropy=tuple(entropies),
    )


def apply_collision_policy(codes: np.ndarray, policy: str) -> np.ndarray:
    """``keep``: codes as they are (a model ranks the items of one SID by training popularity).
    ``disambiguate``: one more digit, each item's index among the items of its SID (in item order),
    so every item gets a unique SID (TIGER's extra token)."""
    if policy not in COLLISION_POLICIES:
        raise InputError(f"unknown sid_collision '{policy}'; choose one of {', '.join(COLLISION_POLICIES)}")
    if policy == "keep":
        return codes
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    group_start = np.searchsorted(inverse[order], inverse[order])
    index_in_group = np.empty(len(codes), dtype=codes.dtype)
    index_in_group[order] = np.arange(len(codes)) - group_start
    return np.concatenate([codes, index_in_group[:, None]], axis=1)

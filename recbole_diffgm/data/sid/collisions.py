"""How well semantic IDs separate items, and the ``sid_collision`` policy for items that share one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbole_diffgm.errors import InputError

COLLISION_POLICIES = ("keep", "disambiguate", "reassign")


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
    """The report for ``codes`` ``[n_items, n_digit]`` (no padding row)."""
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


def apply_collision_policy(codes: np.ndarray, policy: str, costs: np.ndarray | None = None) -> np.ndarray:
    """``keep``: codes as they are (a model ranks the items of one SID by training popularity).
    ``disambiguate``: one more digit, each item's index among the items of its SID (in item order),
    so every item gets a unique SID (TIGER's extra token). ``reassign``: unique SIDs of the same length
    (``reassign``, which needs the quantizer's per-digit ``costs``)."""
    if policy not in COLLISION_POLICIES:
        raise InputError(f"unknown sid_collision '{policy}'; choose one of {', '.join(COLLISION_POLICIES)}")
    if policy == "keep":
        return codes
    if policy == "reassign":
        return reassign(codes, costs)[0]
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    group_start = np.searchsorted(inverse[order], inverse[order])
    index_in_group = np.empty(len(codes), dtype=codes.dtype)
    index_in_group[order] = np.arange(len(codes)) - group_start
    return np.concatenate([codes, index_in_group[:, None]], axis=1)


def reassign(codes: np.ndarray, costs: np.ndarray, alternatives: int = 8, fixed: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Unique SIDs of the same length: in each group of items that share a SID, the item the SID fits best
    (least quantization error), or the ``fixed`` item (``[N]`` bool: items whose SIDs a trained model already
    knows, unique among themselves), keeps it; the others move to free code combinations by one minimum-cost
    assignment over the error each move adds (the zero-collision idea of arXiv 2605.25330). Any digit may move,
    as parallel digits (PQ) are independent: a candidate changes one or two digits of an item's SID to one of
    that digit's ``alternatives`` nearest codes.

    ``costs`` ``[N, n, K]``: each item's quantization error with each code of each digit (``digit_costs``).
    Returns the codes and the error each item's SID adds ``[N]`` (0 for the items that keep theirs).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    if costs is None:
        raise InputError("sid_collision reassign needs a quantizer with parallel digits (sid_quantizer: opq)")
    n_items, n = codes.shape
    current = np.take_along_axis(costs, codes[..., None], axis=2)[..., 0]  # [N, n]
    error = current.sum(axis=1)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    movable = np.ones(n_items, dtype=bool) if fixed is None else ~fixed
    order = np.lexsort((np.arange(n_items), error, movable, group.reshape(-1)))
    first = np.ones(n_items, dtype=bool)
    first[1:] = group.reshape(-1)[order][1:] != group.reshape(-1)[order][:-1]
    movers = np.sort(order[~first])
    if not movable[movers].all():
        raise ValueError("reassign: fixed items share a SID")
    added = np.zeros(n_items)
    if not len(movers):
        return codes, added
    taken = {tuple(row) for row in codes[order[first]].tolist()}
    while True:
        near = np.argsort(costs[movers], axis=2, kind="stable")[:, :, :alternatives]  # [M, n, C]
        columns: dict[tuple[int, ...], int] = {}
        rows, cols, weights = [], [], []
        for row, item in enumerate(movers.tolist()):
            base = codes[item].tolist()
            moves = [(d, int(c), float(costs[item, d, c] - current[item, d])) for d in range(n)
                     for c in near[row, d] if c != base[d]]
            options = [(((d, c),), w) for d, c, w in moves]
            options += [(((d1, c1), (d2, c2)), w1 + w2) for i, (d1, c1, w1) in enumerate(moves)
                        for d2, c2, w2 in moves[i + 1:] if d1 < d2]
            for changes, cost in options:
                sid = list(base)
                for digit, code in changes:
                    sid[digit] = code
                sid = tuple(sid)
                if sid not in taken:
                    rows.append(row)
                    cols.append(columns.setdefault(sid, len(columns)))
                    weights.append(cost + 1.0)  # + 1: a zero-cost move is still an edge of the sparse graph
        graph = csr_matrix((weights, (rows, cols)), shape=(len(movers), len(columns)))
        if len(columns) >= len(movers):  # else no matching gives every mover a SID
            try:
                matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
                break
            except ValueError:  # some movers compete for too few free SIDs
                pass
        if alternatives >= costs.shape[2]:
            raise InputError(f"sid_collision reassign: no unique SID is left, one or two digits away, for every "
                             f"item ({n_items:,} items, {n} digits of {costs.shape[2]} codes); use more digits or a "
                             "larger codebook_size")
        alternatives *= 2  # widen every digit's choice
    sids = np.array(list(columns), dtype=codes.dtype)
    result = codes.copy()
    result[movers[matched_rows]] = sids[matched_cols]
    added[movers[matched_rows]] = np.asarray(graph[matched_rows, matched_cols]).reshape(-1) - 1.0
    return result, added

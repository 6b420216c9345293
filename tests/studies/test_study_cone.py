"""The cone_geometry study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import numpy as np
import pytest

from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED


def _cone_doc(block_counts):
    """A nesting document (the schema `nesting` writes): one pair per block, ``counts[s]`` filter-channels in state s."""
    blocks = []
    for counts in block_counts:
        entries = [{"distance": 1.0, "opening": 0.5, "rotation": 0.1, "binary_nesting": s}
                   for s, n in enumerate(counts) for _ in range(n)]
        blocks.append({"layer_pairs": [entries]})
    return {"blocks": blocks}


def test_cone_statistics_follow_the_documents():
    from projects.cone_geometry.aggregate import doc_fractions
    from projects.cone_geometry.study import block_variance, claims, consecutive_distances

    doc = _cone_doc([[4, 0, 0, 0], [0, 2, 2, 0]])
    fr = doc_fractions(doc)
    assert np.allclose(fr["blocks"][1], [0, 0.5, 0.5, 0])
    # block 0 differs between runs, block 1 does not; block 1 moves to state 3 ever more slowly (8, 12, 14, 15 of 16)
    docs = {(k, e): _cone_doc([[8 - shift, shift, 0, 0], [16 - m, 0, 0, m]])
            for k, shift in enumerate([0, 2, 4]) for e, m in zip([1, 2, 3, 4], [8, 12, 14, 15])}
    var = block_variance(docs, [0, 1, 2], [1, 2, 3, 4])
    assert var.shape == (4, 2) and np.all(var[:, 0] > var[:, 1])
    dist = consecutive_distances(docs, [0, 1, 2], [1, 2, 3, 4])
    assert dist.shape == (3, 3) and np.all(np.diff(dist, axis=1) <= 0)
    (c_var, c_stab), _, _ = claims(docs, [0, 1, 2], [1, 2, 3, 4])
    assert c_var.verdict == HOLDS and c_var.value < 0
    assert c_stab.verdict == HOLDS and c_stab.value < 0


def test_cone_accuracy_table_shows_untrained_teachers_and_students_per_epoch():
    from projects.cone_geometry.study import accuracy_rows

    accs = {(0, 0): (None, 0.10), (1, 0): (None, 0.12), (0, 2): (0.85, 0.70), (1, 2): (0.87, 0.74)}
    rows = accuracy_rows(accs, [0, 1], [0, 2])
    assert rows[0] == ["0", "–", "0.110 ± 0.014"]  # no test accuracy of the epoch-0 (untrained) teacher
    assert rows[1] == ["2", "0.860 ± 0.014", "0.720 ± 0.028"]
    assert accuracy_rows({(0, 2): (0.85, 0.7)}, [0], [2]) == [["2", "0.850", "0.700"]]

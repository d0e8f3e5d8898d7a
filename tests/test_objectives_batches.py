"""TLM / CLM layouts against hand-built expectations (XLM §A4.2, §A4.4)."""

from __future__ import annotations

import torch

from xlmtrain.objectives.batches import concat_pair, next_token_labels

E, P = 1, 2  # </s>, <pad>


def test_tlm_layout_positions_langs() -> None:
    # Row 0: a = [20 21], b = [30 31 32]; row 1: a = [22], b = [33].
    x1 = torch.tensor([[E, 20, 21, E], [E, 22, E, P]])
    len1 = torch.tensor([4, 3])
    x2 = torch.tensor([[E, 30, 31, 32, E], [E, 33, E, P, P]])
    len2 = torch.tensor([5, 3])
    out = concat_pair(x1, len1, x2, len2, lang1_id=0, lang2_id=1, pad_index=P)
    assert out.ids.tolist() == [
        [E, 20, 21, E, E, 30, 31, 32, E],
        [E, 22, E, E, 33, E, P, P, P],
    ]
    assert out.lengths.tolist() == [9, 6]
    assert out.position_ids.tolist() == [
        [0, 1, 2, 3, 0, 1, 2, 3, 4],
        [0, 1, 2, 0, 1, 2, 0, 0, 0],  # padding at 0 (masked; XLM counts on), so long pairs stay in the table
    ]
    assert out.langs.tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1],
    ]
    assert ((out.ids == E).sum(dim=1) == 4).all()


def test_clm_targets_on_stream_and_pairs() -> None:
    stream = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask, labels = next_token_labels(stream, torch.tensor([4, 4]))
    assert mask.tolist() == [[True, True, True, False]] * 2
    assert labels.tolist() == [6, 7, 8, 10, 11, 12]
    padded = torch.tensor([[E, 20, E, P], [E, 21, 22, E]])
    mask, labels = next_token_labels(padded, torch.tensor([3, 4]))
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False]]
    assert labels.tolist() == [20, E, 21, 22, E]

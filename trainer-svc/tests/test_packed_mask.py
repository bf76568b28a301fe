"""The block mask built on the host equals what torch's ``create_block_mask`` builds from
transformers' mask function, tile for tile (``flywheel_trainer.packed_mask``).

Real torch and transformers code on the CPU (``create_block_mask`` uncompiled); random packings
with the padding TRL's padding-free collator adds (position 0 for every pad token), lengths that are
and are not a multiple of the 128-token tile, a row of one sequence, and tiny sequences.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
flex = pytest.importorskip("torch.nn.attention.flex_attention")
masking = pytest.importorskip("transformers.masking_utils")


def _row(rng: np.random.Generator, n: int, longest: int, pad: int) -> np.ndarray:
    lengths: list[int] = []
    while sum(lengths) < n - pad:
        lengths.append(min(int(rng.integers(1, longest)), n - pad - sum(lengths)))
    parts = [np.arange(length) for length in lengths] + [np.zeros(n - sum(lengths), dtype=np.int64)]
    return np.concatenate(parts)[None]


def _theirs(seq: torch.Tensor, packed: bool) -> object:
    n = seq.shape[-1]
    fn = masking.causal_mask_function
    if packed:
        fn = masking.and_masks(fn, masking.packed_sequence_mask_function(seq))
    mod = masking.add_offsets_to_mask_function(fn, 0, 0)
    return flex.create_block_mask(mod, 1, None, n, n, device="cpu", _compile=False)


@pytest.mark.parametrize(
    ("n", "longest", "pad"),
    [
        (512, 300, 40),
        (1000, 200, 0),
        (1000, 900, 0),
        (1000, 90, 13),
        (2048, 700, 130),
        (384, 3, 0),
        (257, 400, 1),
    ],
)
def test_host_tiles_equal_create_block_masks(n: int, longest: int, pad: int) -> None:
    from flywheel_trainer.packed_mask import block_mask, host_parts

    rng = np.random.default_rng(n + longest + pad)
    for _ in range(3):
        position_ids = torch.from_numpy(_row(rng, n, longest, pad))
        parts = host_parts(position_ids)
        assert parts is not None
        # The same sequence numbering as transformers' (None there means one sequence).
        found = masking.find_packed_sequence_indices(position_ids)
        assert parts["packed"] == (found is not None)
        if found is not None:
            assert torch.equal(parts["seq"], found)
        theirs = _theirs(parts["seq"], parts["packed"])
        ours = block_mask(parts)
        for name in (
            "kv_num_blocks",
            "kv_indices",
            "full_kv_num_blocks",
            "full_kv_indices",
            "q_num_blocks",
            "q_indices",
            "full_q_num_blocks",
            "full_q_indices",
        ):
            mine, want = getattr(ours, name), getattr(theirs, name)
            assert mine.dtype == want.dtype and torch.equal(mine, want), name
        assert ours.seq_lengths == theirs.seq_lengths
        assert torch.equal(ours.to_dense(), theirs.to_dense())


def test_one_sequence_gets_the_causal_mask_alone_and_several_rows_none() -> None:
    from flywheel_trainer.packed_mask import block_mask, host_parts

    single = torch.arange(300)[None]
    parts = host_parts(single)
    assert parts is not None and parts["packed"] is False
    ours, theirs = block_mask(parts), _theirs(parts["seq"], packed=False)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    assert host_parts(torch.zeros(2, 64, dtype=torch.long)) is None  # padded rows, not one packed row

"""Flex attention's block mask for a packed, padding-free row, built on the host from its position ids.

transformers builds the mask for a packed row at the start of every forward pass: it finds the
sequences' boundaries from the position ids on the GPU, reads back whether the row is packed at
all (a wait for the GPU), and runs ``create_block_mask`` (a compiled function, whose call costs the
host about 2 ms while the GPU, just drained by that wait, has nothing to do). In the benchmark's
trace of an 8-row step on an H100 that was the largest gap left at the step boundary, 2.3 ms
(bench/RESULTS.md).

A packed row's sequences are contiguous, so which 128 x 128 tiles of the attention matrix are
empty, partly masked or fully visible follows from the first and last sequence of each tile: the
collator (a DataLoader worker) computes the same block tensors ``create_block_mask`` would, with
NumPy, and the trainer builds the :class:`~torch.nn.attention.flex_attention.BlockMask` from them
(``BlockMask.from_kv_blocks``) with transformers' own mask function, which transformers' model
then uses as is (a 4-D mask skips its mask construction). ``tests/test_packed_mask.py`` compares
the tensors with ``create_block_mask``'s on packings with padding and lengths that are not a
multiple of the block size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The tile size of flex attention's block masks (torch's ``_DEFAULT_SPARSE_BLOCK_SIZE``), which
#: transformers' masks use.
BLOCK = 128


def sequence_ids(position_ids: np.ndarray) -> np.ndarray:
    """Which packed sequence each token belongs to, numbered from 0 along each row, as transformers'
    ``find_packed_sequence_indices`` numbers them: a new sequence wherever the position id does not
    go up by one."""
    first = position_ids[:, :1] - 1
    steps = np.diff(position_ids, prepend=first, axis=-1)
    return np.cumsum(steps != 1, axis=-1)


def _ordered(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count, indices) of the set tiles of each row, set ones first, each group ascending:
    torch's ``_dense_to_ordered`` (a stable descending argsort)."""
    count = blocks.sum(-1).astype(np.int32)
    order = np.argsort(~blocks, axis=-1, kind="stable").astype(np.int32)
    return count, order


def kv_blocks(seq: np.ndarray, block: int = BLOCK) -> dict[str, np.ndarray]:
    """The causal, same-sequence mask's tiles for one packed row (``seq``: its sequence ids,
    non-decreasing): ``kv_num``/``kv_idx`` for the partly masked tiles and ``full_num``/``full_idx``
    for the fully visible ones, shaped (1, 1, tiles) and (1, 1, tiles, tiles) as ``create_block_mask``
    returns them for a batch of one and one head."""
    n = int(seq.shape[-1])
    tiles = -(-n // block)
    starts = np.arange(tiles) * block
    ends = np.minimum(starts + block, n) - 1
    first, last = seq[starts], seq[ends]
    q = np.arange(tiles)[:, None]
    kv = np.arange(tiles)[None, :]
    below = kv < q
    # A key tile before the query tile shares a sequence with it iff its last sequence is the query
    # tile's first (sequences are contiguous); a diagonal tile always holds its own tokens.
    some = (kv == q) | (below & (last[None, :] == first[:, None]))
    # Fully visible: every key before every query, all one sequence, and no padding past the row's
    # end in either tile (create_block_mask pads the last tile with masked-out entries).
    whole = (ends - starts + 1) == block
    full = below & (first[None, :] == last[:, None]) & whole[:, None] & whole[None, :]
    partial = some & ~full
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return {
        "kv_num": kv_num[None, None],
        "kv_idx": kv_idx[None, None],
        "full_num": full_num[None, None],
        "full_idx": full_idx[None, None],
    }


def host_parts(position_ids: Any, block: int = BLOCK) -> dict[str, Any] | None:
    """What the trainer needs to build a packed row's block mask, from the collator's CPU tensor of
    position ids (1, n); None for several rows (not a padding-free batch)."""
    import torch

    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    seq = sequence_ids(position_ids.numpy())
    parts: dict[str, Any] = {k: torch.from_numpy(v) for k, v in kv_blocks(seq[0], block).items()}
    parts["seq"] = torch.from_numpy(seq)
    # transformers masks a row that holds one sequence with the causal mask alone.
    parts["packed"] = bool(seq[0, -1] != 0)
    return parts


def block_mask(parts: dict[str, Any], block: int = BLOCK) -> Any:
    """The :class:`BlockMask` of :func:`host_parts`'s tensors (on the model's device by now), with
    the mask function transformers composes for a packed row, so flex attention's compiled kernels
    are the ones transformers' own mask gets."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.masking_utils import (
        add_offsets_to_mask_function,
        and_masks,
        causal_mask_function,
        packed_sequence_mask_function,
    )

    mask_function: Any = causal_mask_function
    if parts["packed"]:
        mask_function = and_masks(mask_function, packed_sequence_mask_function(parts["seq"]))
    n = int(parts["seq"].shape[-1])
    return BlockMask.from_kv_blocks(
        parts["kv_num"],
        parts["kv_idx"],
        parts["full_num"],
        parts["full_idx"],
        BLOCK_SIZE=block,
        mask_mod=add_offsets_to_mask_function(mask_function, 0, 0),
        seq_lengths=(n, n),
    )

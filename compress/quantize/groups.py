"""The group size a GPTQ/RTN run resolves to when a layer's input width is not a multiple of the one asked for.

Packed int4 kernels need every group to lie inside one row: PyTorch's CPU `_weight_int4pack_mm_for_cpu`
takes group sizes 32/64/128/256 that divide K, Marlin and gptqmodel's CPU kernels refuse ragged groups,
and GGUF's Q4_0/Q4_1 blocks are 32 wide. SmolLM2's width 576 = 64·9, so g128 leaves a ragged last group
in every layer and only the slow portable kernel (which dequantizes every weight at every step) runs it.

Rule: keep the requested size when it divides every quantized layer's input width; otherwise use the
largest power of two below it that does (powers of two: the sizes the kernels and GGUF accept), and
say so. With no such size ≥ MIN_GROUP the request stands (the portable kernel still runs it). The
resolved size is what the artifact records as `group_size`; the request is kept beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_GROUP = 16  # the smallest group any of the packed kernels accepts


@dataclass(frozen=True)
class GroupChoice:
    requested: int
    group_size: int
    widths: tuple[int, ...]  # distinct input widths of the quantized layers
    note: str | None  # a one-line explanation when the size changed (or could not be fitted)


def fit_group_size(requested: int, widths: set[int] | list[int]) -> GroupChoice:
    """The group size to quantize with, given every quantized Linear's input width."""
    distinct = tuple(sorted(set(widths)))
    if requested <= 0 or all(w % requested == 0 for w in distinct):
        return GroupChoice(requested, requested, distinct, None)
    ragged = [w for w in distinct if w % requested]
    g = 1 << (requested.bit_length() - 1)  # the largest power of two <= requested
    while g >= MIN_GROUP and any(w % g for w in distinct):
        g //= 2
    if g < MIN_GROUP:
        note = (f"group size {requested} does not divide layer width(s) {ragged} and no power-of-two size "
                f">= {MIN_GROUP} divides every width {list(distinct)}: keeping {requested} (slow portable kernel)")
        return GroupChoice(requested, requested, distinct, note)
    note = (f"group size {requested} does not divide layer width(s) {ragged}; using {g}, the largest "
            f"power of two <= {requested} that divides every width {list(distinct)}")
    return GroupChoice(requested, g, distinct, note)


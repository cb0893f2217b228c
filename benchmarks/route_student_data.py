"""Training text for the student tier of `benchmarks/route_mixed.py`: sequence continuations.

    python benchmarks/route_student_data.py --out seq.txt [--lines 200000] [--seed 0]

Writes one sequence a line in the task's prompt format, `a, b, c, d, ...`: 4-12 consecutive items
from a random start. Families: the five of the `route_mixed` task's easy items (weekdays, months,
number words, numbers, capital letters; the lists are imported from `evals/make_tasks.py`, so they
cannot drift), plus extras that teach the same skill: lowercase weekdays and months, month
abbreviations, lowercase letters, number words up to ninety-nine, numbers up to 1000, counting by
2, 5 and 10. Weekdays and months wrap around (Sunday, Monday); the other families do not.

Why: students distilled on general text (Python docs, WikiText) lose the continuation skill the
easy items test (s16: months 0/4). Distilling on text like the workload's easy traffic keeps it.
Note plainly: the task's easy test items are continuations drawn from these same sequences, so a
student trained on this text has seen those continuations. This is in-domain distillation, like
distilling on logged traffic, not a held-out measurement of the skill. The capitals (the hard
items) never appear in this text.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evals.make_tasks import _DAYS, _MONTHS, _NUMBER_WORDS  # noqa: E402

_TEENS = _NUMBER_WORDS[9:] + "sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_UNITS = _NUMBER_WORDS[:9]
NUMBER_WORDS_99 = _UNITS + _TEENS + [t + u for t in _TENS for u in ["", *("-" + w for w in _UNITS)]]
assert NUMBER_WORDS_99[:len(_NUMBER_WORDS)] == _NUMBER_WORDS and len(NUMBER_WORDS_99) == 99


def _numbers(step: int, stop: int) -> list[str]:
    return [str(i) for i in range(step, stop + 1, step)]


# (items, wraps around, weight): the task's five families first, each drawn twice as often as an extra
# (number words: the task's one..fifteen and one..ninety-nine, once each).
FAMILIES = (
    (_DAYS, True, 2),
    (_MONTHS, True, 2),
    (_NUMBER_WORDS, False, 1),
    (NUMBER_WORDS_99, False, 1),
    (_numbers(1, 199), False, 2),
    ([chr(c) for c in range(ord("A"), ord("Z") + 1)], False, 2),
    ([d.lower() for d in _DAYS], True, 1),
    ([m.lower() for m in _MONTHS], True, 1),
    ([m[:3] for m in _MONTHS], True, 1),
    ([chr(c) for c in range(ord("a"), ord("z") + 1)], False, 1),
    (_numbers(1, 1000), False, 1),
    (_numbers(2, 1000), False, 1),
    (_numbers(5, 1000), False, 1),
    (_numbers(10, 1000), False, 1),
)


def sequence_line(rng: random.Random) -> str:
    items, wraps, _ = rng.choices(FAMILIES, weights=[w for *_, w in FAMILIES])[0]
    n = rng.randint(4, 12)
    if wraps:
        start = rng.randrange(len(items))
        run = [items[(start + i) % len(items)] for i in range(n)]
    else:
        start = rng.randrange(len(items) - n + 1)
        run = items[start:start + n]
    return ", ".join(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="text file to write (.txt)")
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(sequence_line(rng) + "\n" for _ in range(args.lines)))
    print(f"{args.out}: {args.lines} lines")


if __name__ == "__main__":
    main()

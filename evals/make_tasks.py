"""Regenerate the local lm-evaluation-harness tasks in this folder from text that ships with Python.

    python evals/make_tasks.py            # rewrites evals/*/test.jsonl (deterministic for one Python version)

Two multiple-choice tasks, built offline from what every CPython installs, and one generative task
for routing benchmarks:
- `stdlib_docstring_mc`: the first paragraph of a standard-library function's docstring (its own name
  masked) → which of 4 functions of the same module it documents.
- `pydoc_keyword_cloze`: a sentence from the Python reference (`pydoc_data.topics`) cut just before a
  quoted Python keyword → which of 4 keywords comes next.
- `route_mixed` (no lm-eval YAML: `benchmarks/route_mixed.py` asks a server for each answer): easy
  items (continue a sequence of weekdays, months, number words, numbers or letters: pattern copying
  that small models manage) and hard items (a country's capital: recall that needs capacity), each
  scored by exact match of the first word generated. `difficulty` is the item's label for reports;
  a router never sees it. `split` is dev (fit/measure tiers) or test (the benchmark).

The committed files were made with the Python named in each file's `meta.json`; another Python version
writes slightly different docstrings, so regenerate only to refresh the tasks, not to compare numbers.
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
SEED = 1234
N_CHOICES = 4

# Modules with many documented pure-Python or builtin functions whose docstrings are prose.
MODULES = (
    "os", "os.path", "shutil", "json", "re", "math", "string", "textwrap", "itertools", "functools",
    "heapq", "bisect", "statistics", "random", "glob", "fnmatch", "base64", "binascii", "zlib",
    "difflib", "inspect", "tempfile", "copy", "operator", "pathlib", "urllib.parse", "html",
    "calendar", "time", "datetime", "uuid", "hashlib", "struct", "locale", "gettext", "shlex",
    "unicodedata", "posixpath", "keyword", "codecs", "pickle", "csv", "gzip", "zipfile", "tarfile",
    "subprocess", "socket", "select", "signal", "threading", "queue", "sys", "builtins", "warnings",
    "contextlib", "typing", "dataclasses", "enum", "decimal", "fractions", "cmath", "array", "platform",
)
KEYWORDS = (
    "break", "continue", "return", "yield", "lambda", "import", "global", "nonlocal", "assert", "del",
    "pass", "raise", "try", "except", "finally", "with", "while", "for", "if", "else", "elif", "class",
    "def", "async", "await", "in", "is", "not", "and", "or", "from", "as",
)


def _first_paragraph(doc: str) -> str:
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(para.split())


def docstring_examples(rng: random.Random, limit: int) -> list[dict]:
    by_module: dict[str, list[tuple[str, str]]] = {}
    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        funcs = []
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)) or not obj.__doc__:
                continue
            home = getattr(obj, "__module__", None) or mod_name
            if home != mod_name and not home.startswith("_") and home not in ("posix", "builtins"):
                continue  # re-exported from another public module (urllib.parse.namedtuple)
            text = _first_paragraph(obj.__doc__)
            # Skip signature-only lines and docstrings too short to say anything.
            if len(text) < 40 or text.startswith(name + "("):
                continue
            text = re.sub(rf"\b{re.escape(name)}\b", "this function", text)
            funcs.append((f"{mod_name}.{name}", text[:400]))
        if len(funcs) >= N_CHOICES:
            by_module[mod_name] = funcs
    pool = [(m, i) for m in sorted(by_module) for i in range(len(by_module[m]))]
    rng.shuffle(pool)
    seen_docs, out = set(), []
    for mod_name, i in pool:
        name, doc = by_module[mod_name][i]
        if doc in seen_docs:
            continue
        seen_docs.add(doc)
        others = [n for n, _ in by_module[mod_name] if n != name]
        choices = rng.sample(others, N_CHOICES - 1) + [name]
        rng.shuffle(choices)
        out.append({"docstring": doc, "choices": choices, "label": choices.index(name)})
        if len(out) == limit:
            break
    return out


def keyword_examples(rng: random.Random, limit: int) -> list[dict]:
    from pydoc_data.topics import topics

    pattern = re.compile(r'"(' + "|".join(KEYWORDS) + r')"')
    candidates = []
    for key in sorted(topics):
        text = " ".join(topics[key].split())
        for m in pattern.finditer(text):
            # Up to ~250 characters of preceding prose, starting at a word boundary.
            start = text.find(" ", max(0, m.start() - 250)) + 1 if m.start() > 250 else 0
            context = text[start:m.start() + 1]
            if len(context) < 40 or "::=" in context[-120:]:
                continue  # too little context, or a grammar production rather than prose
            candidates.append({"context": context, "answer": m.group(1), "topic": key})
    rng.shuffle(candidates)
    seen, out = set(), []
    for c in candidates:
        if c["context"] in seen:
            continue
        seen.add(c["context"])
        others = [k for k in KEYWORDS if k != c["answer"]]
        choices = rng.sample(others, N_CHOICES - 1) + [c["answer"]]
        rng.shuffle(choices)
        out.append({"context": c["context"], "choices": choices, "label": choices.index(c["answer"]),
                    "topic": c["topic"]})
        if len(out) == limit:
            break
    return out


_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = ("January February March April May June July August September October November December").split()
_NUMBER_WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
_CAPITALS = (  # widely known capitals (data for the task, not model output)
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Poland", "Warsaw"),
    ("Kenya", "Nairobi"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Thailand", "Bangkok"),
    ("Peru", "Lima"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Argentina", "Buenos"),
    ("Mexico", "Mexico"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Turkey", "Ankara"),
    ("India", "New"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Vietnam", "Hanoi"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Czechia", "Prague"), ("Switzerland", "Bern"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Nigeria", "Abuja"), ("Ethiopia", "Addis"),
    ("Morocco", "Rabat"), ("Israel", "Jerusalem"), ("Lebanon", "Beirut"), ("Syria", "Damascus"),
)


def route_mixed_examples(rng: random.Random) -> list[dict]:
    rows = []
    for name, seq in (("days", _DAYS), ("months", _MONTHS), ("number words", _NUMBER_WORDS),
                      ("numbers", [str(i) for i in range(1, 200)]), ("letters", [chr(c) for c in range(65, 91)])):
        starts = list(range(len(seq) - 4))
        rng.shuffle(starts)
        for start in starts[:12]:
            shown = rng.choice((3, 4))
            rows.append({"prompt": ", ".join(seq[start:start + shown]) + ",", "answer": seq[start + shown],
                         "difficulty": "easy", "kind": name})
    for country, capital in _CAPITALS:
        rows.append({"prompt": f"Question: What is the capital of {country}?\nAnswer: The capital of {country} is",
                     "answer": capital, "difficulty": "hard", "kind": "capital"})
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["split"] = "dev" if i % 2 == 0 else "test"
    return rows


def write(task: str, rows: list[dict]) -> None:
    folder = HERE / task
    folder.mkdir(exist_ok=True)
    with open(folder / "test.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {"task": task, "rows": len(rows), "seed": SEED, "python": platform.python_version(),
            "generator": "evals/make_tasks.py"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{task}: {len(rows)} rows")


def main() -> None:
    write("stdlib_docstring_mc", docstring_examples(random.Random(SEED), limit=300))
    write("pydoc_keyword_cloze", keyword_examples(random.Random(SEED), limit=300))
    write("route_mixed", route_mixed_examples(random.Random(SEED)))


if __name__ == "__main__":
    main()

"""Learned router: per tier, P(the tier answers correctly | prompt), trained from outcome rows.

`model: "auto"` can route with it instead of the hand-written difficulty score (router.py holds the
decision rule; this module holds the classifier, its training and its file), the way RouteLLM
trains routers from outcome data.

Outcome rows are JSONL, one per answered request: `{"prompt": str, "tier": str, "correct": bool}`,
optionally `"max_tokens": int` (the requested answer length); other keys are ignored (a benchmark
keeps its labels there). Repeated (tier, prompt) rows are pooled into one weighted example with the
share answered correctly as its target.

Features (one sparse vector per prompt): hashed character n-grams (2-5, lowercased, whitespace
collapsed) and word uni/bigrams, each group's counts scaled to unit length, in 2^hash_bits signed
buckets (fixed hash functions: the same buckets in every process, unlike Python's hash()); then
router.py's prompt features (length, answer length, reasoning cues, code, maths) and a one-hot
bucket of the requested max_tokens.

Model: one logistic regression per tier with an L2 penalty, fitted by scipy's L-BFGS from zero
weights (deterministic; the seed only draws the cross-validation folds). The penalty is chosen per
tier by k-fold cross-validated log loss (a tier whose success the prompt does not predict ends up
near its success rate; one whose success it does, confident), unless given. A tier whose outcomes
are all correct or all wrong gets a constant predictor (its smoothed success rate), and says so in
its stats. Training on a few thousand rows takes about a second on one CPU core.

`router.json` (kind "compress-router", schema_version 1): the feature config, the training
settings, per tier the bias and its non-zero weights (bucket index -> weight) and its stats (rows,
distinct prompts, training accuracy, majority-class accuracy, and k-fold cross-validated accuracy
when the tier has enough prompts of both classes).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from pydantic import Field, field_validator

from compress.errors import CompressError
from compress.formats import StrictModel as _Strict, read_versioned_json, validate
from compress.serve.router import prompt_features

KIND = "compress-router"
SCHEMA_VERSION = 1
DENSE = ("length", "answer_length", "hard_cues", "code", "maths")  # router.prompt_features, in this order
_WORD = re.compile(r"\w+")


class FeatureConfig(_Strict):
    hash_bits: int = Field(14, ge=8, le=20)  # 16,384 buckets: few collisions for prompts of a few hundred n-grams
    char_ngrams: tuple[int, int] = (2, 5)  # shortest and longest character n-gram
    word_ngrams: tuple[int, int] = (1, 2)
    max_tokens_buckets: list[int] = [8, 32, 128, 512]  # upper bounds; one more bucket above the last

    @field_validator("char_ngrams", "word_ngrams")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError("expected [shortest, longest] with 1 <= shortest <= longest")
        return v

    @property
    def dim(self) -> int:
        return (1 << self.hash_bits) + len(DENSE) + len(self.max_tokens_buckets) + 1


class TrainConfig(_Strict):
    # L2 penalty as in scikit-learn's LogisticRegression (l2 = 1/C): sum of the rows' log losses +
    # l2/2 |w|^2, so a few rows are held close to the base rate and many rows may say more. None:
    # chosen per tier from l2_grid by cross-validated log loss (a tier whose outcomes the prompt
    # does not predict gets a large one: near its success rate; one that it does, a small one).
    l2: float | None = Field(None, gt=0)
    l2_grid: list[float] = [0.1, 1.0, 10.0]
    default_l2: float = Field(1.0, gt=0)  # l2 None, but too few rows to cross-validate or too many to search
    # Above this many distinct prompts a tier gets default_l2: the search would take seconds, and
    # with that much data the penalty matters less.
    search_max_prompts: int = 500
    folds: int = Field(5, ge=2)  # cross-validation folds (over distinct prompts)
    seed: int = 0
    max_iter: int = Field(200, ge=1)


class TierStats(_Strict):
    rows: int  # outcome rows
    prompts: int  # distinct (prompt, max_tokens) examples
    success_rate: float
    constant: bool  # one class only: the prediction is the smoothed success rate for every prompt
    train_accuracy: float
    majority_accuracy: float  # always predicting the more common outcome
    l2: float | None = None  # the penalty used (None: constant)
    cv_accuracy: float | None = None  # None: too few prompts of each class to hold some out
    cv_folds: int | None = None  # (with l2 chosen on the same folds, slightly optimistic)


class TierModel(_Strict):
    bias: float
    indices: list[int] = []  # feature index -> weight, non-zero weights only
    values: list[float] = []
    stats: TierStats


class RouterFile(_Strict):
    kind: Literal["compress-router"] = KIND
    schema_version: int = SCHEMA_VERSION
    created_at: str
    sources: list[str] = []  # the outcome files it was trained on
    features: FeatureConfig
    training: TrainConfig
    tiers: dict[str, TierModel]


@dataclass(frozen=True)
class Outcome:
    prompt: str
    tier: str
    correct: bool
    max_tokens: int | None = None


# ---------------------------------------------------------------- features


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's finaliser
_PRIME = np.uint64(0x100000001B3)  # rolling hash multiplier (FNV's prime)


def _mix(x: np.ndarray) -> np.ndarray:
    """Scramble uint64 hashes (splitmix64 finaliser): every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _ngram_hashes(codes: np.ndarray, lo: int, hi: int, salt: int) -> np.ndarray:
    """Hashes of every n-gram (lo <= n <= hi) of a uint64 sequence: rolling polynomial, then mixed."""
    out, h = [], np.zeros(len(codes), dtype=np.uint64)
    for n in range(1, hi + 1):
        if len(codes) < n:
            break
        h = h[:len(codes) - n + 1] * _PRIME + codes[n - 1:]
        if n >= lo:
            out.append(_mix(h + np.uint64(salt * 64 + n)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


class Featurizer:
    """Prompt (+ requested max_tokens) -> sparse feature vector (indices, values)."""

    def __init__(self, config: FeatureConfig):
        self.config = config
        self._mask = np.uint64((1 << config.hash_bits) - 1)
        self._dense0 = 1 << config.hash_bits
        self._words: dict[str, int] = {}  # word -> crc32 (words repeat a lot)

    def _word(self, w: str) -> int:
        h = self._words.get(w)
        if h is None:
            h = zlib.crc32(w.encode("utf-8"))
            if len(self._words) < 1_000_000:
                self._words[w] = h
        return h

    def _group(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucket and signed weight per distinct hash; the group's counts are scaled to unit length."""
        uniq, counts = np.unique(hashes, return_counts=True)
        sign = np.where(uniq >> np.uint64(63), 1.0, -1.0)
        return (uniq & self._mask).astype(np.int64), sign * counts / max(1.0, math.sqrt((counts * counts).sum()))

    def __call__(self, prompt: str, max_tokens: int | None) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        text = " ".join(prompt.lower().split())
        chars = np.frombuffer(f" {text} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        words = np.array([self._word(w) for w in _WORD.findall(text)], dtype=np.uint64)
        parts = [self._group(_ngram_hashes(chars, *cfg.char_ngrams, salt=1)),
                 self._group(_ngram_hashes(words, *cfg.word_ngrams, salt=2))]
        f = prompt_features(prompt, max_tokens)
        bucket = sum((max_tokens or 16) > b for b in cfg.max_tokens_buckets)
        dense_idx = [self._dense0 + j for j, name in enumerate(DENSE) if f[name]] + [
            self._dense0 + len(DENSE) + bucket]
        dense_val = [f[name] for name in DENSE if f[name]] + [1.0]
        parts.append((np.array(dense_idx, dtype=np.int64), np.array(dense_val)))
        idx = np.concatenate([i for i, _ in parts])
        val = np.concatenate([v for _, v in parts])
        uniq, inv = np.unique(idx, return_inverse=True)  # buckets shared by two n-grams add up
        return uniq, np.bincount(inv, weights=val, minlength=len(uniq))


# ---------------------------------------------------------------- fitting


class _Rows:
    """A CSR matrix of examples [rows, columns]; `columns` are the feature indices that occur (the
    weights of the others stay 0, so they are left out of the fit)."""

    def __init__(self, nnz: np.ndarray, idx: np.ndarray, val: np.ndarray, columns: np.ndarray):
        self.nnz, self.idx, self.val, self.columns = nnz, idx, val, columns
        self.ptr = np.concatenate([[0], np.cumsum(nnz)])[:-1]
        self.n = len(nnz)
        self.row = np.repeat(np.arange(self.n), nnz)  # row of each stored value

    @classmethod
    def build(cls, feats: list[tuple[np.ndarray, np.ndarray]]) -> "_Rows":
        columns, idx = np.unique(np.concatenate([i for i, _ in feats]), return_inverse=True)
        return cls(np.array([len(i) for i, _ in feats]), idx, np.concatenate([v for _, v in feats]), columns)

    def subset(self, rows: np.ndarray) -> "_Rows":
        """These rows (sorted), same columns."""
        mask = np.zeros(self.n, dtype=bool)
        mask[rows] = True
        keep = mask[self.row]
        return _Rows(self.nnz[rows], self.idx[keep], self.val[keep], self.columns)

    def dot(self, w: np.ndarray) -> np.ndarray:  # [rows]
        return np.add.reduceat(self.val * w[self.idx], self.ptr)

    def tdot(self, r: np.ndarray) -> np.ndarray:  # [columns]
        return np.bincount(self.idx, weights=self.val * r[self.row], minlength=len(self.columns))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(X: _Rows, y: np.ndarray, n: np.ndarray, l2: float, max_iter: int = 200) -> tuple[np.ndarray, float]:
    """Weights [columns] and bias minimising sum_i n_i * logloss(y_i, sigmoid(x_i.w + b)) + l2/2 |w|^2
    (divided by sum n: the same minimum, better scaled), by scipy's L-BFGS from w = 0, b = logit(mean y)."""
    from scipy.optimize import minimize

    total = n.sum()
    l2 = l2 / total
    rate = float((n * y).sum() / total)
    theta = np.zeros(len(X.columns) + 1)
    theta[-1] = math.log((rate + 1e-3) / (1 - rate + 1e-3))

    def f_g(th: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = th[:-1], th[-1]
        z = X.dot(w) + b
        loss = float((n * (_softplus(z) - y * z)).sum() / total + 0.5 * l2 * w @ w)
        r = n * (_sigmoid(z) - y) / total
        return loss, np.concatenate([X.tdot(r) + l2 * w, [r.sum()]])

    # ftol: for routing, stop once the loss (and so the accuracy) has stopped moving
    theta = minimize(f_g, theta, jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "gtol": 1e-6, "ftol": 1e-9}).x
    return theta[:-1], float(theta[-1])


def _accuracy(p: np.ndarray, y: np.ndarray, n: np.ndarray) -> float:
    """Share of outcome rows whose correctness the prediction (p >= 0.5) gets right."""
    k = y * n
    return float(np.where(p >= 0.5, k, n - k).sum() / n.sum())


def _constant_p(y: np.ndarray, n: np.ndarray) -> float:
    return float(((y * n).sum() + 0.5) / (n.sum() + 1.0))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _one_class(y: np.ndarray, n: np.ndarray) -> bool:
    k = (y * n).sum()
    return k <= 0 or k >= n.sum()


def _log_loss(p: np.ndarray, y: np.ndarray, n: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(n * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / n.sum())


def _cross_validate(X: _Rows, y: np.ndarray, n: np.ndarray, cfg: TrainConfig) -> tuple[float, float, int] | None:
    """(l2, accuracy, folds): k-fold over distinct prompts (folds drawn with the seed); l2 = the given
    one (or the default), or the grid's best by held-out log loss. None with too few prompts of a
    class to hold out."""
    folds = min(cfg.folds, int((y > 0.5).sum()), int((y <= 0.5).sum()))
    if folds < 2 or X.n < 10:
        return None
    if cfg.l2 is not None or X.n > cfg.search_max_prompts:
        grid = [cfg.l2 or cfg.default_l2]
    else:
        grid = sorted(cfg.l2_grid, reverse=True)  # flattest first: ties go to it
    fold_of = np.empty(X.n, dtype=np.int64)
    fold_of[np.random.default_rng(cfg.seed).permutation(X.n)] = np.arange(X.n) % folds
    p = np.empty((len(grid), X.n))
    for k in range(folds):
        tr, te = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        Xtr, Xte = X.subset(tr), X.subset(te)
        if _one_class(y[tr], n[tr]):
            p[:, te] = _constant_p(y[tr], n[tr])
            continue
        for j, l2 in enumerate(grid):
            w, b = fit_logistic(Xtr, y[tr], n[tr], l2, cfg.max_iter)
            p[j, te] = _sigmoid(Xte.dot(w) + b)
    best = int(np.argmin([_log_loss(pj, y, n) for pj in p]))  # ties: the flatter
    return grid[best], _accuracy(p[best], y, n), folds


def train_router(rows: list[Outcome], features: FeatureConfig = FeatureConfig(),
                 training: TrainConfig = TrainConfig(), sources: list[str] = ()) -> RouterFile:
    """One classifier per tier named in `rows`, tiers in the order they first appear."""
    from compress.artifacts import now_iso

    if not rows:
        raise CompressError("no outcome rows to train a router on")
    examples: dict[tuple[str, int | None], int] = {}  # (prompt, max_tokens) -> row of X
    pooled: dict[str, dict[int, list[int]]] = {}  # tier -> row of X -> [correct, total]
    for r in rows:
        i = examples.setdefault((r.prompt, r.max_tokens), len(examples))
        c = pooled.setdefault(r.tier, {}).setdefault(i, [0, 0])
        c[0] += int(r.correct)
        c[1] += 1
    featurize = Featurizer(features)
    X_all = _Rows.build([featurize(*k) for k in examples])
    tiers = {}
    for tier, counts in pooled.items():
        sel = np.array(sorted(counts))
        X = X_all.subset(sel)
        n = np.array([counts[i][1] for i in sel], dtype=np.float64)
        y = np.array([counts[i][0] for i in sel], dtype=np.float64) / n
        constant = _one_class(y, n)
        cv = None if constant else _cross_validate(X, y, n, training)
        l2 = None if constant else cv[0] if cv else training.l2 or training.default_l2
        if constant:
            w, b = np.zeros(len(X.columns)), _logit(_constant_p(y, n))
        else:
            w, b = fit_logistic(X, y, n, l2, training.max_iter)
        p = _sigmoid(X.dot(w) + b)
        rate = float((y * n).sum() / n.sum())
        nz = np.flatnonzero(w != 0)
        stats = TierStats(rows=int(n.sum()), prompts=len(sel), success_rate=round(rate, 6), constant=constant,
                          train_accuracy=round(_accuracy(p, y, n), 6), majority_accuracy=round(max(rate, 1 - rate), 6),
                          l2=l2, cv_accuracy=round(cv[1], 6) if cv else None, cv_folds=cv[2] if cv else None)
        tiers[tier] = TierModel(bias=b, indices=X.columns[nz].tolist(), stats=stats,
                                values=[float(f"{v:.7g}") for v in w[nz]])  # 7 digits: plenty for a probability
    return RouterFile(created_at=now_iso(), sources=list(sources), features=features, training=training, tiers=tiers)


# ---------------------------------------------------------------- outcome files


def read_outcomes(paths: Iterable[str | Path]) -> list[Outcome]:
    """Outcome rows from JSONL files; a bad line is one CompressError naming the file and line."""
    rows: list[Outcome] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CompressError(f"outcomes file not found: {path}")
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path} line {no}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompressError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(raw, dict):
                raise CompressError(f"{where}: expected an object with prompt, tier and correct")
            missing = [k for k in ("prompt", "tier", "correct") if k not in raw]
            if missing:
                raise CompressError(f"{where}: missing key(s) {', '.join(missing)}")
            prompt, tier, correct, mt = raw["prompt"], raw["tier"], raw["correct"], raw.get("max_tokens")
            if not isinstance(prompt, str) or not isinstance(tier, str) or not tier:
                raise CompressError(f"{where}: prompt and tier must be strings")
            if correct not in (True, False, 0, 1):  # JSON true/false, or 0/1
                raise CompressError(f"{where}: correct must be true/false (got {correct!r})")
            if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
                raise CompressError(f"{where}: max_tokens must be a positive integer (got {mt!r})")
            rows.append(Outcome(prompt, tier, bool(correct), mt))
    if not rows:
        raise CompressError(f"no outcome rows in {', '.join(map(str, paths))}")
    return rows


def train_router_files(paths: list[str | Path], *, hash_bits: int = 14, l2: float | None = None, folds: int = 5,
                       seed: int = 0, manifest: str | Path | None = None) -> RouterFile:
    """`compress router train`: read the outcome files, train; with `manifest`, its tiers must cover them."""
    features = validate(FeatureConfig, {"hash_bits": hash_bits}, "--hash-bits")
    training = validate(TrainConfig, {"l2": l2, "folds": folds, "seed": seed}, "options")
    rows = read_outcomes(paths)
    if manifest is not None:
        from compress.manifest import load_manifest

        names = [t.name for t in load_manifest(manifest).tiers]
        unknown = sorted({r.tier for r in rows} - set(names))
        if unknown:
            raise CompressError(f"tier(s) {', '.join(unknown)} in the outcomes are not in {manifest} "
                                f"(it has: {', '.join(names)})")
    return train_router(rows, features, training, sources=[str(p) for p in paths])


def router_table(router: RouterFile):
    """Per tier training stats as a rich table (accuracies: share of outcome rows predicted right)."""
    from rich.table import Table

    t = Table(title="router: P(correct | prompt) per tier", box=None, pad_edge=False,
              caption="train/CV/majority: share of rows predicted right; CV: k-fold (k)")
    for col in ("tier", "rows", "prompts", "success", "train", "CV", "majority", "l2", "weights"):
        t.add_column(col, justify="left" if col == "tier" else "right", no_wrap=True)
    for name, m in router.tiers.items():
        s = m.stats
        cv = "-" if s.cv_accuracy is None else f"{s.cv_accuracy:.3f} ({s.cv_folds})"
        t.add_row(name, str(s.rows), str(s.prompts), f"{s.success_rate:.3f}", f"{s.train_accuracy:.3f}", cv,
                  f"{s.majority_accuracy:.3f}", "-" if s.l2 is None else f"{s.l2:g}",
                  "const" if s.constant else str(len(m.indices)))
    return t


# ---------------------------------------------------------------- the file


def write_router(router: RouterFile, path: str | Path) -> Path:
    """router.json, atomically: indented, except that each tier's weight lists take one line each."""
    from compress.evaluate.results import write_text_atomic

    raw = router.model_dump(mode="json")
    inline = {}
    for j, m in enumerate(raw["tiers"].values()):
        for key in ("indices", "values"):
            token = f"@inline-{j}-{key}@"
            inline[json.dumps(token)] = json.dumps(m[key], separators=(",", ":"))
            m[key] = token
    text = json.dumps(raw, indent=2)
    for token, value in inline.items():
        text = text.replace(token, value, 1)
    return write_text_atomic(path, text + "\n")


class LearnedRouter:
    """A loaded router.json: predicted success per tier for a prompt."""

    def __init__(self, file: RouterFile, path: str | Path | None = None):
        self.file, self.path = file, path
        self.featurize = Featurizer(file.features)
        dim = file.features.dim
        self.tiers = list(file.tiers)
        self._bias = np.array([m.bias for m in file.tiers.values()])
        self._w = np.zeros((dim, len(self.tiers)))  # [features, tiers]
        for j, m in enumerate(file.tiers.values()):
            self._w[m.indices, j] = m.values

    def predict(self, prompt: str, max_tokens: int | None = None) -> dict[str, float]:
        idx, val = self.featurize(prompt, max_tokens)
        p = _sigmoid(self._bias + val @ self._w[idx])
        return dict(zip(self.tiers, p.tolist()))


def load_router(path: str | Path, tiers: list[str] | None = None) -> LearnedRouter:
    """Read and validate router.json; with `tiers` (the manifest's), every router tier must be one of them."""
    path = Path(path)
    raw = read_versioned_json(path, KIND, "router", SCHEMA_VERSION)
    rf = validate(RouterFile, raw, path)
    if not rf.tiers:
        raise CompressError(f"{path}: no tiers")
    dim = rf.features.dim
    for name, m in rf.tiers.items():
        if len(m.indices) != len(m.values):
            raise CompressError(f"{path}: tier {name!r}: {len(m.indices)} indices but {len(m.values)} values")
        if m.indices and not (0 <= min(m.indices) and max(m.indices) < dim):
            raise CompressError(f"{path}: tier {name!r}: feature index out of range [0, {dim})")
    if tiers is not None:
        unknown = [t for t in rf.tiers if t not in tiers]
        if unknown:
            raise CompressError(f"{path}: tier(s) {', '.join(map(repr, unknown))} not in the manifest "
                                f"(it has: {', '.join(tiers)})")
    return LearnedRouter(rf, path)

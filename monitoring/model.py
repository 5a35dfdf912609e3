"""The served model: loading the artifact safely, validating request rows, predicting fast.

A joblib file is pickled Python: loading one runs code from it. Load only artifacts you trained
yourself; the sha256 recorded beside the file at training time is checked before unpickling, which
catches a truncated or swapped file, not a malicious one written together with its hash.
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REQUIRED_KEYS = ("pipeline", "schema", "reference_features", "reference_errors", "metrics", "info")
SUPPORTED_FORMAT = 1
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "model.joblib"


class ModelLoadError(Exception):
    """The artifact cannot be served; the message says why and what to do."""


class InvalidInput(Exception):
    """A request row that cannot be predicted. `reason` is a short label counted in metrics."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_artifact(path: str | Path, verify_hash: bool = True) -> dict:
    """Load and check a training artifact, raising ModelLoadError with a plain message."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; run `python train.py --output {path}`")
    hash_file = Path(str(path) + ".sha256")
    if verify_hash:
        if not hash_file.is_file():
            raise ModelLoadError(f"{hash_file} is missing: the model's recorded hash cannot be checked "
                                 "(retrain with train.py, or pass --no-verify-hash for a file you trust)")
        recorded = (hash_file.read_text().split() or [""])[0]
        actual = _file_sha256(path)
        if recorded != actual:
            raise ModelLoadError(f"{path} does not match its recorded sha256 (recorded {recorded[:12]}..., "
                                 f"file {actual[:12]}...): truncated, modified or replaced; retrain it")
    import joblib  # deferred: importing it is part of loading, not of parsing options

    try:
        artifact = joblib.load(path)
    except (ImportError, AttributeError) as exc:  # a class that moved or vanished between versions
        raise ModelLoadError(f"{path} was written by incompatible library versions ({type(exc).__name__}: "
                             f"{exc}); retrain it with this environment's scikit-learn") from exc
    except Exception as exc:  # a cut-off pickle fails in many ways: EOFError, struct.error, ValueError...
        raise ModelLoadError(f"{path} is not a readable model artifact ({type(exc).__name__}: {exc}); "
                             "it may be truncated: retrain it") from exc
    if not isinstance(artifact, dict) or any(k not in artifact for k in REQUIRED_KEYS):
        raise ModelLoadError(f"{path} is not an artifact written by train.py (expected keys {REQUIRED_KEYS})")
    if artifact.get("format") != SUPPORTED_FORMAT:
        raise ModelLoadError(f"{path} has artifact format {artifact.get('format')!r}; this monitor reads "
                             f"format {SUPPORTED_FORMAT}: retrain it")
    trained_with = artifact["info"].get("versions", {}).get("sklearn")
    import sklearn

    if trained_with != sklearn.__version__:
        raise ModelLoadError(f"{path} was trained with scikit-learn {trained_with}, this environment has "
                             f"{sklearn.__version__}; retrain it (pickled models are not portable across versions)")
    return artifact


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "numeric" or "categorical"
    categories: tuple[str, ...] = ()
    # numeric only: True refuses values <= 0. A schema without the key is a diamond model's from
    # before any model could be served, whose numbers were all positive.
    positive: bool = True


class Schema:
    """The request contract, from the artifact's feature schema: the rows /predict takes and the
    labels /feedback takes (a number for a regression, one of the classes for a classification)."""

    def __init__(self, schema: dict):
        self.features = [Feature(f["name"], f["kind"], tuple(f.get("categories", ())), bool(f.get("positive", True)))
                         for f in schema["features"]]
        self.names = [f.name for f in self.features]
        self._by_name = {f.name: f for f in self.features}
        self._codes = {f.name: {c: i for i, c in enumerate(f.categories)}
                       for f in self.features if f.kind == "categorical"}
        self._accepted = ", ".join(self.names)
        self.task = schema.get("task", "regression")
        self.target = schema.get("target", "target")
        self.classes = list(schema.get("classes", ())) if self.task == "classification" else []
        # JSON equality, type included: true is not the class 1, nor "1" the class 1
        self._class_codes = {(type(c).__name__, c): i for i, c in enumerate(self.classes)}
        self.target_positive = bool(schema.get("target_positive", True)) if self.task == "regression" else False
        if self.task == "classification":
            self._label_hint = f"the true class, one of {', '.join(map(str, self.classes))}"
        elif self.target == "price" and self.target_positive:  # the diamond model's words
            self._label_hint = "the true price in dollars"
        else:
            self._label_hint = f"the true {self.target}"

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    def parse_label(self, obj: Any, where: str = "") -> tuple[str, float]:
        """One /feedback object -> (prediction id, actual): a number, or a class's code (its index in
        `classes`) for a classification."""
        return parse_label(obj, where, self._parse_actual, self._label_hint, self.target)

    def _parse_actual(self, field: str, value: Any) -> float:
        if self.is_classification:
            key = ("int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__, value)
            if isinstance(value, float) and value.is_integer() and ("int", int(value)) in self._class_codes:
                key = ("int", int(value))  # 2.0 is the class 2: JSON does not tell them apart
            try:
                return float(self._class_codes[key])
            except (KeyError, TypeError):  # TypeError: a list or an object is not hashable
                raise InvalidInput("unknown_class", f"{field}: unknown class {_quote(json_text(value))}; accepted: "
                                                    f"{', '.join(map(str, self.classes))}") from None
        if self.target_positive:
            return parse_positive_number(field, value)
        return parse_finite_number(field, value)

    def code(self, name: str, category: str) -> int:
        return self._codes[name][category]

    def fits(self, row: Sequence) -> bool:
        """Whether a stored row (feature values in schema order) is one this schema could have
        served: a known category for each categorical feature, a finite number for each other."""
        if len(row) != len(self.features):
            return False
        for feature, value in zip(self.features, row):
            if feature.kind == "categorical":
                if value not in self._codes[feature.name]:
                    return False
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return False
        return True

    def parse_row(self, obj: Any, where: str = "") -> tuple:
        """One request object -> a tuple of feature values in schema order (floats and category
        strings), or InvalidInput naming the field and what is accepted."""
        if not isinstance(obj, dict):
            raise InvalidInput("not_an_object", f"{_item(where)}: expected a JSON object with fields "
                                                f"{self._accepted}, got {describe_json(obj)}")
        extra = [k for k in obj if k not in self._by_name]
        if extra:
            raise InvalidInput("unknown_field", f"{where}{_quote(extra[0])}: unknown field; accepted fields: "
                                                f"{self._accepted}")
        values = []
        for feature in self.features:
            field = f"{where}{feature.name}"
            if feature.name not in obj:
                raise InvalidInput("missing_field", f"{field}: missing; every row needs {self._accepted}")
            value = obj[feature.name]
            if feature.kind == "numeric":
                values.append(parse_positive_number(field, value) if feature.positive
                              else parse_finite_number(field, value))
            else:
                if not isinstance(value, str):
                    raise InvalidInput("wrong_type", f"{field}: expected a string, one of "
                                                     f"{', '.join(feature.categories)}; got {describe_json(value)}")
                if value not in self._codes[feature.name]:
                    raise InvalidInput("unknown_category", f"{field}: unknown category {_quote(value)}; "
                                                           f"accepted: {', '.join(feature.categories)}")
                values.append(value)
        return tuple(values)


def parse_label(obj: Any, where: str = "", parse_actual=None,
                hint: str = "the true price in dollars", target: str = "price") -> tuple[str, float]:
    """One /feedback object -> (prediction id, actual), or InvalidInput naming the field. `actual` is
    read by parse_actual(field, value) (by default a positive number, the diamond model's price);
    `hint` says what it is when it is missing; `target` names it in the expected shape."""
    if not isinstance(obj, dict):
        raise InvalidInput("not_an_object", f"{_item(where)}: expected an object "
                                            f'{{"id": "<prediction id>", "actual": <{target}>}}, '
                                            f"got {describe_json(obj)}")
    extra = [k for k in obj if k not in ("id", "actual")]
    if extra:
        raise InvalidInput("unknown_field", f"{where}{_quote(extra[0])}: unknown field; accepted fields: id, actual")
    label_id = obj.get("id")
    if not isinstance(label_id, str) or not label_id:
        raise InvalidInput("missing_field" if label_id is None else "wrong_type",
                           f"{where}id: expected the prediction id string that /predict returned, "
                           f"got {describe_json(label_id) if 'id' in obj else 'nothing'}")
    if len(label_id) > MAX_ID_LENGTH or not _storable(label_id):
        raise InvalidInput("bad_id", f"{where}id: not an id that /predict returns (at most {MAX_ID_LENGTH} "
                                     "characters of text, no NUL or lone surrogate)")
    if "actual" not in obj:
        raise InvalidInput("missing_field", f"{where}actual: missing; {hint}")
    return label_id, (parse_actual or parse_positive_number)(f"{where}actual", obj["actual"])


MAX_ID_LENGTH = 128  # ids are 32 hex digits; anything much longer is not one


def _storable(text: str) -> bool:
    """Text a database can store: valid UTF-8 (no lone surrogate such as "\ud800", which JSON
    allows) and no NUL."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _item(where: str) -> str:
    """How a message names a whole object: 'body' for a lone one, '[3]' for one in a list."""
    return where.rstrip(".") or "body"


def parse_positive_number(field: str, value: Any) -> float:
    number = parse_finite_number(field, value)
    if number <= 0:
        raise InvalidInput("out_of_range", f"{field}: expected a positive number, got {value}")
    return number


def parse_finite_number(field: str, value: Any) -> float:
    # bool is an int subclass in Python, but true is not a carat.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput("not_a_number", f"{field}: expected a number, got {describe_json(value)}")
    try:
        number = float(value)
    except OverflowError:  # JSON integers have any length: 400 digits parse as an int no float holds
        raise InvalidInput("non_finite", f"{field}: expected a finite number, got an integer too large "
                                         "for a float") from None
    if not math.isfinite(number):
        raise InvalidInput("non_finite", f"{field}: expected a finite number, got {value}")
    return number


def describe_json(value: Any) -> str:
    """A JSON value as an error message names it: "the string 'x'", "an array", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def json_text(value: Any) -> str:
    """A JSON value as text for a message (a class named in an error)."""
    import json

    try:
        return value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _quote(text: str, limit: int = 40) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


class FastPredictor:
    """Exactly `pipeline.predict`, without its per-call overhead.

    For a few rows, scikit-learn's Pipeline spends most of its time in pandas, ColumnTransformer
    checks and 100 per-tree `predict` calls, each of which drops and retakes the GIL: under load,
    16 request threads fight over it 100 times a batch. This reads the fitted pipeline once:
    the ColumnTransformer's column order and category codes, and every tree's node arrays packed
    into flat numpy arrays, so one batch is one short stretch of numpy calls that walks all trees
    a level at a time. It makes the same comparisons (the float32 input the forest casts to,
    widened to float64, <= the float64 threshold), takes the same leaf values and sums them in tree
    order, so results are bit for bit the pipeline's; the constructor checks that on reference rows
    and refuses a pipeline it cannot reproduce. The pipeline itself is not kept.
    """

    # Big batches walk the trees in groups whose nodes stay in cache, the groups on a few threads
    # (numpy's gathers release the GIL); small ones walk all trees at once on the caller's thread.
    _TREES_PER_GROUP = 25
    _SMALL_BATCH = 64
    # Every few levels, (row, tree) pairs already at a leaf are dropped from the walk: paths end at
    # very different depths, so most of a fixed-depth walk would be leaves stepping on the spot.
    _COMPACT_EVERY = 4

    def __init__(self, pipeline, schema: Schema, check_rows=None):
        preprocessor = pipeline.named_steps["preprocessor"]
        forest = pipeline.named_steps["regressor"]
        # Column order and category codes as the fitted ColumnTransformer produces them.
        self._columns: list[tuple[int, dict | None]] = []
        for name, transformer, columns in preprocessor.transformers_:
            if name == "remainder" or transformer == "drop":
                continue
            # A fitted ColumnTransformer holds "passthrough" as an identity FunctionTransformer.
            identity = transformer == "passthrough" or getattr(transformer, "func", "") is None
            if not identity and not hasattr(transformer, "categories_"):
                raise ModelLoadError(f"FastPredictor cannot reproduce the {name!r} transformer "
                                     f"({type(transformer).__name__})")
            for j, column in enumerate(columns):
                source = schema.names.index(column)
                if identity:
                    self._columns.append((source, None))
                else:
                    categories = transformer.categories_[j]
                    self._columns.append((source, {str(c): float(i) for i, c in enumerate(categories)}))
        self._pack([estimator.tree_ for estimator in forest.estimators_])
        if check_rows is not None:
            self._check_against(pipeline, schema, check_rows)

    def _pack(self, trees) -> None:
        sizes = np.array([t.node_count for t in trees], dtype=np.int64)
        self._roots = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        total = int(sizes.sum())
        # children[2 * node + went_right]; a leaf points to itself, so walking past it stays there.
        children = np.empty((total, 2), dtype=np.int64)
        self._feature = np.empty(total, dtype=np.int64)
        self._threshold = np.empty(total, dtype=np.float64)
        self._value = np.empty(total, dtype=np.float64)
        self._is_leaf = np.empty(total, dtype=bool)
        for tree, offset in zip(trees, self._roots):
            nodes = slice(offset, offset + tree.node_count)
            leaf = tree.children_left == -1
            here = np.arange(tree.node_count)
            children[nodes, 0] = np.where(leaf, here, tree.children_left) + offset
            children[nodes, 1] = np.where(leaf, here, tree.children_right) + offset
            self._feature[nodes] = np.where(leaf, 0, tree.feature)
            self._threshold[nodes] = np.where(leaf, 0.0, tree.threshold)
            self._value[nodes] = tree.value[:, 0, 0]
            self._is_leaf[nodes] = leaf
        self._children = children.ravel()
        self._depth = max(t.max_depth for t in trees)
        self.n_trees = len(trees)
        self._pool: ThreadPoolExecutor | None = None

    def encode(self, rows: Sequence[tuple]) -> np.ndarray:
        matrix = np.empty((len(rows), len(self._columns)), dtype=np.float64)
        for i, row in enumerate(rows):
            matrix[i] = [row[src] if codes is None else codes[row[src]] for src, codes in self._columns]
        # The forest casts its input to float32; comparisons then widen it back to float64.
        return matrix.astype(np.float32).astype(np.float64)

    def predict(self, rows: Sequence[tuple]) -> np.ndarray:
        X = self.encode(rows)
        if len(rows) <= self._SMALL_BATCH:
            leaves = self._leaves(X, self._roots)
        else:
            groups = [self._roots[start:start + self._TREES_PER_GROUP]
                      for start in range(0, self.n_trees, self._TREES_PER_GROUP)]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                thread_name_prefix="forest")
            leaves = np.concatenate(list(self._pool.map(lambda roots: self._leaves(X, roots), groups)), axis=1)
        values = self._value.take(leaves.T)  # (trees, rows), C order
        # cumsum adds strictly in tree order, as the forest accumulates (a plain sum may pair terms)
        total = np.cumsum(values, axis=0)[-1]
        total /= self.n_trees
        return total

    def _leaves(self, X: np.ndarray, roots: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree of `roots`: an (n_rows, n_trees) array of nodes."""
        n_rows, n_trees = len(X), len(roots)
        flat = X.ravel()
        leaf = np.tile(roots, n_rows)  # (row, tree) pairs, row-major; final once a pair is dropped
        active = np.arange(leaf.size)  # the pairs still walking
        node = leaf.copy()
        row_start = np.repeat(np.arange(n_rows, dtype=np.int64) * X.shape[1], n_trees)
        for level in range(1, self._depth + 1):
            went_right = flat.take(row_start + self._feature.take(node)) > self._threshold.take(node)
            node = self._children.take(node * 2 + went_right)
            if level % self._COMPACT_EVERY == 0 or level == self._depth:
                leaf[active] = node
                walking = ~self._is_leaf.take(node)
                active, node, row_start = active[walking], node[walking], row_start[walking]
                if not active.size:
                    break
        return leaf.reshape(n_rows, n_trees)

    def _check_against(self, pipeline, schema: Schema, frame) -> None:
        import pandas as pd

        rows = [tuple(r) for r in frame[schema.names].astype(object).itertuples(index=False)]
        slow = pipeline.predict(pd.DataFrame(rows, columns=schema.names))
        for batch in (rows[:1], rows[:self._SMALL_BATCH], rows):  # both walking orders
            if not np.array_equal(self.predict(batch), slow[:len(batch)]):
                raise ModelLoadError("the fast prediction path disagrees with the pipeline on reference rows; "
                                     "this model's pipeline layout is not supported by FastPredictor")


class PipelinePredictor:
    """The pipeline itself, for the models FastPredictor cannot reproduce (any regressor that is not
    a random forest behind the known transformers, and every classifier): rows in schema order
    become the DataFrame the pipeline was fitted on."""

    def __init__(self, pipeline, schema: Schema):
        self._pipeline = pipeline
        self._names = schema.names

    def _frame(self, rows: Sequence[tuple]):
        import pandas as pd

        return pd.DataFrame(list(rows), columns=self._names)

    def predict(self, rows: Sequence[tuple]) -> np.ndarray:
        return np.asarray(self._pipeline.predict(self._frame(rows)), dtype=np.float64).ravel()

    def predict_proba(self, rows: Sequence[tuple]) -> np.ndarray:
        """(rows, classes) probabilities, columns in the order of the schema's classes."""
        return np.asarray(self._pipeline.predict_proba(self._frame(rows)), dtype=np.float64)


def make_predictor(pipeline, schema: Schema, check_rows=None) -> "FastPredictor | PipelinePredictor":
    """FastPredictor where it applies and is exact (a regression forest behind the known transformers,
    checked bit for bit on `check_rows`), else the pipeline. Which one serves is logged."""
    import logging

    log = logging.getLogger("monitor.model")
    if schema.is_classification:
        log.info("predicting with the pipeline (a classifier: probabilities from predict_proba)")
        return PipelinePredictor(pipeline, schema)
    try:
        predictor = FastPredictor(pipeline, schema, check_rows=check_rows)
    except Exception as exc:  # any layout it cannot read: KeyError (step names), AttributeError (no trees)...
        log.info("predicting with the pipeline; the fast path does not apply (%s: %s)", type(exc).__name__, exc)
        return PipelinePredictor(pipeline, schema)
    log.info("predicting with the fast forest path (checked equal to the pipeline on reference rows)")
    return predictor


def release_freed_memory() -> None:
    """Give freed heap pages back to the operating system.

    Unpickling a forest allocates its node arrays twice (the pickled arrays, then scikit-learn's own
    copies); glibc keeps the freed half in its arenas, which shows as ~70 MB of resident memory that
    nothing uses. Elsewhere than glibc this does nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

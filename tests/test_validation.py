"""The request contract: Schema.parse_row, parse_label, parse_positive_number, parse_finite_number,
describe_json and json_text, messages word for word; Schema.fits for rows read back from a store;
a Schema built from any artifact's schema (a classifier's classes, a target of any sign).

A client reads these messages to fix its request, and the reason labels are counted in metrics, so
each test pins the whole message and the reason, not just their first words.
"""
from __future__ import annotations

import re

import pytest

from monitoring.model import (MAX_ID_LENGTH, Feature, InvalidInput, Schema, describe_json, json_text,
                              parse_finite_number, parse_label, parse_positive_number)

# The artifact's schema as train.py writes it (test_artifact_schema_is_this_one checks it).
SCHEMA_DICT = {"task": "regression", "features": [
    {"name": "carat", "kind": "numeric", "positive": True},
    {"name": "cut", "kind": "categorical", "categories": ["Fair", "Good", "Very Good", "Premium", "Ideal"]},
    {"name": "color", "kind": "categorical", "categories": ["J", "I", "H", "G", "F", "E", "D"]},
    {"name": "clarity", "kind": "categorical", "categories": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]},
    {"name": "depth", "kind": "numeric", "positive": True},
    {"name": "table", "kind": "numeric", "positive": True},
], "target": "price", "target_positive": True}
FIELDS = "carat, cut, color, clarity, depth, table"
ROW = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}


@pytest.fixture
def schema() -> Schema:
    """Built in each test (it is cheap), so that every test that reads a message runs Schema() too."""
    return Schema(SCHEMA_DICT)


def _refused(call, reason: str, message: str) -> None:
    with pytest.raises(InvalidInput, match="^" + re.escape(message) + "$") as err:
        call()
    assert err.value.reason == reason
    assert err.value.message == message == str(err.value)


# --------------------------------------------------------------------------------------------------
# Schema


def test_artifact_schema_is_this_one(small_artifact):
    assert small_artifact["schema"] == SCHEMA_DICT


def test_schema_names_features_and_codes(schema):
    assert schema.names == ["carat", "cut", "color", "clarity", "depth", "table"]
    assert schema.features[0] == Feature("carat", "numeric", ())
    assert schema.features[1] == Feature("cut", "categorical", ("Fair", "Good", "Very Good", "Premium", "Ideal"))
    assert [schema.code("cut", c) for c in ("Fair", "Good", "Very Good", "Premium", "Ideal")] == [0, 1, 2, 3, 4]
    assert schema.code("color", "D") == 6 and schema.code("clarity", "I1") == 0 and schema.code("clarity", "IF") == 7
    with pytest.raises(KeyError):
        schema.code("carat", "0.5")  # numeric features have no codes


def test_valid_row_becomes_a_tuple_in_schema_order(schema):
    shuffled = dict(reversed(list(ROW.items())))
    row = schema.parse_row(shuffled)
    assert row == (0.5, "Ideal", "E", "VS1", 61.5, 55.0)
    assert [type(v) for v in row] == [float, str, str, str, float, float]  # 55 (an int) became 55.0
    assert schema.parse_row(ROW, "[3].") == row


def test_schema_parses_a_row_and_names_the_bad_field(small_artifact):
    schema = Schema(small_artifact["schema"])
    row = schema.parse_row({"carat": 1, "cut": "Good", "color": "D", "clarity": "IF", "depth": 60, "table": 57})
    assert row == (1.0, "Good", "D", "IF", 60.0, 57.0)
    _refused(lambda: schema.parse_row({"carat": 1, "cut": "Good", "color": "Z", "clarity": "IF", "depth": 60,
                                       "table": 57}, "[4]."),
             "unknown_category", "[4].color: unknown category 'Z'; accepted: J, I, H, G, F, E, D")


@pytest.mark.parametrize("body, described", [
    ([ROW], "an array"), ("carat", "the string 'carat'"), (None, "null"), (3, "the number 3"), (True, "a boolean"),
])
def test_row_that_is_not_an_object(schema, body, described):
    _refused(lambda: schema.parse_row(body), "not_an_object",
             f"body: expected a JSON object with fields {FIELDS}, got {described}")
    _refused(lambda: schema.parse_row(body, "[7]."), "not_an_object",
             f"[7]: expected a JSON object with fields {FIELDS}, got {described}")


def test_unknown_field_is_named_before_anything_else(schema):
    _refused(lambda: schema.parse_row({**ROW, "price": 300}), "unknown_field",
             f"'price': unknown field; accepted fields: {FIELDS}")
    # the first unknown one, even when fields are also missing
    _refused(lambda: schema.parse_row({"carat": 0.5, "Cut": "Ideal", "x": 1}, "[0]."), "unknown_field",
             f"[0].'Cut': unknown field; accepted fields: {FIELDS}")
    long_name = "a" * 41
    _refused(lambda: schema.parse_row({**ROW, long_name: 1}), "unknown_field",
             f"'{'a' * 40}...': unknown field; accepted fields: {FIELDS}")


@pytest.mark.parametrize("missing", ["carat", "cut", "clarity", "table"])
def test_missing_field(schema, missing):
    row = {k: v for k, v in ROW.items() if k != missing}
    _refused(lambda: schema.parse_row(row), "missing_field", f"{missing}: missing; every row needs {FIELDS}")
    _refused(lambda: schema.parse_row(row, "[12]."), "missing_field",
             f"[12].{missing}: missing; every row needs {FIELDS}")


def test_first_bad_field_in_schema_order_is_reported(schema):
    bad = {**ROW, "table": -1, "carat": "big", "color": "Z"}
    _refused(lambda: schema.parse_row(bad), "not_a_number", "carat: expected a number, got the string 'big'")
    no_cut = {k: v for k, v in bad.items() if k != "cut"}
    _refused(lambda: schema.parse_row(no_cut), "not_a_number", "carat: expected a number, got the string 'big'")
    _refused(lambda: schema.parse_row({**no_cut, "carat": 1}), "missing_field", f"cut: missing; every row needs {FIELDS}")
    _refused(lambda: schema.parse_row({**bad, "carat": 1}), "unknown_category",
             "color: unknown category 'Z'; accepted: J, I, H, G, F, E, D")


@pytest.mark.parametrize("value, described", [
    (3, "the number 3"), (None, "null"), (["Ideal"], "an array"), ({"grade": "Ideal"}, "an object"),
    (False, "a boolean"),
])
def test_grade_of_the_wrong_type(schema, value, described):
    _refused(lambda: schema.parse_row({**ROW, "cut": value}, "[1]."), "wrong_type",
             f"[1].cut: expected a string, one of Fair, Good, Very Good, Premium, Ideal; got {described}")


@pytest.mark.parametrize("value", ["ideal", "IDEAL", " Ideal", "Ideal ", "", "Very  Good"])
def test_grade_must_match_exactly(schema, value):
    _refused(lambda: schema.parse_row({**ROW, "cut": value}), "unknown_category",
             f"cut: unknown category {value!r}; accepted: Fair, Good, Very Good, Premium, Ideal")


def test_unknown_grade_is_quoted_and_cut_short(schema):
    long_grade = "V" * 45
    _refused(lambda: schema.parse_row({**ROW, "clarity": long_grade}), "unknown_category",
             f"clarity: unknown category '{'V' * 40}...'; accepted: I1, SI2, SI1, VS2, VS1, VVS2, VVS1, IF")


@pytest.mark.parametrize("field", ["carat", "depth", "table"])
@pytest.mark.parametrize("value, reason, message", [
    (0, "out_of_range", "expected a positive number, got 0"),
    (-1, "out_of_range", "expected a positive number, got -1"),
    ("1", "not_a_number", "expected a number, got the string '1'"),
    (float("nan"), "non_finite", "expected a finite number, got nan"),
])
def test_numbers_are_checked_in_every_numeric_field(schema, field, value, reason, message):
    _refused(lambda: schema.parse_row({**ROW, field: value}, "[2]."), reason, f"[2].{field}: {message}")


# --------------------------------------------------------------------------------------------------
# parse_positive_number (rows' numbers and /feedback's `actual`)


@pytest.mark.parametrize("value, expected", [
    (1, 1.0), (0.31, 0.31), (326, 326.0), (5e-324, 5e-324), (1e308, 1e308), (10 ** 300, 1e300),
])
def test_positive_numbers_are_accepted_as_floats(value, expected):
    number = parse_positive_number("actual", value)
    assert number == expected and type(number) is float


@pytest.mark.parametrize("value, shown", [(0, "0"), (0.0, "0.0"), (-0.0, "-0.0"), (-1, "-1"), (-0.01, "-0.01"),
                                          (-5e-324, "-5e-324"), (-10 ** 20, "-100000000000000000000")])
def test_zero_and_negative_numbers_are_refused(value, shown):
    _refused(lambda: parse_positive_number("actual", value), "out_of_range",
             f"actual: expected a positive number, got {shown}")


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_numbers_are_refused(value, shown):
    _refused(lambda: parse_positive_number("[0].actual", value), "non_finite",
             f"[0].actual: expected a finite number, got {shown}")


def test_an_integer_too_large_for_a_float_is_refused_not_crashing():
    """JSON numbers have any length: a 400-digit integer parses as a Python int that float() cannot hold."""
    _refused(lambda: parse_positive_number("carat", 10 ** 400), "non_finite",
             "carat: expected a finite number, got an integer too large for a float")
    _refused(lambda: parse_positive_number("carat", -10 ** 400), "non_finite",
             "carat: expected a finite number, got an integer too large for a float")


@pytest.mark.parametrize("value, described", [
    (True, "a boolean"), (False, "a boolean"), ("1.5", "the string '1.5'"), ("", "the string ''"),
    (None, "null"), ([1.5], "an array"), ({"value": 1.5}, "an object"),
])
def test_non_numbers_are_refused(value, described):
    _refused(lambda: parse_positive_number("depth", value), "not_a_number", f"depth: expected a number, got {described}")


# --------------------------------------------------------------------------------------------------
# parse_finite_number (the numbers of a model without sign constraints: features and targets)


@pytest.mark.parametrize("value, expected", [
    (0, 0.0), (-0.0, -0.0), (-1, -1.0), (-2.5, -2.5), (5e-324, 5e-324), (-1e308, -1e308), (-10 ** 300, -1e300),
    (7, 7.0),
])
def test_finite_numbers_of_any_sign_are_accepted_as_floats(value, expected):
    number = parse_finite_number("x", value)
    assert number == expected and type(number) is float
    assert str(number) == str(expected)  # -0.0 stays -0.0


@pytest.mark.parametrize("value, reason, message", [
    (float("nan"), "non_finite", "expected a finite number, got nan"),
    (float("inf"), "non_finite", "expected a finite number, got inf"),
    (float("-inf"), "non_finite", "expected a finite number, got -inf"),
    (10 ** 400, "non_finite", "expected a finite number, got an integer too large for a float"),
    (-10 ** 400, "non_finite", "expected a finite number, got an integer too large for a float"),
    (True, "not_a_number", "expected a number, got a boolean"),
    (False, "not_a_number", "expected a number, got a boolean"),
    ("0", "not_a_number", "expected a number, got the string '0'"),
    (None, "not_a_number", "expected a number, got null"),
    ({"v": 0}, "not_a_number", "expected a number, got an object"),
])
def test_what_is_not_a_finite_number_is_refused(value, reason, message):
    _refused(lambda: parse_finite_number("[1].x", value), reason, f"[1].x: {message}")


# --------------------------------------------------------------------------------------------------
# json_text (how a message shows a class it does not know)


@pytest.mark.parametrize("value, expected", [
    ("ham", "ham"), ("", ""), ('say "hi"', 'say "hi"'), (1, "1"), (2.5, "2.5"), (-1.0, "-1.0"), (True, "true"),
    (None, "null"), (float("nan"), "NaN"), ([1, "a"], '[1, "a"]'), ({"k": None}, '{"k": null}'),
])
def test_json_text_shows_a_value_as_json_has_it(value, expected):
    assert json_text(value) == expected


def test_json_text_of_what_json_cannot_write_is_its_python_text():
    circular = []
    circular.append(circular)
    assert json_text(circular) == "[[...]]"   # json.dumps: ValueError (circular reference)
    assert json_text({1, 2}) == "{1, 2}"      # json.dumps: TypeError (a set)
    assert json_text(b"raw") == "b'raw'"


# --------------------------------------------------------------------------------------------------
# describe_json


@pytest.mark.parametrize("value, expected", [
    (None, "null"),
    (True, "a boolean"),
    (False, "a boolean"),
    (0, "the number 0"),
    (-2.5, "the number -2.5"),
    (1e300, "the number 1e+300"),
    (float("nan"), "the number nan"),
    ("", "the string ''"),
    ("it's", "the string \"it's\""),
    ("x" * 40, f"the string '{'x' * 40}'"),
    ("x" * 41, f"the string '{'x' * 40}...'"),
    ([], "an array"),
    ([1, 2], "an array"),
    ({}, "an object"),
    ({"a": 1}, "an object"),
    ((1, 2), "tuple"),
    (b"raw", "bytes"),
])
def test_describe_json(value, expected):
    assert describe_json(value) == expected


def test_invalid_input_keeps_reason_and_message():
    exc = InvalidInput("out_of_range", "carat: expected a positive number, got 0")
    assert exc.reason == "out_of_range"
    assert exc.message == str(exc) == "carat: expected a positive number, got 0"
    assert exc.args == ("carat: expected a positive number, got 0",)


# -------------------------------------------------------------------------------------------- labels

LABEL = '{"id": "<prediction id>", "actual": <price>}'


def test_a_label_is_its_id_and_a_positive_actual():
    assert parse_label({"id": "abc", "actual": 1710}) == ("abc", 1710.0)
    assert parse_label({"actual": 2.5, "id": "x" * MAX_ID_LENGTH}, "[3].") == ("x" * MAX_ID_LENGTH, 2.5)


@pytest.mark.parametrize("body,described", [([], "an array"), ("abc", "the string 'abc'"), (None, "null"), (7, "the number 7")])
def test_a_label_that_is_not_an_object(body, described):
    _refused(lambda: parse_label(body), "not_an_object", f"body: expected an object {LABEL}, got {described}")
    _refused(lambda: parse_label(body, "[2]."), "not_an_object", f"[2]: expected an object {LABEL}, got {described}")


def test_a_label_with_an_unknown_field_names_the_first():
    _refused(lambda: parse_label({"id": "a", "actual": 1, "price": 2, "x": 3}, "[0]."), "unknown_field",
             "[0].'price': unknown field; accepted fields: id, actual")


@pytest.mark.parametrize("obj,reason,got", [
    ({"actual": 1}, "missing_field", "nothing"),
    ({"id": None, "actual": 1}, "missing_field", "null"),
    ({"id": 5, "actual": 1}, "wrong_type", "the number 5"),
    ({"id": "", "actual": 1}, "wrong_type", "the string ''"),
    ({"id": ["a"], "actual": 1}, "wrong_type", "an array"),
])
def test_a_label_needs_an_id_string(obj, reason, got):
    _refused(lambda: parse_label(obj, "[1]."), reason,
             f"[1].id: expected the prediction id string that /predict returned, got {got}")


@pytest.mark.parametrize("label_id", ["\ud800", "a\udfffb", "a\x00b", "x" * (MAX_ID_LENGTH + 1)])
def test_an_id_no_store_can_hold_is_refused(label_id):
    _refused(lambda: parse_label({"id": label_id, "actual": 1}), "bad_id",
             f"id: not an id that /predict returns (at most {MAX_ID_LENGTH} characters of text, no NUL or "
             "lone surrogate)")


def test_a_label_needs_an_actual_that_is_a_positive_number():
    _refused(lambda: parse_label({"id": "a"}), "missing_field", "actual: missing; the true price in dollars")
    _refused(lambda: parse_label({"id": "a", "actual": 0}, "[4]."), "out_of_range",
             "[4].actual: expected a positive number, got 0")
    _refused(lambda: parse_label({"id": "a", "actual": "9"}), "not_a_number",
             "actual: expected a number, got the string '9'")


# ------------------------------------------------------------------------------- rows from a store

def test_a_stored_row_fits_when_this_schema_could_have_served_it(schema):
    assert schema.fits((0.5, "Ideal", "E", "VS1", 61.5, 55.0))
    assert schema.fits((1, "Fair", "J", "I1", 60, 54))  # ints are numbers too
    for row in ((0.5, "Perfect", "E", "VS1", 61.5, 55.0),   # a category this model does not know
                (0.5, "Ideal", "E", "VS1", 61.5),            # a feature short
                (0.5, "Ideal", "E", "VS1", 61.5, 55.0, 1.0),  # one too many
                (None, "Ideal", "E", "VS1", 61.5, 55.0),      # NULL
                (float("nan"), "Ideal", "E", "VS1", 61.5, 55.0),
                (0.5, "Ideal", "E", "VS1", float("inf"), 55.0),
                (True, "Ideal", "E", "VS1", 61.5, 55.0),
                ("0.5", "Ideal", "E", "VS1", 61.5, 55.0),
                (0.5, None, "E", "VS1", 61.5, 55.0)):
        assert not schema.fits(row), row


# ------------------------------------------------------------------------ any model's schema (#12)
# The schemas below are what monitoring/artifact.py writes for a user's own fitted pipeline: the
# classes as build_artifact records them (text, integers, booleans as the text "True"/"False",
# whole floats as integers), a numeric feature with no sign constraint, a text feature (sorted
# categories) and a pandas ordered categorical (its own order, worst first).

ANY_FIELDS = "size, colour, grade"


def _features():
    import pandas as pd

    return pd.DataFrame({"size": [-1.5, 0.0, 2.25] * 10, "colour": ["red", "green", "blue"] * 10,
                         "grade": pd.Categorical(["high", "low", "mid"] * 10, categories=["low", "mid", "high"],
                                                 ordered=True)})


def _schema_of(target: str, values: list, regression: bool = False) -> dict:
    """The schema build_artifact records for a fitted pipeline whose labels are `values` (repeated)."""
    import pandas as pd
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.pipeline import make_pipeline

    from monitoring.artifact import build_artifact

    X = _features()
    y = pd.Series((values * 30)[:len(X)], name=target)
    pipeline = make_pipeline(DummyRegressor() if regression else DummyClassifier()).fit(X, y)
    return build_artifact(pipeline, X, y, X, y)["schema"]


ANY_FEATURES = [{"name": "size", "kind": "numeric", "positive": False},
                {"name": "colour", "kind": "categorical", "categories": ["blue", "green", "red"]},
                {"name": "grade", "kind": "categorical", "categories": ["low", "mid", "high"]}]


@pytest.fixture(scope="module")
def schema_dicts() -> dict:
    return {
        "words": _schema_of("kind", ["spam", "ham", "eggs"]),
        "stars": _schema_of("stars", [3, 1, 2]),
        "flags": _schema_of("ok", [True, False]),
        "weights": _schema_of("w", [0.5, 1.5, 2.0]),
        "change": _schema_of("change", [-2.5, 0.0, 3.0], regression=True),
        "weight": _schema_of("weight", [0.5, 1.5, 3.0], regression=True),
        "price": _schema_of("price", [326.0, 1710.0, 18823.0], regression=True),
        "price_change": _schema_of("price", [-326.0, 0.0, 18823.0], regression=True),
    }


def test_build_artifact_writes_these_schemas(schema_dicts):
    """The dicts every test below builds a Schema from, as build_artifact writes them."""
    classification = {"task": "classification", "features": ANY_FEATURES}
    assert schema_dicts["words"] == {**classification, "target": "kind", "classes": ["eggs", "ham", "spam"]}
    assert schema_dicts["stars"] == {**classification, "target": "stars", "classes": [1, 2, 3]}
    assert schema_dicts["flags"] == {**classification, "target": "ok", "classes": ["False", "True"]}
    assert schema_dicts["weights"] == {**classification, "target": "w", "classes": [0.5, 1.5, 2]}
    assert [type(c) for c in schema_dicts["weights"]["classes"]] == [float, float, int]
    regression = {"task": "regression", "features": ANY_FEATURES}
    assert schema_dicts["change"] == {**regression, "target": "change", "target_positive": False}
    assert schema_dicts["weight"] == {**regression, "target": "weight", "target_positive": True}
    assert schema_dicts["price"] == {**regression, "target": "price", "target_positive": True}
    assert schema_dicts["price_change"] == {**regression, "target": "price", "target_positive": False}


@pytest.mark.parametrize("name", ["words", "stars", "change"])
def test_a_schema_from_any_artifact_names_features_kinds_and_codes(schema_dicts, name):
    schema = Schema(schema_dicts[name])
    assert schema.names == ["size", "colour", "grade"]
    assert schema.features == [Feature("size", "numeric", (), False),
                               Feature("colour", "categorical", ("blue", "green", "red"), True),
                               Feature("grade", "categorical", ("low", "mid", "high"), True)]
    assert [schema.code("colour", c) for c in ("blue", "green", "red")] == [0, 1, 2]
    assert [schema.code("grade", g) for g in ("low", "mid", "high")] == [0, 1, 2]  # the categorical's order
    with pytest.raises(KeyError):
        schema.code("size", "0")
    with pytest.raises(KeyError):
        schema.code("grade", "top")


def test_classification_schema_fields(schema_dicts):
    schema = Schema(schema_dicts["stars"])
    assert schema.is_classification is True and schema.task == "classification"
    assert schema.target == "stars" and schema.target_positive is False
    assert schema.classes == [1, 2, 3] and [type(c) for c in schema.classes] == [int, int, int]
    assert Schema(schema_dicts["flags"]).classes == ["False", "True"]
    assert Schema(schema_dicts["weights"]).classes == [0.5, 1.5, 2]


@pytest.mark.parametrize("name, target, positive", [
    ("change", "change", False), ("weight", "weight", True), ("price", "price", True), ("price_change", "price", False),
])
def test_regression_schema_fields(schema_dicts, name, target, positive):
    schema = Schema(schema_dicts[name])
    assert schema.is_classification is False and schema.task == "regression"
    assert schema.target == target and schema.target_positive is positive
    assert schema.classes == []


def test_a_regression_schema_ignores_a_classes_key():
    schema = Schema({"task": "regression", "features": ANY_FEATURES, "target": "y", "classes": [1, 2]})
    assert schema.classes == []
    _refused(lambda: schema.parse_label({"id": "a", "actual": 0}), "out_of_range",
             "actual: expected a positive number, got 0")


def test_a_schema_from_before_any_model_is_the_diamond_contract():
    """No task, target, target_positive nor `positive`: a diamond model's schema from before #12,
    whose numbers and prices were all positive."""
    schema = Schema({"features": [{"name": "carat", "kind": "numeric"},
                                  {"name": "cut", "kind": "categorical", "categories": ["Fair", "Ideal"]}]})
    assert schema.task == "regression" and schema.is_classification is False
    assert schema.target == "target" and schema.target_positive is True and schema.classes == []
    assert schema.features == [Feature("carat", "numeric", (), True), Feature("cut", "categorical", ("Fair", "Ideal"))]
    _refused(lambda: schema.parse_row({"carat": 0, "cut": "Fair"}), "out_of_range",
             "carat: expected a positive number, got 0")
    _refused(lambda: schema.parse_label({"id": "a", "actual": 0}), "out_of_range",
             "actual: expected a positive number, got 0")
    _refused(lambda: schema.parse_label({"id": "a"}), "missing_field", "actual: missing; the true target")
    assert schema.parse_label({"id": "a", "actual": 3}) == ("a", 3.0)


def test_a_classification_schema_without_classes_accepts_no_label():
    schema = Schema({"task": "classification", "features": ANY_FEATURES, "target": "y"})
    assert schema.classes == [] and schema.is_classification
    _refused(lambda: schema.parse_label({"id": "a", "actual": 0}), "unknown_class",
             "actual: unknown class '0'; accepted: ")


@pytest.mark.parametrize("name", ["words", "change"])
def test_a_row_of_any_schema_is_parsed_in_schema_order(schema_dicts, name):
    schema = Schema(schema_dicts[name])
    assert schema.parse_row({"grade": "mid", "size": -1.5, "colour": "red"}) == (-1.5, "red", "mid")
    row = schema.parse_row({"size": 0, "colour": "blue", "grade": "high"}, "[1].")
    assert row == (0.0, "blue", "high") and type(row[0]) is float  # 0 is a size: no sign constraint
    _refused(lambda: schema.parse_row({"size": float("nan"), "colour": "red", "grade": "mid"}, "[1]."),
             "non_finite", "[1].size: expected a finite number, got nan")
    _refused(lambda: schema.parse_row({"size": float("-inf"), "colour": "red", "grade": "mid"}),
             "non_finite", "size: expected a finite number, got -inf")
    _refused(lambda: schema.parse_row({"size": "1", "colour": "red", "grade": "mid"}),
             "not_a_number", "size: expected a number, got the string '1'")
    _refused(lambda: schema.parse_row({"size": 1, "colour": "red", "grade": "top"}),
             "unknown_category", "grade: unknown category 'top'; accepted: low, mid, high")
    _refused(lambda: schema.parse_row({"size": 1, "colour": 2, "grade": "low"}),
             "wrong_type", "colour: expected a string, one of blue, green, red; got the number 2")
    _refused(lambda: schema.parse_row({"size": 1, "grade": "low"}), "missing_field",
             f"colour: missing; every row needs {ANY_FIELDS}")
    _refused(lambda: schema.parse_row({"size": 1, "colour": "red", "grade": "low", "kind": "ham"}), "unknown_field",
             f"'kind': unknown field; accepted fields: {ANY_FIELDS}")


@pytest.mark.parametrize("name", ["words", "change"])
def test_a_stored_row_fits_any_schema(schema_dicts, name):
    schema = Schema(schema_dicts[name])
    assert schema.fits((-1.5, "red", "mid")) and schema.fits((0, "blue", "high"))
    for row in ((-1.5, "purple", "mid"), (-1.5, "red", "top"), (-1.5, "mid", "red"), ("-1.5", "red", "mid"),
                (False, "red", "mid"), (float("nan"), "red", "mid"), (-1.5, "red"), (-1.5, "red", "mid", "x")):
        assert not schema.fits(row), row


# ----------------------------------------------------------------------------- classes as labels

@pytest.mark.parametrize("name, actual, code", [
    ("words", "eggs", 0), ("words", "ham", 1), ("words", "spam", 2),
    ("stars", 1, 0), ("stars", 2, 1), ("stars", 3, 2),
    ("stars", 2.0, 1), ("stars", 3.0, 2),  # 2.0 is the class 2: JSON does not tell them apart
    ("flags", "False", 0), ("flags", "True", 1),
    ("weights", 0.5, 0), ("weights", 1.5, 1), ("weights", 2, 2), ("weights", 2.0, 2),
])
def test_a_class_label_is_the_class_code(schema_dicts, name, actual, code):
    schema = Schema(schema_dicts[name])
    assert schema.parse_label({"id": "p1", "actual": actual}) == ("p1", float(code))
    assert type(schema.parse_label({"actual": actual, "id": "p2"}, "[3].")[1]) is float


@pytest.mark.parametrize("name, actual, shown", [
    ("words", "HAM", "'HAM'"), ("words", "ham ", "'ham '"), ("words", 1, "'1'"), ("words", None, "'null'"),
    ("stars", "1", "'1'"),          # the text "1" is not the class 1
    ("stars", True, "'true'"),      # nor is true (a bool is an int in Python)
    ("stars", False, "'false'"),
    ("stars", 0, "'0'"), ("stars", 4, "'4'"), ("stars", 2.5, "'2.5'"), ("stars", -1.0, "'-1.0'"),
    ("stars", float("nan"), "'NaN'"), ("stars", float("inf"), "'Infinity'"),
    ("stars", [1], "'[1]'"), ("stars", {"class": 1}, "'{\"class\": 1}'"),  # not hashable: still a 4xx
    ("flags", True, "'true'"), ("flags", "true", "'true'"), ("flags", 1, "'1'"),
    ("weights", 1, "'1'"), ("weights", 1.0, "'1.0'"), ("weights", "0.5", "'0.5'"), ("weights", 0.25, "'0.25'"),
])
def test_an_unknown_class_is_refused_naming_the_accepted_ones(schema_dicts, name, actual, shown):
    schema = Schema(schema_dicts[name])
    accepted = ", ".join(map(str, schema_dicts[name]["classes"]))
    _refused(lambda: schema.parse_label({"id": "p", "actual": actual}, "[2]."), "unknown_class",
             f"[2].actual: unknown class {shown}; accepted: {accepted}")


def test_the_accepted_classes_are_listed_in_order():
    schema = Schema({"task": "classification", "features": ANY_FEATURES, "classes": ["b", 10, 2.5, "a"]})
    _refused(lambda: schema.parse_label({"id": "p", "actual": "c"}), "unknown_class",
             "actual: unknown class 'c'; accepted: b, 10, 2.5, a")
    assert [schema.parse_label({"id": "p", "actual": c})[1] for c in ("b", 10, 2.5, "a", 10.0)] == [0, 1, 2, 3, 1]


def test_a_long_unknown_class_is_cut_short(schema_dicts):
    _refused(lambda: Schema(schema_dicts["words"]).parse_label({"id": "p", "actual": "x" * 50}), "unknown_class",
             f"actual: unknown class '{'x' * 40}...'; accepted: eggs, ham, spam")


@pytest.mark.parametrize("name, hint", [
    ("words", "the true class, one of eggs, ham, spam"), ("stars", "the true class, one of 1, 2, 3"),
    ("weights", "the true class, one of 0.5, 1.5, 2"),
    ("change", "the true change"), ("weight", "the true weight"),
    ("price", "the true price in dollars"), ("price_change", "the true price"),
])
def test_a_missing_actual_says_what_it_is(schema_dicts, name, hint):
    schema = Schema(schema_dicts[name])
    _refused(lambda: schema.parse_label({"id": "p"}), "missing_field", f"actual: missing; {hint}")
    _refused(lambda: schema.parse_label({"id": "p"}, "[5]."), "missing_field", f"[5].actual: missing; {hint}")


@pytest.mark.parametrize("name", ["words", "change"])
def test_a_schemas_label_is_checked_as_every_label(schema_dicts, name):
    """Schema.parse_label is parse_label with the schema's actual: the id and the fields are checked alike."""
    schema = Schema(schema_dicts[name])
    _refused(lambda: schema.parse_label({"id": "p", "actual": 1, "class": 2}, "[0]."), "unknown_field",
             "[0].'class': unknown field; accepted fields: id, actual")
    _refused(lambda: schema.parse_label({"id": 5, "actual": 1}, "[1]."), "wrong_type",
             "[1].id: expected the prediction id string that /predict returned, got the number 5")
    _refused(lambda: schema.parse_label({"id": "x" * (MAX_ID_LENGTH + 1), "actual": 1}), "bad_id",
             f"id: not an id that /predict returns (at most {MAX_ID_LENGTH} characters of text, no NUL or "
             "lone surrogate)")
    with pytest.raises(InvalidInput, match=r"^body: expected an object ") as err:
        schema.parse_label([])
    assert err.value.reason == "not_an_object"


# -------------------------------------------------------------------------- numbers as labels

@pytest.mark.parametrize("actual, expected", [(0, 0.0), (-3.5, -3.5), (-10 ** 20, -1e20), (2, 2.0), (1e308, 1e308)])
def test_a_regression_without_sign_constraint_accepts_zero_and_negatives(schema_dicts, actual, expected):
    for name in ("change", "price_change"):
        label = Schema(schema_dicts[name]).parse_label({"id": "p", "actual": actual}, "[0].")
        assert label == ("p", expected) and type(label[1]) is float


@pytest.mark.parametrize("actual, reason, message", [
    (float("nan"), "non_finite", "expected a finite number, got nan"),
    (float("inf"), "non_finite", "expected a finite number, got inf"),
    (float("-inf"), "non_finite", "expected a finite number, got -inf"),
    (10 ** 400, "non_finite", "expected a finite number, got an integer too large for a float"),
    ("-3", "not_a_number", "expected a number, got the string '-3'"),
    (True, "not_a_number", "expected a number, got a boolean"),
    (None, "not_a_number", "expected a number, got null"),
    ([0], "not_a_number", "expected a number, got an array"),
])
def test_a_regression_without_sign_constraint_refuses_what_is_not_a_finite_number(schema_dicts, actual, reason,
                                                                                   message):
    schema = Schema(schema_dicts["change"])
    _refused(lambda: schema.parse_label({"id": "p", "actual": actual}, "[4]."), reason, f"[4].actual: {message}")


@pytest.mark.parametrize("name", ["weight", "price"])
@pytest.mark.parametrize("actual, shown", [(0, "0"), (-0.0, "-0.0"), (-2, "-2"), (-1e-300, "-1e-300")])
def test_a_regression_with_positive_targets_refuses_zero_and_negatives(schema_dicts, name, actual, shown):
    schema = Schema(schema_dicts[name])
    _refused(lambda: schema.parse_label({"id": "p", "actual": actual}), "out_of_range",
             f"actual: expected a positive number, got {shown}")
    assert schema.parse_label({"id": "p", "actual": 5e-324}) == ("p", 5e-324)
    _refused(lambda: schema.parse_label({"id": "p", "actual": float("nan")}), "non_finite",
             "actual: expected a finite number, got nan")

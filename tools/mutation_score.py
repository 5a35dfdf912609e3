"""Mutation score per module from the results `mutmut run` left in mutants/ (`make mutate` runs both).

    python -m tools.mutation_score [--min 90] [--survivors]

A mutant counts as killed when a test failed on it (or it made a test time out). The score of a
module is killed / (mutants - listed equivalent mutants). Survivors and mutants no selected test
runs ("no tests") count against it. Equivalent mutants, which no test can kill because they do not
change behaviour, are listed with a reason each in tools/equivalent_mutants.txt; an entry whose
mutant no longer makes the recorded change (the source moved on and mutmut renumbered) is reported
as stale and not excluded, and a listed mutant that a test killed is scored as killed.

sequential.py (the CUSUMs of issue #11) is scored whole, as drift.py and windows.py are.

model.py is scored for its request validation only (Schema, parse_label, parse_positive_number,
parse_finite_number, describe_json, json_text, _quote, _storable, _item, InvalidInput): its loading
and fast prediction path are tested by tests/test_model.py, which trains models and is too slow to
run once per mutant; their mutants are shown, not scored.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENTS = Path(__file__).resolve().parent / "equivalent_mutants.txt"

# (label, source file, which functions: None = all; else mangled-name prefixes)
# parse_finite_number and json_text came with #12 (targets of any sign, classes named in messages):
# request validation as much as the rest, so scored with it.
VALIDATION = ("xǁSchemaǁ", "x_parse_positive_number__", "x_parse_finite_number__", "x_parse_label__",
              "x__storable__", "x__item__", "x_describe_json__", "x_json_text__", "x__quote__", "xǁInvalidInputǁ")
GROUPS = [
    ("drift.py", "monitoring/drift.py", None),
    ("windows.py", "monitoring/windows.py", None),
    ("sequential.py", "monitoring/sequential.py", None),
    ("model.py validation", "monitoring/model.py", VALIDATION),
]
NOT_SCORED = [("model.py loading and fast path (not scored)", "monitoring/model.py", VALIDATION)]

KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived"}
NO_TESTS = {5: "no tests", 33: "no tests"}


@dataclass
class Equivalent:
    name: str
    changes: str
    why: str


@dataclass
class Tally:
    total: int = 0
    killed: int = 0
    timeout: int = 0
    equivalent: int = 0
    survivors: list[str] = field(default_factory=list)
    no_tests: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # not checked, suspicious, segfault
    killed_equivalents: list[str] = field(default_factory=list)  # listed as equivalent, yet a test failed

    @property
    def scored(self) -> int:
        return self.total - self.equivalent

    @property
    def score(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.scored if self.scored else 100.0


def read_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """Blocks of three lines: the mutant's name, `changes: <its changed line>`, `why: <reason>`."""
    entries, block = [], []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        block.append(line)
        if len(block) == 3:
            name, changes, why = block
            if not changes.startswith("changes:") or not why.startswith("why:"):
                raise SystemExit(f"{path}: malformed entry for {name}")
            entries.append(Equivalent(name, changes[len("changes:"):].strip(), why[len("why:"):].strip()))
            block = []
    if block:
        raise SystemExit(f"{path}: unfinished entry {block}")
    return entries


_FUNCTIONS: dict[str, dict[str, list[str]]] = {}


def _functions(source_path: str) -> dict[str, list[str]]:
    """Every generated function of a mutated file by name: its lines, stripped, the name cut out."""
    if source_path not in _FUNCTIONS:
        found: dict[str, list[str]] = {}
        name, indent, body = None, 0, []
        for line in (MUTANTS / source_path).read_text(encoding="utf-8").splitlines():
            stripped = line.lstrip()
            depth = len(line) - len(stripped)
            if name is not None and stripped and depth <= indent and not stripped.startswith(")"):
                found[name], name = body, None
            if name is None and stripped.startswith("def ") and "__mutmut_" in stripped:
                name, indent = stripped[4:].split("(", 1)[0], depth
                body = ["def " + stripped[4 + len(name):]]  # the signature, without the generated name
            elif name is not None and stripped:
                body.append(stripped)
        if name is not None:
            found[name] = body
        _FUNCTIONS[source_path] = found
    return _FUNCTIONS[source_path]


def changed_lines(source_path: str, mutant: str) -> str | None:
    """The lines the mutant has that the original function has not, joined by ' / '."""
    functions = _functions(source_path)
    local = mutant.split(".")[-1]
    orig = local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    if local not in functions or orig not in functions:
        return None
    added = [d[2:] for d in difflib.ndiff(functions[orig], functions[local]) if d.startswith("+ ")]
    return " / ".join(added)


def tally(source_path: str, prefixes, exclude: bool, equivalents: dict[str, Equivalent]) -> Tally:
    meta = json.loads((MUTANTS / (source_path + ".meta")).read_text(encoding="utf-8"))["exit_code_by_key"]
    t = Tally()
    for name, code in sorted(meta.items(), key=lambda kv: _natural(kv[0])):
        local = name.split(".")[-1]
        inside = prefixes is None or local.startswith(prefixes)
        if inside == exclude:
            continue
        t.total += 1
        if name in equivalents and code in KILLED:
            t.killed_equivalents.append(name)  # not equivalent after all: scored as the kill it is
        if name in equivalents and code not in KILLED:
            t.equivalent += 1
        elif code in KILLED:
            if KILLED[code] == "killed":
                t.killed += 1
            else:
                t.timeout += 1
        elif code in SURVIVED:
            t.survivors.append(name)
        elif code in NO_TESTS:
            t.no_tests.append(name)
        else:
            t.other.append(name)
    return t


def _natural(name: str):
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else -1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min", type=float, default=None, help="exit 1 when a scored module is below this %%")
    parser.add_argument("--survivors", action="store_true", help="list every survivor and its changed line")
    args = parser.parse_args(argv)
    if not (MUTANTS / "monitoring").is_dir():
        print("no mutants/ results: run `make mutate` (or `mutmut run`) first", file=sys.stderr)
        return 2

    equivalents = {}
    stale = []
    sources = {label: path for label, path, _ in GROUPS}
    for e in read_equivalents():
        module = "monitoring/" + e.name.split(".")[1] + ".py"
        actual = changed_lines(module, e.name) if (MUTANTS / module).exists() else None
        if actual is None or " ".join(actual.split()) != " ".join(e.changes.split()):
            stale.append((e, actual))
        else:
            equivalents[e.name] = e

    rows = []
    failed = False
    for label, path, prefixes in GROUPS:
        t = tally(path, prefixes, exclude=False, equivalents=equivalents)
        rows.append((label, t))
        if args.min is not None and t.score < args.min:
            failed = True
    print(f"{'module':<26} {'killed':>7} {'timeout':>7} {'survived':>8} {'no tests':>8} {'equiv.':>6} "
          f"{'total':>6}  score")
    for label, t in rows:
        print(f"{label:<26} {t.killed:>7} {t.timeout:>7} {len(t.survivors):>8} {len(t.no_tests):>8} "
              f"{t.equivalent:>6} {t.total:>6}  {t.killed + t.timeout}/{t.scored} = {t.score:.1f}%")
    for label, path, prefixes in NOT_SCORED:
        t = tally(path, prefixes, exclude=True, equivalents=equivalents)
        print(f"{label}: {t.total} mutants, {t.killed + t.timeout} killed, {len(t.no_tests)} not run by the "
              "selected tests")
    print(f"\nequivalent mutants excluded: {len(equivalents)} (listed in {EQUIVALENTS.relative_to(ROOT)})")
    for label, t in rows:
        for name in t.killed_equivalents:
            print(f"listed as equivalent but killed (scored as killed; remove it from the list): {name}")
    for e, actual in stale:
        print(f"STALE equivalent entry, not excluded: {e.name}\n    listed: {e.changes}\n    now:    {actual}")
    if args.survivors:
        for label, t in rows:
            for status, names in (("survived", t.survivors), ("no tests", t.no_tests), ("not killed", t.other)):
                for name in names:
                    print(f"{status}: {name}: {changed_lines(sources[label], name)}")
    if stale:
        failed = failed or args.min is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

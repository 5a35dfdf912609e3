"""The dashboard and alert rules checked against Grafana's own schema types.

Grafana ignores what it does not know: a misspelt `lineWidht`, or `drawStyle: "lines"`, raises no
error; the panel just looks wrong. grafana-foundation-sdk (Grafana Labs) has Python models generated
from Grafana 12's schemas: dashboard v1, each panel plugin's options and field config, the Prometheus
and expression queries, alert rules. Loading a file into them and writing it back drops every key
they do not model, so each check below

  - reports each key of the file that does not survive that round trip, by its JSON path;
  - reports each value that is not one of the values an enum-typed field allows;
  - reports each part the SDK keeps as plain JSON (the schema types it `any`, or the SDK has no model
    for it), since nothing in there is checked, unless UNTYPED lists it with its reason.
A key Grafana reads from a provisioning file but the SDK does not model is listed in NOT_IN_SDK, with
its reason. Both lists must stay in use: an entry nothing matches any more fails a test.

Override properties (`{"id": "custom.lineWidth", "value": 0}`) are `any` in the schema; each is
checked as the field default it overrides, on a panel of the same type.
"""
from __future__ import annotations

import copy
import enum
import functools
import json
import re
import typing
import warnings

import pytest

from tests.observability import ROOT, load_yaml
from tools import gen_alerts, gen_dashboard

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import alerting

with warnings.catch_warnings():  # "Prefer using dashboardv2.Dashboard": v1 is what file provisioning reads
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.models import dashboard as v1

# Without the registered plugins, panel options, field config `custom` and targets stay plain JSON.
register_default_plugins()

UNCHECKED = "kept as plain JSON: not checked"
# Parts of the files the SDK keeps as plain JSON, [*] for any index, each with why it may be so.
UNTYPED = {
    "$.panels[*].fieldConfig.overrides[*].properties[*].value":
        "`value: any` in the schema; checked as the field default it overrides (_override_defaults)",
    "$.panels[*].transformations[*].options":
        "`options: any` in the schema: each transformation (merge, organize) has its own options",
    "$.templating.list[*].query":
        "the Prometheus variable query {qryType, query, refId}: the datasource's own, no SDK model",
}
# Keys Grafana knows that the SDK drops, with why.
NOT_IN_SDK = {
    "policies.yaml:policies[*].orgId":
        "a provisioning file names the organisation; the HTTP API's policy tree (the SDK's) takes it from the request",
}


def _normalise(name: str) -> str:
    """A JSON key or a model attribute, comparable: `folderUID` and `folder_uid`, `id` and `id_val`."""
    return name.removesuffix("_val").replace("_", "").lower()


@functools.cache
def _fields(model: type) -> dict[str, typing.Any]:
    """The type of each JSON key of a model class, from its annotations."""
    return {_normalise(attr): hint for attr, hint in typing.get_type_hints(model).items()}


def _options(hint) -> list:
    """The alternatives of a type, without None: Optional[X] -> [X]."""
    if typing.get_origin(hint) is typing.Union:
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _walk(value, hint, path: str):
    """(path, problem) for values outside an enum's members and for JSON the SDK left untyped."""
    if value is None:
        return
    if isinstance(value, cogruntime.UnknownDataquery):
        yield path, "a query of a datasource type the SDK has no model for: not checked"
        return
    if hasattr(value, "to_json"):  # a model: its JSON keys, typed by its annotations
        fields = _fields(type(value))
        for key, item in value.to_json().items():
            yield from _walk(item, fields[_normalise(key)], f"{path}.{key}")
        return
    options = _options(hint)
    if isinstance(value, dict):
        maps = [a for a in options if typing.get_origin(a) is dict and typing.get_args(a)[1] not in (object, typing.Any)]
        if not maps:  # `object`, `any`, or a model the SDK did not load this dict into
            yield path, UNCHECKED
            return
        for key, item in value.items():
            yield from _walk(item, typing.get_args(maps[0])[1], f"{path}.{key}")
    elif isinstance(value, list):
        items = [typing.get_args(a)[0] for a in options if typing.get_origin(a) is list]
        for i, item in enumerate(value):
            yield from _walk(item, items[0] if items else object, f"{path}[{i}]")
    elif all(typing.get_origin(a) is typing.Literal or (isinstance(a, type) and issubclass(a, enum.Enum))
             for a in options):
        allowed = [x for a in options for x in (typing.get_args(a) if typing.get_origin(a) is typing.Literal
                                                 else [m.value for m in a])]
        if value not in allowed:
            yield path, f"{value!r} is none of {allowed}"


def _dropped(original, back, path: str):
    """(path, problem) for each key of `original` missing from `back`, recursively."""
    if isinstance(original, dict) and isinstance(back, dict):
        for key, value in original.items():
            if key not in back:
                yield f"{path}.{key}", "null: the schema has no null here (leave the key out)" if value is None \
                    else "unknown to the schema: dropped"
            else:
                yield from _dropped(value, back[key], f"{path}.{key}")
    elif isinstance(original, list) and isinstance(back, list) and len(original) == len(back):
        for i, (value, again) in enumerate(zip(original, back)):
            yield from _dropped(value, again, f"{path}[{i}]")
    elif isinstance(original, (dict, list)) or isinstance(back, (dict, list)):
        if original != back:
            yield path, f"changed in the round trip: {original!r} -> {back!r}"


def _matches(path: str, patterns) -> bool:
    """`path`, its indices read as [*], is one of `patterns` or inside one."""
    path = re.sub(r"\[\d+\]", "[*]", path)
    return any(path == p or path.startswith((p + ".", p + "[")) for p in patterns)


def _problems(document: dict, load, root: str = "$") -> list[str]:
    """Everything the SDK's model does not accept in `document`, as `json.path: problem`."""
    try:
        model = load(document)
    except (KeyError, TypeError, AttributeError) as error:  # e.g. a union's unknown "type" discriminator
        return [f"{root}: the SDK cannot load it ({type(error).__name__}: {error})"]
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    found = [(p, why) for p, why in _dropped(document, back, root) if not _matches(p, NOT_IN_SDK)]
    found += [(p, why) for p, why in _walk(model, type(model), root)
              if not (why == UNCHECKED and _matches(p, UNTYPED))]
    return [f"{p}: {why}" for p, why in found]


# ----------------------------------------------------------------------------------- dashboard

def _panels(panels: list, path: str = "$"):
    """(path, panel) for each panel, with those inside collapsed rows."""
    for i, panel in enumerate(panels or []):
        yield f"{path}.panels[{i}]", panel
        yield from _panels(panel.get("panels") if isinstance(panel, dict) else getattr(panel, "panels", None),
                           f"{path}.panels[{i}]")


def _load_dashboard(document: dict) -> v1.Dashboard:
    dashboard = v1.Dashboard.from_json(document)
    for _, panel in _panels(dashboard.panels):
        # Panel.from_json leaves transformations and links as dicts, though the SDK models them: load them
        if isinstance(panel, v1.Panel) and panel.transformations:
            panel.transformations = [v1.DataTransformerConfig.from_json(t) for t in panel.transformations]
        # ... and its links (the drift report's), which the schema types as DashboardLink
        if isinstance(panel, v1.Panel) and panel.links:
            panel.links = [v1.DashboardLink.from_json(link) for link in panel.links]
    return dashboard


def _override_defaults(dashboard: dict):
    """(path, panel): each override property as the default it overrides, on a panel of the same type.
    {"id": "custom.lineStyle", "value": {...}} -> {"fieldConfig": {"defaults": {"custom": {"lineStyle": {...}}}}}"""
    for path, panel in _panels(dashboard["panels"]):
        for j, override in enumerate(panel.get("fieldConfig", {}).get("overrides", [])):
            for k, prop in enumerate(override["properties"]):
                defaults = node = {}
                *parents, leaf = prop["id"].split(".")
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = prop["value"]
                yield (f"{path}.fieldConfig.overrides[{j}].properties[{k}]",
                       {"type": panel["type"], "fieldConfig": {"defaults": defaults, "overrides": []}})


def dashboard_problems(dashboard: dict) -> list[str]:
    found = _problems(dashboard, _load_dashboard)
    for path, panel in _override_defaults(dashboard):
        found += [problem.replace(f"{path}.fieldConfig.defaults.", f"{path} as ")
                  for problem in _problems(panel, v1.Panel.from_json, path)]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(gen_dashboard.DASHBOARD_PATH.read_text())


def test_every_key_and_value_of_the_dashboard_is_in_grafanas_schema(dashboard):
    assert dashboard_problems(dashboard) == []


def test_each_untyped_part_allowed_is_still_in_the_dashboard(dashboard):
    """An UNTYPED entry the dashboard no longer needs goes, so that the list stays as short as it can."""
    model = _load_dashboard(dashboard)
    untyped = [p for p, why in _walk(model, type(model), "$") if why == UNCHECKED]
    assert [p for p in UNTYPED if not any(_matches(u, [p]) for u in untyped)] == []


def _index(dashboard: dict, panel_type: str, has=lambda panel: True) -> int:
    return next(i for i, p in enumerate(dashboard["panels"]) if p["type"] == panel_type and has(p))


def _rename(node: dict, old: str, new: str) -> None:
    node[new] = node.pop(old)


# A misspelling Grafana would ignore, wherever it is: (edit of a copy of the dashboard, the problem).
def _misspellings(d: dict):
    ts = _index(d, "timeseries", has=lambda p: p["fieldConfig"]["overrides"])
    table, stat = _index(d, "table"), _index(d, "stat", has=lambda p: p["fieldConfig"]["defaults"]["mappings"])
    added = len(d["panels"][ts]["fieldConfig"]["overrides"][0]["properties"])  # index of a property appended
    yield lambda d: _rename(d, "graphTooltip", "graphTooltips"), "$.graphTooltips: unknown"
    yield lambda d: _rename(d["panels"][ts], "description", "descripton"), f"$.panels[{ts}].descripton: unknown"
    yield (lambda d: _rename(d["panels"][ts]["fieldConfig"]["defaults"]["custom"], "lineWidth", "lineWidht"),
           f"$.panels[{ts}].fieldConfig.defaults.custom.lineWidht: unknown")
    yield (lambda d: _rename(d["panels"][ts]["fieldConfig"]["defaults"], "thresholds", "treshold"),
           f"$.panels[{ts}].fieldConfig.defaults.treshold: unknown")
    yield (lambda d: _rename(d["panels"][ts]["options"]["legend"], "showLegend", "showLegnd"),
           f"$.panels[{ts}].options.legend.showLegnd: unknown")
    yield (lambda d: _rename(d["panels"][ts]["targets"][0], "legendFormat", "legendFromat"),
           f"$.panels[{ts}].targets[0].legendFromat: unknown")
    yield (lambda d: d["panels"][ts]["fieldConfig"]["overrides"][0]["properties"].append(
               {"id": "custom.lineWidht", "value": 1}),
           f"$.panels[{ts}].fieldConfig.overrides[0].properties[{added}] as custom.lineWidht: unknown")
    yield (lambda d: _rename(d["panels"][table]["transformations"][0], "options", "option"),
           f"$.panels[{table}].transformations[0].option: unknown")
    yield (lambda d: _rename(d["templating"]["list"][0], "includeAll", "inclueAll"),
           "$.templating.list[0].inclueAll: unknown")
    yield (lambda d: d["panels"][ts]["fieldConfig"]["defaults"]["custom"].update(drawStyle="lines"),
           f"$.panels[{ts}].fieldConfig.defaults.custom.drawStyle: 'lines' is none of")
    yield (lambda d: d["panels"][ts]["options"]["tooltip"].update(mode="mutli"),
           f"$.panels[{ts}].options.tooltip.mode: 'mutli' is none of")
    # a stat panel has no `custom` field config: Grafana would ignore it, the SDK cannot check it
    yield (lambda d: d["panels"][stat]["fieldConfig"]["defaults"].update(custom={"lineWidth": 1}),
           f"$.panels[{stat}].fieldConfig.defaults.custom: {UNCHECKED}")
    yield (lambda d: d["panels"][stat]["fieldConfig"]["defaults"]["mappings"][0].update(type="values"),
           "$: the SDK cannot load it (KeyError: 'values')")


def test_a_misspelt_key_or_value_anywhere_in_the_dashboard_is_reported_with_its_path(dashboard):
    assert dashboard_problems(dashboard) == []
    for edit, expected in _misspellings(dashboard):
        broken = copy.deepcopy(dashboard)
        edit(broken)
        problems = dashboard_problems(broken)
        assert len(problems) == 1 and problems[0].startswith(expected), (expected, problems)


# ----------------------------------------------------------------------------------- alert rules
# The SDK models the HTTP API's alert rule, which is a provisioning file's rule (uid, title,
# condition, data, for, annotations, labels...) plus folderUID, ruleGroup and orgID: those three
# come from the rule group in a provisioning file, so each rule is checked on its own. The group
# (orgId, name, folder, interval) has no model in the file's shape; tests/test_configs.py checks it.
# Contact points are not checked here: their `settings` (the Discord URL, title, message) are `Json`
# in the SDK, which leaves only name, type and uid to check.

def _rules():
    for path in sorted((ROOT / "grafana-provisioning" / "alerting").glob("*.y*ml")):
        for g, group in enumerate(load_yaml(path).get("groups", [])):
            for r, rule in enumerate(group["rules"]):
                yield f"{path.name}:groups[{g}].rules[{r}]", rule


def test_the_rules_checked_are_the_generated_ones():
    titles = [rule["title"] for _, rule in _rules()]
    assert titles and sorted(titles) == sorted(a.name for a in gen_alerts.ALERTS)


@pytest.mark.parametrize("root, rule", list(_rules()), ids=[rule["title"] for _, rule in _rules()])
def test_every_key_and_value_of_an_alert_rule_is_in_grafanas_schema(root, rule):
    assert _problems(rule, alerting.Rule.from_json, root) == []


def test_a_misspelt_key_or_value_in_an_alert_rule_is_reported_with_its_path():
    root, rule = next(_rules())
    threshold = next(i for i, d in enumerate(rule["data"]) if d["datasourceUid"] == "__expr__")
    cases = [
        (lambda r: _rename(r, "noDataState", "noDataStat"), f"{root}.noDataStat: unknown"),
        (lambda r: r.update(execErrState="Erorr"), f"{root}.execErrState: 'Erorr' is none of"),
        (lambda r: _rename(r["data"][0]["model"], "instant", "instnat"), f"{root}.data[0].model.instnat: unknown"),
        (lambda r: _rename(r["data"][threshold]["model"], "expression", "expresion"),
         f"{root}.data[{threshold}].model.expresion: unknown"),
    ]
    for edit, expected in cases:
        broken = copy.deepcopy(rule)
        edit(broken)
        problems = _problems(broken, alerting.Rule.from_json, root)
        assert len(problems) == 1 and problems[0].startswith(expected), (expected, problems)


# ----------------------------------------------------------------------------------- policy tree
# A provisioning file's policy is the API's policy tree (the SDK's NotificationPolicy) plus orgId.

def _policies():
    for path in sorted((ROOT / "grafana-provisioning" / "alerting").glob("*.y*ml")):
        for p, policy in enumerate(load_yaml(path).get("policies", [])):
            yield f"{path.name}:policies[{p}]", policy


def test_the_notification_policy_tree_is_in_grafanas_schema():
    (root, policy), = _policies()
    assert _problems(policy, alerting.NotificationPolicy.from_json, root) == []
    # orgId, the one key NOT_IN_SDK lets through, is there and still unknown to the SDK
    back = json.loads(json.dumps(alerting.NotificationPolicy.from_json(policy), cls=JSONEncoder))
    assert "orgId" in policy and "orgId" not in back
    broken = copy.deepcopy(policy)
    _rename(broken["routes"][0], "repeat_interval", "repeatInterval")  # the API's keys are snake_case
    assert _problems(broken, alerting.NotificationPolicy.from_json, root) == [
        f"{root}.routes[0].repeatInterval: unknown to the schema: dropped"]

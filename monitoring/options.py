"""Command-line options declared once: a dataclass field carries its default, its help, its flag and
its environment variable, and the parser, the help text and the config object all come from it.

    @dataclass
    class Config:
        port: int = option(5000, "port to listen on")       # --port, env MONITOR_PORT
        model_path: Path = option(Path("m.joblib"), "...", flag="--model")

    config = parse_config(Config, "MONITOR_", argv, description="...")

Standard library only, so that `--help` never needs the model's libraries.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any, help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           env: bool = True, metavar: str | None = None, shown: str | None = None, cli: bool = True) -> Any:
    """A config field that is also a command-line option and (unless env=False) an environment variable.

    `parse` turns the text of the flag or variable into the value; by default the type of `default`
    (str, int, float, Path, bool). A bool option whose default is True becomes `--no-<name>`.
    `shown`: how help and the README write the default, when its value does not say it well.
    `cli=False`: an environment variable only, for secrets (a command line is visible to `ps`)."""
    if parse is None:
        parse = _parse_bool if isinstance(default, bool) else type(default) if default is not None else str
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "parse": parse,
                                                        "env": env, "metavar": metavar, "shown": shown,
                                                        "cli": cli})


def optional_path(text: str) -> Path | None:
    """A path, or None for the empty string ('' turns a file off)."""
    return Path(text) if text else None


def scale_list(text: str) -> tuple[int, ...]:
    """Positive whole numbers, comma-separated ('50,100,250'); '' for none."""
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"expected whole numbers separated by commas, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"expected positive numbers, got {text!r}")
    return values


def optional_text(text: str) -> str | None:
    return text or None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def env_name(f: dataclasses.Field, prefix: str) -> str | None:
    """The environment variable of a field: the prefix and the flag's name, e.g. MONITOR_MODEL."""
    if not f.metadata.get("env"):
        return None
    return prefix + _flag(f).lstrip("-").replace("-", "_").upper()


def declared(config_type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config_type) if "help" in f.metadata]


def _shown(value: Any) -> str:
    if value is None or value == "" or value == ():
        return "unset"
    return str(value)


def add_options(parser: argparse.ArgumentParser, config_type, env_prefix: str,
                environ: dict | None = None) -> None:
    """One argument per declared field of `config_type`, its default taken from the environment
    when the variable is set. A variable that does not parse stops the parser with its name."""
    environ = os.environ if environ is None else environ
    for f in declared(config_type):
        parse, variable = f.metadata["parse"], env_name(f, env_prefix)
        default = f.default
        if variable and environ.get(variable, "") != "":
            try:
                default = parse(environ[variable])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {variable}={environ[variable]!r}: {exc}")
        if not f.metadata["cli"]:
            parser.set_defaults(**{f.name: default})
            continue
        if isinstance(f.default, bool):  # a switch: the flag flips the default
            flag = ("--no-" + _flag(f).lstrip("-")) if f.default else _flag(f)
            same = f" (env {variable}={'0' if f.default else '1'} does the same)" if variable else ""
            parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                default=default, help=f.metadata["help"] + same)
            continue
        where = f"env {variable}; " if variable else ""
        metavar = f.metadata["metavar"] or _flag(f).lstrip("-").replace("-", "_").upper()
        parser.add_argument(_flag(f), dest=f.name, type=parse, default=default, metavar=metavar,
                            help=f"{f.metadata['help']} ({where}default: {f.metadata['shown'] or _shown(f.default)})")


def config_from(args: argparse.Namespace, config_type):
    """The config object from parsed arguments: declared fields from their options, the rest default."""
    return config_type(**{f.name: getattr(args, f.name) for f in declared(config_type)})


def markdown_table(config_type, env_prefix: str, root: Path | None = None) -> str:
    """The options as the README's table (option, env, default, meaning); paths under `root` shown
    relative to it. A test keeps the README's copy equal to this."""
    lines = ["| option | env | default | |", "|---|---|---|---|"]
    for f in declared(config_type):
        default = f.default
        if isinstance(default, Path) and root is not None and default.is_relative_to(root):
            default = default.relative_to(root)
        if not f.metadata["cli"]:
            flag, shown = None, f.metadata["shown"] or _shown(default)
        elif isinstance(default, bool):
            flag, shown = ("--no-" + _flag(f).lstrip("-")) if default else _flag(f), "on" if default else "off"
        else:
            flag, shown = _flag(f), f.metadata["shown"] or _shown(default)
        shown = shown if shown == "unset" else f"`{shown}`"
        flag_cell = f"`{flag}`" if flag else "(environment only)"
        lines.append(f"| {flag_cell} | `{env_name(f, env_prefix)}` | {shown} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines)

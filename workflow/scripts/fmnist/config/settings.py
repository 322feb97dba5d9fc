"""The training settings, declared once in workflow/schemas/config.schema.yaml (train:).

Everything else follows from those entries: train.py's options and --help
(:func:`add_options`), the training rule's command line (:func:`command_line`), the
parameters run.json records (:func:`params_from_args`), the checks of a sweep
(:func:`check_sweep`) and config/README.md's table (:func:`markdown_table`). Adding a
hyperparameter means one schema entry, its commented default in config/config.yaml and
the code that uses it. Imports no torch.
"""

from __future__ import annotations

import argparse
import math
import sys

import jsonschema

from fmnist.schemas import load_schema

CONFIG_SCHEMA = load_schema("config")
TRAIN_SCHEMA = CONFIG_SCHEMA["properties"]["train"]["properties"]
TRAIN_KEYS = list(TRAIN_SCHEMA)
ADDED_LATER = {"stages_per_process": 1}
"""Settings added after run.json's format 2, each with the value every run recorded before
it had (one stage per process, 2026-12-03): a record without them is read with it."""


class SettingError(ValueError):
    """A setting with a value the schema or a cross-key rule refuses; names the key."""


def defaults(node: dict = CONFIG_SCHEMA) -> dict:
    """The defaults the schema declares under ``node``, nested as the config nests them."""
    result = {}
    for key, child in node.get("properties", {}).items():
        if "properties" in child and child.get("type") == "object":
            result[key] = defaults(child)
        elif "default" in child:
            result[key] = child["default"]
    return result


def integer_keys(node: dict = CONFIG_SCHEMA) -> set[str]:
    """Names of every setting the schema types as an integer (JSON Schema also takes 2.0)."""
    keys = set()
    for key, child in node.get("properties", {}).items():
        if child.get("type") == "integer" or _integer_items(child):
            keys.add(key)
        for branch in [child, *child.get("oneOf", [])]:
            keys |= integer_keys(branch)
    return keys


def _integer_items(entry: dict) -> bool:
    """Whether a setting is a list of integers (train.hidden_sizes, train.stage_split)."""
    return any(
        branch.get("type") == "array" and branch.get("items", {}).get("type") == "integer"
        for branch in entry.get("oneOf", [entry])
    )


def check_number(value, integer: bool, where: str) -> None:
    """What JSON Schema lets through: NaN and infinity, and integers written as 2.0 (YAML
    and JSON Schema take 2.0 for an integer; train.py's options do not)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}: {value} is not a finite number")
    if isinstance(value, float) and integer:
        raise SettingError(f"{where}: {value} must be written as an integer")


def check_value(key: str, value, where: str = "train") -> None:
    """Raise SettingError if ``value`` is not a valid value of training setting ``key``."""
    check_number(value, TRAIN_SCHEMA[key].get("type") == "integer", f"{where}.{key}")
    if isinstance(value, list):
        for item in value:
            check_number(item, _integer_items(TRAIN_SCHEMA[key]), f"{where}.{key}")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(TRAIN_SCHEMA[key]).iter_errors(value)
    )
    if error is not None:
        raise SettingError(f"{where}.{key}: {error.message}")


# ------------------------------------------------------------------- command line


def option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _is_list(entry: dict) -> bool:
    return any(branch.get("type") == "array" for branch in entry.get("oneOf", [entry]))


def _list_word(entry: dict) -> str | None:
    """The word a list setting takes instead of a list (devices: auto), if any."""
    return next((b["const"] for b in entry.get("oneOf", []) if "const" in b), None)


def _item_parser(key: str, entry: dict):
    """argparse type= for one item of a list setting (integers parsed, words kept)."""
    array = next(b for b in entry.get("oneOf", [entry]) if b.get("type") == "array")
    if array["items"].get("type") != "integer":
        return str
    word = _list_word(entry)

    def convert(text: str):
        if text == word:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"train.{key}: {text!r} is not an integer") from None

    convert.__name__ = "integer"
    return convert


def _scalar_parser(key: str, entry: dict):
    """argparse type= for one scalar setting: parse the text, then check it against the schema."""
    parse = {"integer": int, "number": float}.get(entry.get("type"), str)

    def convert(text: str):
        try:
            value = parse(text)
            check_value(key, value)
        except (ValueError, SettingError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    convert.__name__ = entry.get("type", "value")  # argparse names it in "invalid ..." errors
    return convert


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per training setting, with the schema's default and description."""
    group = parser.add_argument_group("training settings (config key train.*)")
    for key, entry in TRAIN_SCHEMA.items():
        default = entry["default"]
        text = f"{entry.get('description', '')} (default: {default})"
        if entry.get("type") == "boolean":
            kwargs = {"action": argparse.BooleanOptionalAction}
        elif _is_list(entry):
            kwargs = {"nargs": "+", "type": _item_parser(key, entry)}  # checked as a whole
            default = [default] if isinstance(default, str) else default
        elif "enum" in entry:
            kwargs = {"choices": entry["enum"]}
        else:
            kwargs = {"type": _scalar_parser(key, entry)}
        group.add_argument(option(key), default=default, help=text, **kwargs)


def params_from_args(args: argparse.Namespace) -> dict:
    """The training settings of parsed options, as the config writes them, each value
    checked (the rules between settings: fmnist.config.checks.check_run_params)."""
    params = {}
    for key, entry in TRAIN_SCHEMA.items():
        value = getattr(args, key)
        if _is_list(entry):
            if len(value) == 1 and value[0] == _list_word(entry):
                value = value[0]  # the list option's spelling of the config's word
            if _integer_items(entry):  # devices: resolve_devices names what is wrong
                check_value(key, value)
        params[key] = value
    return params


def command_line(params: dict) -> list[str]:
    """train.py's options for ``params`` (every setting, in schema order)."""
    words = []
    for key, entry in TRAIN_SCHEMA.items():
        value = params[key]
        if entry.get("type") == "boolean":
            words.append(option(key) if value else "--no-" + option(key)[2:])
        else:
            values = value if isinstance(value, list) else [value]
            words += [option(key), *(repr(v) if isinstance(v, float) else str(v) for v in values)]
    return words


# ------------------------------------------------------------------ documentation


def markdown_table() -> str:
    """config/README.md's table of the training settings."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, entry in TRAIN_SCHEMA.items():
        default = entry["default"]
        shown = str(default).lower() if isinstance(default, bool) else default
        rows.append(f"| `train.{key}` | `{shown}` | {entry.get('description', '')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())

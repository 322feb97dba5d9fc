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

from .idx import IMAGE_SIDE, NUM_CLASSES
from .schemas import load_schema

CONFIG_SCHEMA = load_schema("config")
TRAIN_SCHEMA = CONFIG_SCHEMA["properties"]["train"]["properties"]
TRAIN_KEYS = list(TRAIN_SCHEMA)


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
        if child.get("type") == "integer":
            keys.add(key)
        for branch in [child, *child.get("oneOf", [])]:
            keys |= integer_keys(branch)
    return keys


def check_value(key: str, value, where: str = "train") -> None:
    """Raise SettingError if ``value`` is not a valid value of training setting ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}.{key}: {value} is not a finite number")
    if isinstance(value, float) and TRAIN_SCHEMA[key].get("type") == "integer":
        raise SettingError(f"{where}.{key}: {value} must be written as an integer")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(TRAIN_SCHEMA[key]).iter_errors(value)
    )
    if error is not None:
        raise SettingError(f"{where}.{key}: {error.message}")


def check_run_params(params: dict) -> None:
    """The rules between settings that no single schema entry can state."""
    if params["microbatches"] > params["batch_size"]:
        raise SettingError(
            f"train.microbatches ({params['microbatches']}) exceeds "
            f"train.batch_size ({params['batch_size']})"
        )


def working_memory_mb(params: dict) -> float:
    """A lower bound of what training a run holds beyond the interpreter and the data:
    parameters with their gradient and Adam's two moments (x4, float32), and one batch's
    activations and their gradients (x4). The step's own buffers and torch itself add more."""
    hidden, batch = params["hidden_size"], params["batch_size"]
    weights = (IMAGE_SIDE * IMAGE_SIDE + 1) * hidden + (hidden + 1) * NUM_CLASSES
    activations = batch * (IMAGE_SIDE * IMAGE_SIDE + 2 * hidden + 2 * NUM_CLASSES)
    return 4 * 4 * (weights + activations) / 2**20


def check_memory(params: dict, mem_mb: int, run: str) -> None:
    """Refuse, before any job, a run that cannot fit in the memory its job asks for."""
    needed = working_memory_mb(params)
    if needed > mem_mb:
        raise SettingError(
            f"run {run} needs at least {needed:,.0f} MB for its weights, optimizer state and "
            f"one batch (train.hidden_size {params['hidden_size']}, train.batch_size "
            f"{params['batch_size']}), more than resources.train_model_parallel.mem_mb "
            f"({mem_mb}); lower them or raise mem_mb"
        )


def check_sweep(sweep: dict) -> None:
    """Every swept key is a training setting and every value a valid value of it."""
    for key, values in sweep.items():
        if key not in TRAIN_SCHEMA:
            raise SettingError(
                f"sweep.{key}: not a training setting (one of {', '.join(TRAIN_KEYS)})"
            )
        for i, value in enumerate(values):
            check_value(key, value, where=f"sweep.{key}[{i}] -> train")


# ------------------------------------------------------------------- command line


def option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _is_list(entry: dict) -> bool:
    return any(branch.get("type") == "array" for branch in entry.get("oneOf", [entry]))


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
            kwargs = {"nargs": "+"}  # checked as a whole in params_from_args
            default = [default] if isinstance(default, str) else default
        elif "enum" in entry:
            kwargs = {"choices": entry["enum"]}
        else:
            kwargs = {"type": _scalar_parser(key, entry)}
        group.add_argument(option(key), default=default, help=text, **kwargs)


def params_from_args(args: argparse.Namespace) -> dict:
    """The training settings of parsed options, as the config writes them; checked."""
    params = {}
    for key, entry in TRAIN_SCHEMA.items():
        value = getattr(args, key)
        if _is_list(entry) and isinstance(value, list) and len(value) == 1 and value[0] == "auto":
            value = "auto"  # the list option's spelling of the config's word
        params[key] = value
    check_run_params(params)
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

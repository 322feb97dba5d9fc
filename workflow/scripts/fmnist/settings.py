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


def check_value(key: str, value, where: str = "train") -> None:
    """Raise SettingError if ``value`` is not a valid value of training setting ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}.{key}: {value} is not a finite number")
    if isinstance(value, float) and TRAIN_SCHEMA[key].get("type") == "integer":
        raise SettingError(f"{where}.{key}: {value} must be written as an integer")
    if isinstance(value, list) and _integer_items(TRAIN_SCHEMA[key]):
        for item in value:
            if isinstance(item, float):
                raise SettingError(f"{where}.{key}: {item} must be written as an integer")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(TRAIN_SCHEMA[key]).iter_errors(value)
    )
    if error is not None:
        raise SettingError(f"{where}.{key}: {error.message}")


# ------------------------------------------------------------- layers and stages


def layer_shapes(params: dict) -> list[tuple[int, int]]:
    """(in, out) of each Linear: 784 -> hidden_sizes... -> 10."""
    sizes = [IMAGE_SIDE * IMAGE_SIDE, *params["hidden_sizes"], NUM_CLASSES]
    return list(zip(sizes[:-1], sizes[1:]))


def layer_flops(params: dict) -> list[int]:
    """Each Linear's forward FLOPs per sample, 2 * in * out (what balancing weighs)."""
    return [2 * i * o for i, o in layer_shapes(params)]


def stage_count(params: dict) -> int:
    """How many stages: train.stage_split's length if given, else one per listed device
    (two or more), else (auto, or one device for all) the tutorial's two."""
    split, devices = params["stage_split"], params["devices"]
    if isinstance(split, list):
        return len(split)
    if isinstance(devices, list) and len(devices) > 1:
        return len(devices)
    return 2  # hidden_sizes has at least one entry: at least two layers


def balanced_split(costs: list[int], stages: int) -> list[int]:
    """Layers per stage: contiguous blocks that minimise the costliest stage (ties: the
    split whose layer counts come first in order)."""
    n = len(costs)
    best: dict[tuple[int, int], tuple[int, list[int]]] = {(0, 0): (0, [])}
    for k in range(1, stages + 1):
        for end in range(k, n - (stages - k) + 1):
            candidates = []
            for start in range(k - 1, end):
                if (k - 1, start) in best:
                    worst, counts = best[(k - 1, start)]
                    candidates.append((max(worst, sum(costs[start:end])), [*counts, end - start]))
            best[(k, end)] = min(candidates)
    return best[(stages, n)][1]


def stage_split(params: dict) -> list[int]:
    """The number of layers of each stage, in order (checked by check_run_params)."""
    split = params["stage_split"]
    if isinstance(split, list):
        return list(split)
    return balanced_split(layer_flops(params), stage_count(params))


def check_stages(params: dict) -> None:
    layers = len(layer_shapes(params))
    model = f"train.hidden_sizes {params['hidden_sizes']} makes {layers} layers"
    split, devices = params["stage_split"], params["devices"]
    if isinstance(split, list):
        if sum(split) != layers:
            raise SettingError(f"train.stage_split {split} assigns {sum(split)} layers; {model}")
        if isinstance(devices, list) and len(devices) > 1 and len(devices) != len(split):
            raise SettingError(
                f"train.devices lists {len(devices)} devices but train.stage_split {split} "
                f"makes {len(split)} stages: give one device per stage (or one for all)"
            )
    elif stage_count(params) > layers:
        raise SettingError(
            f"train.devices lists {len(devices)} devices, one per stage, but {model}: "
            f"a stage needs at least one layer"
        )


def check_run_params(params: dict) -> None:
    """The rules between settings that no single schema entry can state."""
    if params["microbatches"] > params["batch_size"]:
        raise SettingError(
            f"train.microbatches ({params['microbatches']}) exceeds "
            f"train.batch_size ({params['batch_size']})"
        )
    check_stages(params)
    if params["engine"] == "distributed":
        check_distributed(params)


def check_distributed(params: dict) -> None:
    """What the distributed engine needs: stages to put in processes, and equal
    micro-batches (a pipeline stage receives tensors of the one shape it was set up for)."""
    if stage_count(params) < 2:
        raise SettingError(
            "train.engine distributed runs one process per stage, but this model has one "
            "stage: list a device per stage in train.devices or give train.stage_split"
        )
    devices = params["devices"]
    if devices != "auto" and len({name.split(":")[0] for name in devices}) > 1:
        raise SettingError(
            f"train.engine distributed needs every stage on the same kind of device "
            f"(its processes talk over NCCL between GPUs or gloo between CPUs), got {devices}"
        )
    check_one_gpu_per_process(devices, stage_count(params))
    batch, micro = params["batch_size"], params["microbatches"]
    if batch % micro:
        raise SettingError(
            f"train.engine distributed needs train.batch_size ({batch}) to be a multiple "
            f"of train.microbatches ({micro}): every micro-batch has the same size"
        )


def check_one_gpu_per_process(devices, stages: int) -> None:
    """The distributed engine's processes each need a GPU of their own (NCCL allows one
    process per GPU): refuse a list that names one GPU for two stages. (A bare cuda is each
    process's own GPU; whether enough are visible is checked where the processes start.)"""
    if devices == "auto":
        return
    named = [d for d in (devices * stages if len(devices) == 1 else devices) if ":" in d]
    shared = sorted({d for d in named if d.startswith("cuda") and named.count(d) > 1})
    if shared:
        raise SettingError(
            f"train.devices {devices} puts several stages on {', '.join(shared)}, but "
            "train.engine distributed runs one process per stage and NCCL allows one process "
            "per GPU: name a GPU per stage (e.g. [cuda:0, cuda:1]), write [cuda, cuda] for "
            "each process's own GPU, or use train.engine single_process to share a GPU"
        )


def working_memory_mb(params: dict) -> float:
    """A lower bound of what training a run holds beyond the interpreter and the data:
    parameters with their gradient and Adam's two moments (x4, float32), and one batch's
    activations and their gradients (x4). The step's own buffers and torch itself add more."""
    batch = params["batch_size"]
    weights = sum((i + 1) * o for i, o in layer_shapes(params))
    activations = batch * (
        IMAGE_SIDE * IMAGE_SIDE + 2 * sum(params["hidden_sizes"]) + 2 * NUM_CLASSES
    )
    return 4 * 4 * (weights + activations) / 2**20


def check_memory(params: dict, mem_mb: int, run: str) -> None:
    """Refuse, before any job, a run that cannot fit in the memory its job asks for."""
    needed = working_memory_mb(params)
    if needed > mem_mb:
        raise SettingError(
            f"run {run} needs at least {needed:,.0f} MB for its weights, optimizer state and "
            f"one batch (train.hidden_sizes {params['hidden_sizes']}, train.batch_size "
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
    """The training settings of parsed options, as the config writes them; checked."""
    params = {}
    for key, entry in TRAIN_SCHEMA.items():
        value = getattr(args, key)
        if _is_list(entry):
            if len(value) == 1 and value[0] == _list_word(entry):
                value = value[0]  # the list option's spelling of the config's word
            if _integer_items(entry):  # devices: resolve_devices names what is wrong
                check_value(key, value)
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

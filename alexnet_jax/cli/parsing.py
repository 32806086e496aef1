"""The command line's parsing, which every mode shares: the config file and its overrides (one line
for every mistake), the flags of every mode on one fresh ``FlagValues``, and the parsed arguments."""

import re
import sys
import types

from absl import flags, logging
from ml_collections import config_flags

from alexnet_jax.cli import convert, evaluate, features, filters, neighbours, predict, prepare, train

MODULES = {
    "train": train,
    "evaluate": evaluate,
    "prepare": prepare,
    "convert": convert,
    "predict": predict,
    "filters": filters,
    "features": features,
    "neighbours": neighbours,
}
MODES = list(MODULES)
_CONFIG_MODULE = "config_config"  # where ml_collections loads the --config file (sys.modules key)


def _reading_flags(fv: dict) -> dict:
    """The flags of the modes that read a workdir's checkpoint: which one, which weights, where to write."""
    return {
        "checkpoint": flags.DEFINE_string(
            "checkpoint",
            "best",
            "evaluate, predict, filters, features, neighbours: 'best', 'latest' or a step number.",
            **fv,
        ),
        "member": flags.DEFINE_integer(
            "member",
            None,
            "evaluate, predict, filters, features, neighbours: one member of an ensemble (0 to N-1); default: "
            "the ensemble (filters, features, neighbours: member 0).",
            **fv,
        ),
        "ema": flags.DEFINE_bool(
            "ema",
            False,
            "evaluate, predict, filters, features, neighbours: the weights' moving average (--config.ema_decay), "
            "not the weights.",
            **fv,
        ),
        "output": flags.DEFINE_string(
            "output",
            None,
            "predict: also write the top-5 to this .csv or .jsonl; filters, neighbours: the PNG to write; "
            "features: the .npy to write.",
            **fv,
        ),
    }


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> dict:
    """Defines the shared flags, then each mode's, on ``flag_values`` (fresh, so that a command line
    can be parsed more than once); returns name -> holder."""
    fv = {"flag_values": flag_values}
    holders = {
        "config": config_flags.DEFINE_config_file(
            "config", None, "Config file, e.g. configs/cifar10_cpu.py.", sys_argv=argv, **fv
        ),
        "mode": flags.DEFINE_enum("mode", "train", MODES, "What to do.", **fv),
        "workdir": flags.DEFINE_string("workdir", None, "Run directory: config, metrics, checkpoints, plots.", **fv),
        "compilation_cache": flags.DEFINE_string(
            "compilation_cache",
            "~/.cache/alexnet_jax/xla",
            "JAX's persistent compilation cache: a later run of the same program skips compiling it "
            "(JAX_COMPILATION_CACHE_DIR, where set, wins; '' turns it off).",
            **fv,
        ),
        "verbosity": flags.DEFINE_integer("verbosity", -1, "absl logging level: -1 warnings, 0 info, 1 debug.", **fv),
        **_reading_flags(fv),
    }
    for module in MODULES.values():
        if hasattr(module, "define_flags"):  # a mode's own flags, where it has any
            holders.update(module.define_flags(flag_values))
    return holders


def _config_path(argv: list[str]) -> str | None:
    for arg in argv:
        match = re.fullmatch(r"--?config=(.*)", arg)
        if match:
            return match.group(1)
    return None


def _unknown_override(config, argv: list[str]) -> str | None:
    """The first ``--config.a.b`` override naming a field the config lacks, as an error message."""
    for arg in argv:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        node, path = config, match.group(1).split(".")
        for depth, key in enumerate(path):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if key not in fields:
                where = ".".join(["config", *path[:depth]])
                return f"--config.{match.group(1)}: {where} has no field {key!r}; its fields are {', '.join(fields)}"
            node = node[key]
    return None


def load_config(argv: list[str]):
    """Loads --config without overrides; raises UserError for a missing or broken file."""
    from alexnet_jax.errors import UserError

    path = _config_path(argv)
    if path is None:
        return None
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=[argv[0]])
    sys.modules.pop(_CONFIG_MODULE, None)  # ml_collections re-executes the file into a cached module
    try:
        flag_values([argv[0], f"--config={path}"])
        config = holder.value
        config.keys()  # a file that failed to load raises here
    except OSError:
        raise UserError(f"--config={path}: no such file; the configs are in configs/ (e.g. configs/smoke.py)") from None
    except SyntaxError as e:
        raise UserError(f"--config={path} does not parse: {e.msg} at line {e.lineno}; fix the file") from None
    except AttributeError:
        raise UserError(f"--config={path} has no get_config() function returning a ConfigDict") from None
    return config


def parse_args(argv: list[str]) -> types.SimpleNamespace:
    """Parses the command line; every mistake becomes a ``UserError`` with a one-line message."""
    from alexnet_jax.errors import UserError

    base = load_config(argv)
    unknown = _unknown_override(base, argv) if base is not None else None
    if unknown:
        raise UserError(unknown)
    if base is None and any(re.match(r"--?(no)?config\.", arg) for arg in argv):
        raise UserError("--config.<key> overrides need --config=configs/<name>.py before them")
    flag_values = flags.FlagValues()
    holders = define_flags(flag_values, argv)
    sys.modules.pop(_CONFIG_MODULE, None)
    try:
        positional = flag_values(argv)
    except (flags.Error, TypeError, ValueError) as e:  # bad flag name or value: absl names the flag
        raise UserError(f"{str(e).splitlines()[0]}; see python main.py --help") from None
    values = {name: holder.value for name, holder in holders.items() if name != "verbosity"}
    take_arguments = getattr(MODULES[values["mode"]], "take_arguments", None)  # predict's: the shell's expansion
    positional = take_arguments(values, positional) if take_arguments else positional
    if len(positional) > 1:
        raise UserError(f"unexpected arguments {positional[1:]}; flags take the form --name=value")
    logging.set_verbosity(holders["verbosity"].value)
    if values["config"] is None and getattr(MODULES[values["mode"]], "DEFAULT_CONFIG", None):
        values["config"] = load_config([argv[0], f"--config={MODULES[values['mode']].DEFAULT_CONFIG}"])
    return types.SimpleNamespace(**values)


def help_text(argv0: str) -> str:
    """Every flag, by module, with its help."""
    flag_values = flags.FlagValues()
    define_flags(flag_values, [argv0])
    return flag_values.get_help()

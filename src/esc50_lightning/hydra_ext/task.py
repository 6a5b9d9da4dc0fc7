"""Hydra entry points (``train.py``, ``eval.py``): the run-folder resolver, and config mistakes that
become one line, exit status 2 and no run folder left behind.

Two layers catch them. ``run_hydra_main`` wraps Hydra's ``@hydra.main`` function and catches what
Hydra raises while it parses the command line and composes the config, before any task runs: an
override it cannot parse, a group option that does not exist, a key that does not exist, a value
of the wrong type for Hydra's own settings. ``guarded_task`` wraps the task itself: a value of
the wrong type for a key the tasks use as a number (``data.fold=abc``) and every ``UserError`` the
task raises. ``HYDRA_FULL_ERROR=1`` (or ``ESC50_FULL_ERROR=1``) shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from esc50_lightning.errors import UserError, run_guarded, show_tracebacks
from esc50_lightning.hydra_ext.run_dirs import CREATED_PARENTS, register_resolvers

T = TypeVar("T")

# The run-folder resolver the Hydra configs use: registered on import, before @hydra.main composes.
register_resolvers()

# Short forms accepted on the command line, rewritten before Hydra parses it (the one alias; the
# configs say so beside the key): ``data.root=PATH`` is ``data.dataset.root=PATH``.
SHORT_FORMS = {"data.root": "data.dataset.root"}

# Keys the tasks use as integers. Hydra takes ``data.fold=abc`` as the string "abc", which would
# surface as a traceback deep inside the task; null is left to the task (it means "default" for
# some of them).
INTEGER_KEYS = (
    "seed",
    "data.fold",
    "data.batch_size",
    "data.eval_batch_size",
    "data.copies_per_epoch",
    "data.num_workers",
    "data.limit_per_class",
    "trainer.max_epochs",
)


# ---- around Hydra's main --------------------------------------------------------------------------
def run_hydra_main(main: Callable[[], Any], argv: list[str] | None = None) -> None:
    """Run a ``@hydra.main`` function; a config mistake Hydra finds is one ``error:`` line, exit 2.

    ``argv`` (default ``sys.argv``) gets its short forms expanded in place first, so that what
    Hydra records in ``.hydra/overrides.yaml`` (and any DDP process Lightning re-launches) uses
    the full keys.
    """
    argv = sys.argv if argv is None else argv
    argv[1:] = expand_short_forms(argv[1:])
    with _config_errors_reported(argv[1:]):
        main()


def expand_short_forms(args: Sequence[str]) -> list[str]:
    """``data.root=PATH`` → ``data.dataset.root=PATH`` (any ``+``/``++`` prefix kept)."""
    out = []
    for arg in args:
        prefix, key, sep, value = _split_override(arg)
        out.append(f"{prefix}{SHORT_FORMS[key]}{sep}{value}" if sep and key in SHORT_FORMS else arg)
    return out


def _split_override(arg: str) -> tuple[str, str, str, str]:
    """``++a.b=v`` → (``++``, ``a.b``, ``=``, ``v``); a flag or bare word has no ``=``."""
    if arg.startswith("-"):
        return "", arg, "", ""
    key, sep, value = arg.partition("=")
    stripped = key.lstrip("+~")
    return key[: len(key) - len(stripped)], stripped, sep, value


@contextlib.contextmanager
def _config_errors_reported(overrides: list[str]) -> Iterator[None]:
    """While Hydra's main runs, route the errors it reports through ``config_error_message``.

    Hydra prints every error of composing or running a job in ``hydra._internal.utils
    .run_and_report`` (a multi-line message, exit status 1). This wraps that function: an error
    that ``config_error_message`` recognises becomes one line and exit status 2; anything else, or
    any error under ``HYDRA_FULL_ERROR=1``, goes on to Hydra's own report unchanged.
    """
    try:
        from hydra._internal import utils as hydra_utils

        original = hydra_utils.run_and_report
    except (ImportError, AttributeError):  # another Hydra: its own messages, unchanged
        yield
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def attempt() -> Any:
            try:
                return func()
            except Exception as err:
                message = None if show_tracebacks() else config_error_message(err, overrides)
                if message is None:
                    raise
                _remove_if_empty()
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)

        return original(attempt)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def config_error_message(err: BaseException, overrides: Sequence[str] = ()) -> str | None:
    """One line for a Hydra or OmegaConf config error, naming the key, the value given and what is
    allowed; ``None`` for any other error."""
    if isinstance(err, MissingConfigException):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        if group and err.options:
            given = _given(group, overrides) or f"{group}={option}"
            return f"{given}: no such option; choose from {', '.join(err.options)}"
        return _one_line(str(err).split("\n\n")[0])
    if isinstance(err, OverrideParseException):
        return _parse_error(err)
    cause = err.__cause__ if isinstance(err, ConfigCompositionException) else err
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return _unknown_key(cause, overrides)
    if isinstance(cause, ValidationError) and cause.full_key:
        given = _given(cause.full_key, overrides) or cause.full_key
        return f"{given}: {_first_line(cause.msg or str(cause))}"
    if isinstance(cause, MissingMandatoryValue) and cause.full_key:
        return f"{cause.full_key} is required: add {cause.full_key}=... to the command"
    unmatched = _NO_DEFAULT.match(str(err)) if isinstance(err, ConfigCompositionException) else None
    if unmatched:  # model=... given to eval.py, whose config has no model group
        given = _given(unmatched.group(1), overrides) or unmatched.group(1)
        return f"{given}: no such key or config group in this command's config"
    if isinstance(err, OmegaConfBaseException):
        key = f"{err.full_key}: " if err.full_key else ""
        return key + _first_line(err.msg or str(err))
    if isinstance(err, HydraException) and not _is_instantiation(err):
        text = _one_line(str(err).split("Config search path")[0])
        if isinstance(err.__cause__, OmegaConfBaseException):
            text += f" ({_first_line(str(err.__cause__))})"
        return text
    return None


def _is_instantiation(err: BaseException) -> bool:
    from hydra.errors import InstantiationException

    return isinstance(err, InstantiationException)  # a task's own failure, shown with its traceback


def _given(key: str, overrides: Sequence[str]) -> str | None:
    """The override the user wrote for ``key`` (``model=resnet19``), if any."""
    for arg in reversed(list(overrides)):
        _, name, sep, _ = _split_override(arg)
        if sep and name == key:
            return arg.lstrip("+~")
    return None


def _unknown_key(err: OmegaConfBaseException, overrides: Sequence[str]) -> str:
    full_key = str(err.full_key)
    given = _given(full_key, overrides) or full_key
    parent, _, name = full_key.rpartition(".")
    siblings = [str(k) for k in err.parent_node] if isinstance(err.parent_node, DictConfig) else []
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    where = f" in {parent}" if parent else ""
    if close:
        return f"{given}: no such key{where}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"{given}: no such key{where}; to add a new key, write +{given}"


_NO_DEFAULT = re.compile(r"Could not override '([^']+)'\. No match in the defaults list")
_NEEDS_QUOTES = re.compile(r"(?<!\$)\{|\}|[()\s]")  # braces (not ${...}), parentheses, spaces


def _parse_error(err: OverrideParseException) -> str:
    override = err.override or ""
    reason = _first_line(err.message)
    _, key, sep, value = _split_override(override)
    quoted = value[:1] in ("'", '"')
    if sep and value and not quoted and _NEEDS_QUOTES.search(value):
        return (
            f"{override}: Hydra's override grammar takes braces, parentheses and spaces only inside "
            f"quotes; write \"{key}='{value}'\""
        )
    return f"{override}: not a valid override ({reason})"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# ---- around the task ----------------------------------------------------------------------------
def guarded_task(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a Hydra task; on a ``UserError`` (or a config value of the wrong type) note it in the
    run's log, remove the run folder if it holds nothing else, print one line, exit 2. Any other
    error is noted in the run's log (so that ``report`` can say why the run failed) and goes on
    to Hydra's report."""

    def task() -> T:
        check_value_types(cfg)
        check_argument_types(cfg)
        try:
            return fn(cfg)
        except OmegaConfBaseException as err:
            raise UserError(config_error_message(err) or str(err)) from err
        except UserError:
            raise
        except Exception as err:
            cause = err.__cause__ if _is_instantiation(err) else None
            if not isinstance(cause, UserError):  # run_guarded unwraps those
                note_in_run_log(f"crashed: {err.__class__.__name__}: {_first_line(str(err))}")
            raise

    return run_guarded(task, on_error=_on_user_error)


def check_value_types(cfg: DictConfig) -> None:
    """One line for a key the tasks use as an integer but which holds something else."""
    for key in INTEGER_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        shown = "true" if value is True else "false" if value is False else value
        raise UserError(f"{key}={shown}: not an integer; {_allowed_integers(cfg, key)}")


def check_argument_types(cfg: DictConfig) -> None:
    """One line for text given where a configured class takes a number (``model.net.dropout=abc``),
    which would otherwise surface from deep in the constructor ("'<' not supported between
    instances of 'str' and 'int'"). The class's signature says which arguments are numbers; a
    class is imported only when its entry holds text."""
    for key, node in _targets(cfg):
        try:
            target = str(node["_target_"])
            texts = {k: v for k, v in node.items() if isinstance(v, str) and not str(k).startswith("_")}
        except OmegaConfBaseException:  # an interpolation that fails is the task's to report
            continue
        if not texts:
            continue
        try:
            from hydra.utils import get_object

            parameters = inspect.signature(get_object(target)).parameters
        except Exception:  # not importable or no signature: instantiation reports it
            continue
        for name, value in texts.items():
            param = parameters.get(str(name))
            number = _number_type(param.annotation) if param is not None else None
            if number is None:
                continue
            default = param.default  # type: ignore[union-attr]
            example = f", e.g. {default}" if isinstance(default, int | float) and default is not True else ""
            raise UserError(
                f"{key}.{name}={value}: wants a number ({number}, an argument of {target}); give one{example}"
            )


def _targets(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every entry of the config with a ``_target_`` and where it is (``model.net``)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for name in node:
            try:
                child = node._get_node(name)
            except OmegaConfBaseException:
                continue
            if isinstance(child, DictConfig | ListConfig):
                yield from _targets(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node._iter_ex(resolve=False)):
            if isinstance(child, DictConfig | ListConfig):
                yield from _targets(child, f"{key}[{i}]")


def _number_type(annotation: Any) -> str | None:
    """``float`` or ``int`` for an annotation that admits numbers and no text (``float``,
    ``int | None``); ``None`` for any other."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    names = {n for n in re.split(r"[\s|,\[\]]+", text.replace("typing.", "")) if n and n != "Optional"}
    if not names & {"float", "int"} or not names <= {"float", "int", "None", "bool"}:
        return None
    return "float" if "float" in names else "int"


def _allowed_integers(cfg: DictConfig, key: str) -> str:
    if key == "data.fold":
        folds = OmegaConf.select(cfg, "data.dataset.folds", default=None)
        if folds:
            return f"choose from {', '.join(str(f) for f in folds)}"
        return "give the number of one of the dataset's folds"
    if key in ("data.limit_per_class", "trainer.max_epochs"):
        return "give a whole number, or null for no limit"
    return "give a whole number"


def note_in_run_log(message: str) -> None:
    """Append an ERROR line to the run's log file only (the console shows the error already)."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(Exception):
                handler.handle(record)
                handler.flush()


def _on_user_error(err: UserError) -> None:
    note_in_run_log(f"error: {_first_line(str(err))}")
    _remove_if_empty()


def _remove_if_empty() -> None:
    """A run that failed before training holds only Hydra's bookkeeping: leave nothing half-written."""
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if not run_dir.is_dir():
        return
    produced: list[Any] = [p for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts]
    if all(p.suffix == ".log" for p in produced):
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in CREATED_PARENTS:  # deepest first: outputs/eval/runs, outputs/eval, outputs
            with contextlib.suppress(OSError):  # not empty: another run's, kept
                parent.rmdir()

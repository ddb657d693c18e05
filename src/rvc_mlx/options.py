"""What a user chooses per conversion, defined once: :class:`ConversionOptions`.

Every field carries its default, range and help (``Param`` in the field's metadata). The CLI flags, the web UI's
controls and the HTTP API's schema are all generated from these (``option_specs``), and every front end turns
user input into options through :func:`parse_options`, so ranges and messages are the same everywhere.
Importing this module loads neither MLX nor any front-end library.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

from .errors import InputError
from .f0 import METHOD_MODULES

F0_METHODS = tuple(sorted(METHOD_MODULES))
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Param:
    """How one option is presented and checked. ``lo``/``hi`` are inclusive bounds (None: unbounded);
    ``step`` is the UI's slider step; ``file`` marks an option whose value is a file the client uploads
    (front ends never take server paths from clients); ``advanced`` options sit folded away in the UI."""

    label: str
    help: str
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    file: bool = False
    advanced: bool = False


def _option(default, label: str, help: str, **kw):
    return field(default=default, metadata={"param": Param(label, help, **kw)})


@dataclass(frozen=True)
class ConversionOptions:
    """What a user chooses per conversion. Defaults are rvc==0.3.5's ``rvc infer`` defaults."""

    pitch: float = _option(0.0, "pitch shift", "transpose in semitones (+12: one octave up)", lo=-48, hi=48, step=1)
    f0_method: str = _option("rmvpe", "f0 method", "pitch estimator", choices=F0_METHODS)
    index_rate: float = _option(0.75, "index rate", "how much of the voice's index (retrieved training features) "
                                "to blend in; needs an index", lo=0, hi=1, step=0.01)
    filter_radius: int = _option(3, "filter radius", "median filter radius applied to harvest's pitch when > 2",
                                 lo=0, hi=7, step=1)
    rms_mix_rate: float = _option(0.25, "rms mix rate", "0 follows the input's loudness, 1 keeps the output's",
                                  lo=0, hi=1, step=0.01)
    protect: float = _option(0.33, "protect", "protect unvoiced consonants and breaths from the index "
                             "(0.5: off)", lo=0, hi=0.5, step=0.01)
    resample_sr: int = _option(0, "resample rate", "output sample rate in Hz (0: the model's)", lo=0, hi=192000,
                               advanced=True)
    sid: int = _option(0, "speaker id", "speaker of a multi-speaker voice", lo=0, hi=65535, advanced=True)
    f0_file: str | None = _option(None, "f0 file", "CSV of time,Hz (or rvc-mlx pitch's CSV) replacing the "
                                  "estimated pitch before autotune and pitch shift", file=True,
                                  advanced=True)
    autotune: float = _option(0.0, "autotune", "snap the pitch to semitones, strength 0..1 (0: off)", lo=0, hi=1,
                              step=0.05)
    deterministic: bool = _option(False, "deterministic", "zero all synthesis noise (identical output every run)",
                                  advanced=True)
    seed: int | None = _option(None, "seed", "seed for the synthesis noise (none: random)", lo=0, hi=2**32 - 1,
                               advanced=True)

    def validate(self) -> "ConversionOptions":
        """Check every field against its ``Param``; raises ``InputError`` naming the first bad one."""
        for spec in option_specs():
            check_value(spec, getattr(self, spec.name))
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OptionSpec:
    """One ConversionOptions field as front ends see it: ``type`` is bool, int, float or str;
    ``optional``: None is allowed (and is the default)."""

    name: str
    type: type
    default: Any
    optional: bool
    param: Param

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_TYPES = {"float": float, "int": int, "str": str, "bool": bool, "str | None": str, "int | None": int}


def option_specs() -> tuple[OptionSpec, ...]:
    """The fields of :class:`ConversionOptions`, in order, with their types and presentation."""
    specs = []
    for f in fields(ConversionOptions):
        default = f.default if f.default is not MISSING else None
        specs.append(OptionSpec(f.name, _TYPES[f.type], default, "None" in f.type, f.metadata["param"]))
    return tuple(specs)


def spec(name: str) -> OptionSpec:
    for s in option_specs():
        if s.name == name:
            return s
    raise InputError(f"unknown option {name!r}")


def check_value(s: OptionSpec, value) -> None:
    p = s.param
    if value is None:
        if not s.optional:
            raise InputError(f"{p.label} must be given")
        return
    if p.choices is not None and value not in p.choices:
        raise InputError(f"unknown {p.label} {value!r} (choose from {', '.join(p.choices)})")
    if s.type in (int, float):
        lo = -float("inf") if p.lo is None else p.lo
        hi = float("inf") if p.hi is None else p.hi
        if not lo <= value <= hi:
            raise InputError(f"{p.label} must be within {format_number(p.lo)}..{format_number(p.hi)}, "
                             f"got {format_number(value)}")


def format_number(x) -> str:
    """``3`` for 3.0, ``0.33`` for 0.33, empty for None (ranges and defaults in messages and help)."""
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def coerce(s: OptionSpec, value) -> Any:
    """``value`` (a Python value or the text of a form field / query parameter) as the option's type."""
    if value is None or (s.optional and isinstance(value, str) and value.strip() in ("", "none", "null")):
        return None
    label = s.param.label
    if s.type is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise InputError(f"{label} must be true or false, got {value!r}")
    if s.type is str:
        if not isinstance(value, str):
            raise InputError(f"{label} must be text, got {value!r}")
        return value
    if isinstance(value, bool):
        raise InputError(f"{label} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), -float("inf")):
        raise InputError(f"{label} must be a finite number, got {value!r}")
    if s.type is int:
        if not number.is_integer():
            raise InputError(f"{label} must be a whole number, got {value!r}")
        return int(number)
    return number


def parse_options(values: Mapping[str, Any] | None = None, base: ConversionOptions | None = None,
                  allow_files: bool = True) -> ConversionOptions:
    """Options from user input: ``base`` (default ``ConversionOptions()``) with the fields in ``values``
    replaced, each coerced and range-checked. Unknown names are an error; so are file options when
    ``allow_files`` is False (values from clients that must not name server paths)."""
    merged = (base or ConversionOptions()).to_dict()
    for name, value in (values or {}).items():
        s = spec(name)
        if s.param.file and not allow_files and value is not None:
            raise InputError(f"{s.param.label} must be uploaded as a file, not given as a path")
        merged[name] = coerce(s, value)
    return ConversionOptions(**merged).validate()

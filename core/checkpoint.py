"""Loading and saving DecFlow weights in the authors' checkpoint format.

Weight files keep the authors' key layout (every key prefixed with `module.`, as their
`nn.DataParallel` scripts save it), so files move freely between their code and ours.
Everything is loaded with `torch.load(..., weights_only=True)`.

Files this project writes carry a SHA-256 checksum: a weights file's in the `.json`
beside it (`"sha256"`, of the file's bytes), a training-state file's inside it (`"sha256"`,
of its payload, `payload_sha256`). Loading verifies it and refuses a mismatch, naming the
file; files without one (the authors') load as before. Non-finite weights are refused at
load, naming the tensor.

The default weights file of the scripts is the first of DEFAULT_CHECKPOINTS that exists
(`default_checkpoint()`): the authors' release, then stage 2 of the seed training.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from core.defaults import RELEASE_CHECKPOINT, SEED_CHECKPOINT
from core.errors import UserError
from core.parallel import unwrap
from core.semantic import semantic_state_from_resnet50
from core.utils.atomic import TEMPORARY_MARK, atomic_path, atomic_stream, remove_temporaries
from core.weights import LFS_POINTER, REGISTRY, SEMANTIC, WeightsUnavailable, ensure, sha256_of

DATA_PARALLEL_PREFIX = "module."
# Keys a checkpoint may lack without harm: the semantic encoder's stage 3 is never run,
# `rel_ind` is a constant index table, and `num_batches_tracked` only counts batches.
OPTIONAL_KEY_PATTERNS = (r"^dad_encoder\.model\.3\.", r"\.rel_ind$", r"\.num_batches_tracked$")

# What init_semantic_encoder returns when no ImageNet weights were had: the encoder stays random.
RANDOM_INITIALISATION = "random initialisation"
# The key of a weights description (save_checkpoint) and a training state that says where the
# semantic encoder's weights come from: a file, or RANDOM_INITIALISATION.
SEMANTIC_SOURCE = "semantic_encoder"
# Default weights of evaluate.py and get_flow.py, in order of preference.
DEFAULT_CHECKPOINTS = (RELEASE_CHECKPOINT, SEED_CHECKPOINT)


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


def default_checkpoint() -> Path:
    """The first of DEFAULT_CHECKPOINTS that is a file (relative to the current folder).

    FileNotFoundError, naming every candidate, when there is none.
    """
    for candidate in DEFAULT_CHECKPOINTS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"neither {RELEASE_CHECKPOINT} (the release) nor {SEED_CHECKPOINT} (seed stage 2) exists")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: the legacy torch.save format


def _format_problem(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file, judged from its bytes (None: it may be one)."""
    with path.open("rb") as stream:
        head = stream.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        return (
            f"{path}: a Git LFS pointer, not the weights (the file is stored with Git LFS: `git lfs pull` "
            "or `python -m core.weights fetch NAME` gets the weights themselves)"
        )
    if not head:
        return f"{path}: not a PyTorch checkpoint (empty file)"
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return f"{path}: damaged PyTorch checkpoint (truncated zip archive; incomplete download or copy?)"
        return None
    if head.startswith(PICKLE_MAGIC):
        return None
    return f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _load_problem(path: Path, error: Exception) -> str:
    """One line on why torch.load(weights_only=True) failed (never advice to turn it off)."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        detail = detail.split(" Please use ", 1)[0].strip()  # drop the allow-listing advice
        if detail.startswith("Unsupported global"):
            return (
                f"{path}: holds objects other than tensors and plain containers, which are not loaded "
                f"for safety ({detail})"
            )
        return f"{path}: not a PyTorch checkpoint (unreadable pickle data: {detail})"
    if isinstance(error, EOFError):
        return f"{path}: damaged PyTorch checkpoint (the data ends too early; incomplete download or copy?)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    first = re.sub(r"^\[enforce fail at [^]]*\]\s*\.?\s*", "", lines[0]) if lines else ""
    first = first.split(". ", 1)[0].rstrip(".") or type(error).__name__
    if "archive is corrupted" in first:
        return f"{path}: damaged PyTorch checkpoint ({first})"
    return f"cannot read checkpoint {path}: {first}"


def load_plain(path: str | os.PathLike) -> object:
    """torch.load(path, weights_only=True) on the CPU; UserError (one line, naming the file,
    never advice to unpickle unsafely) when it is not a PyTorch file or is damaged."""
    path = Path(path)
    problem = _format_problem(path)
    if problem:
        raise UserError(problem)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise UserError(_load_problem(path, error)) from error


def _digest_tree(digest, tree) -> None:
    if isinstance(tree, torch.Tensor):
        tensor = tree.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # hashlib reads the buffer: no copy
    elif isinstance(tree, Mapping):
        digest.update(f"D{len(tree)}".encode())
        for key in sorted(tree, key=repr):
            digest.update(f"K{key!r}".encode())
            _digest_tree(digest, tree[key])
    elif isinstance(tree, (list, tuple)):  # torch.load may turn one into the other
        digest.update(f"L{len(tree)}".encode())
        for item in tree:
            _digest_tree(digest, item)
    else:
        digest.update(f"V{tree!r}".encode())


def payload_sha256(tree: object) -> str:
    """SHA-256 of a nested dict/list of tensors and plain values (keys, dtypes, shapes,
    bytes): the checksum a training-state file stores of itself."""
    digest = hashlib.sha256()
    _digest_tree(digest, tree)
    return digest.hexdigest()


def verify_payload(path: str | os.PathLike, state: Mapping) -> None:
    """UserError naming `path` when `state` carries a `sha256` that its payload does not have."""
    expected = state.get("sha256")
    if expected is None:
        return
    if payload_sha256({k: v for k, v in state.items() if k != "sha256"}) != expected:
        raise UserError(f"{path}: damaged file: its content does not match the checksum stored in it")


def verify_file_checksum(path: str | os.PathLike, *, sha256: str | None = None) -> None:
    """UserError naming both files when the `.json` beside `path` gives another checksum.
    `sha256`: the file's digest when the caller has it already (the file is then not read again)."""
    description = read_description(path)
    expected = (description or {}).get("sha256")
    if expected is not None and (sha256 or sha256_of(path)) != expected:
        raise UserError(
            f"{path}: damaged file: its SHA-256 differs from the one in {description_path(path)} "
            "(changed since it was written?)"
        )


def nonfinite_entries(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix or "tensor"] if tree.is_floating_point() and not torch.isfinite(tree).all() else []
    items = tree.items() if isinstance(tree, Mapping) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [
        name for key, value in items for name in nonfinite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    ]


def read_state_dict(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file (authors' format, ours, or a training-state file) as a plain
    state dict without the `module.` prefix, after verifying its checksum if it has one
    (against `sha256`, the file's digest, when the caller has it already).

    FileNotFoundError when missing; UserError (one line, naming the file) when it is not
    a PyTorch checkpoint, is damaged (checksum mismatch, non-finite tensors), or holds
    something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    verify_file_checksum(path, sha256=sha256)
    obj = state = load_plain(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # a training-state file written by train.py
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    damaged = nonfinite_entries(obj)
    if damaged:
        raise UserError(
            f"{path}: damaged weights: non-finite values (NaN or inf) in {damaged[0]}"
            + (f" and {len(damaged) - 1} more tensors" if len(damaged) > 1 else "")
        )
    if state is not obj:
        verify_payload(path, state)
    return strip_data_parallel_prefix(obj)


def strip_data_parallel_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the `module.` prefix that (Distributed)DataParallel checkpoints carry."""
    return {k[len(DATA_PARALLEL_PREFIX) :] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}


def _count_by_group(keys) -> dict[str, int]:
    return dict(Counter(map(key_group, keys)))  # groups in first-seen order


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "state dict"
) -> LoadReport:
    """Load `state` into `model`; unknown keys and shape mismatches are always errors.

    Missing keys are errors with `strict=True` (except the optional ones listed in
    OPTIONAL_KEY_PATTERNS); with `strict=False` they stay at initialisation and are
    reported by group.
    """
    model = unwrap(model)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if unexpected or mismatched:
        details = []
        if unexpected:
            details.append(
                f"{len(unexpected)} unknown keys: "
                + ", ".join(unexpected[:20])
                + (" ..." if len(unexpected) > 20 else "")
            )
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:20]))
        raise UserError(f"{source} does not fit DecFlow: " + " | ".join(details))
    missing = [k for k in own if k not in state]
    required = [k for k in missing if not _is_optional(k)]
    if strict and required:
        groups = ", ".join(f"{g} ({n})" for g, n in _count_by_group(required).items())
        raise UserError(
            f"{source} lacks {len(required)} keys of: {groups} (first: {required[0]}); "
            f"pass strict=False to start these from initialisation"
        )
    merged = dict(own)
    merged.update(state)
    model.load_state_dict(merged, strict=True)
    return LoadReport(path=source, loaded=_count_by_group(state), initialised=_count_by_group(missing))


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, *, verbose: bool = True, sha256: str | None = None
) -> LoadReport:
    """Load an authors' DecFlow/GMA checkpoint or one of ours into `model` (see module doc);
    `sha256`: the file's digest when the caller has it already (see read_state_dict)."""
    state = read_state_dict(path, sha256=sha256)
    report = load_state_dict_checked(model, state, strict=strict, source=str(path))
    if verbose:
        print(report.summary(), flush=True)
    return report


class NoSpaceError(OSError):
    """The disk filled up while a file was saved; the previous file (if any) is untouched."""

    def __init__(self, path: Path, had_previous: bool) -> None:
        kept = f"the previous {path} is intact" if had_previous else f"nothing was written to {path}"
        super().__init__(f"no space left while writing {path}; {kept}")
        self.errno = errno.ENOSPC
        self.path = path


def _out_of_space(error: BaseException | None) -> bool:
    """Whether `error` (or what it was raised from) says the disk is full.

    torch.save's zip writer reports a short write as `RuntimeError: ... unexpected pos`.
    """
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, then rename: a crash never
    leaves a half-written file under the final name.

    A full disk raises NoSpaceError (an OSError) after removing the temporary file; a
    killed process may leave `.{name}.XXXXXXXX.tmp`, see `remove_stale_temporaries`.
    """
    _atomic_write(path, lambda stream: torch.save(obj, stream))


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """`write` into `core.utils.atomic.atomic_stream` (durable, `.{name}.XXXXXXXX.tmp`); NoSpaceError on a full disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    had_previous = path.exists()
    try:
        with atomic_stream(path, mark=TEMPORARY_MARK, durable=True) as stream:
            write(stream)
    except (OSError, RuntimeError) as error:
        if _out_of_space(error):
            raise NoSpaceError(path, had_previous) from error
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the `.{name}.XXXXXXXX.tmp` files a killed `atomic_save(obj, path)` left next
    to `path`; returns the files removed. Call it at start-up, when no save of `path` runs."""
    return remove_temporaries(path, TEMPORARY_MARK)


def reference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights keyed as in the authors' files (`module.` prefix)."""
    return {DATA_PARALLEL_PREFIX + k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, description: Mapping | None = None) -> None:
    """Write the weights atomically in the authors' key format (a bare state dict, so that
    the authors' files and ours interchange). With `description` (e.g. the step and the
    training arguments), also write `description_path(path)`: the model's architecture
    config, the description and the weights file's SHA-256, as JSON."""
    atomic_save(reference_state_dict(model), path)
    if description is not None:
        document = {"config": asdict(unwrap(model).config), **description, "sha256": sha256_of(path)}
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        _atomic_write(description_path(path), lambda stream: stream.write(text.encode("utf-8")))


def link_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """`destination` (and its `.json`, when `source` has one) as the same file as `source`:
    a hard link, put in place by an atomic rename; a copy on file systems without hard
    links. A later save of either name writes a new file, never through the link."""
    for src, dst in ((Path(source), Path(destination)), (description_path(source), description_path(destination))):
        if not src.is_file():
            continue
        with atomic_path(dst, mark=TEMPORARY_MARK) as tmp:
            tmp.unlink()  # os.link makes the name itself
            try:
                os.link(src, tmp)
            except OSError:  # no hard links here (some network and FAT file systems)
                shutil.copyfile(src, tmp)


def description_path(weights: str | os.PathLike) -> Path:
    """The JSON file beside a weights file: `x.pth` -> `x.json`."""
    return Path(weights).with_suffix(".json")


def read_description(weights: str | os.PathLike) -> dict | None:
    """The JSON description beside `weights` (None when there is none); UserError naming
    the file when it is not a JSON object, or its `config` not an object or its `sha256`
    not a string."""
    path = description_path(weights)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable description of {Path(weights).name} ({error})") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: not a description of {Path(weights).name} (a JSON object is expected)")
    for key, kind, name in (("config", dict, "an object"), ("sha256", str, "a string")):
        if key in document and not isinstance(document[key], kind):
            raise UserError(
                f"{path}: not a description of {Path(weights).name} ({key!r} must be {name}, "
                f"got {type(document[key]).__name__})"
            )
    return document


# ---------------------------------------------------------------- ImageNet initialisation
def init_semantic_encoder(
    model: nn.Module, weights: str | os.PathLike | None = None, *, allow_download: bool = False
) -> str:
    """Initialise the frozen semantic encoder from ImageNet ResNet-50 weights.

    Order of preference: the local file `weights` (torchvision or pytorchcv naming);
    torchvision's IMAGENET1K_V1 file in torch.hub's cache (registry name
    `resnet50-imagenet`, downloaded and verified only with `allow_download`). Without
    either, the encoder stays random and a loud warning says so and how to fetch it.
    Returns a description of the source. Note: torchvision's ResNet-50 strides in the 3x3
    conv, the authors' pytorchcv model in the 1x1; the weights fit both, the features
    differ slightly from the authors'.
    """
    encoder = unwrap(model).dad_encoder
    if weights is None:
        try:
            weights = ensure(REGISTRY[SEMANTIC], offline=not allow_download)
        except WeightsUnavailable as error:
            warnings.warn(
                f"no ImageNet ResNet-50 weights, the FROZEN semantic encoder stays RANDOM: {error.reason}\n"
                f"  pass --semantic_weights FILE, or\n{error.remedy}",
                stacklevel=2,
            )
            return RANDOM_INITIALISATION
    source = str(weights)
    converted = semantic_state_from_resnet50(read_state_dict(weights), source)
    own = encoder.state_dict()
    required = [k for k in own if not k.startswith("model.3.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in converted]
    if missing:
        raise UserError(f"{source} lacks {len(missing)} semantic-encoder weights, e.g. {missing[0]}")
    # Non-strict only for what the check above allows to be absent: the unused stage 3 and
    # batch counters. Whatever stayed at initialisation is said, never skipped silently.
    report = load_state_dict_checked(
        encoder, {k: v for k, v in converted.items() if k in own}, strict=False, source=source
    )
    if report.initialised:
        print(
            f"semantic encoder from {source}; left at initialisation: "
            + ", ".join(f"{group} ({n})" for group, n in report.initialised.items()),
            flush=True,
        )
    return source

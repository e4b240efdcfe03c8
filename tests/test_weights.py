"""core.weights: the registry, verified downloads from a local HTTP server (success, wrong
hash, truncation, HTML, Git LFS pointer, connection refused, offline, a killed download)
and weights by name through get_flow.py, evaluate.py and train.py. Nothing here touches
the internet: every URL is 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

import evaluate
import get_flow
from core import weights
from core.checkpoint import read_state_dict, save_checkpoint
from core.cli import exit_on_error
from core.weights import Checksum, WeightsEntry, WeightsUnavailable, ensure, git_blob_id
from tests.server_helpers import Route, Server
from tests.train_helpers import TRAIN_DATASET, free_port, make_gma_checkpoint, subprocess_env, tiny_train_args
from tests.train_helpers import run as run_train

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ a local server
@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


@pytest.fixture
def online(monkeypatch, server):
    """Downloads on (conftest turns them off), the authors' base URL on the local server."""
    monkeypatch.delenv(weights.OFFLINE_VARIABLE, raising=False)
    monkeypatch.setenv(weights.BASE_URL_VARIABLE, server.url)
    return server


def tiny_weights() -> bytes:
    """A small torch.save file of tensors."""
    buffer = io.BytesIO()
    torch.save({"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}, buffer)
    return buffer.getvalue()


def entry_for(data: bytes, name: str = "tiny") -> WeightsEntry:
    """A registry entry like the authors' ones, with the checksum of `data`."""
    return WeightsEntry(
        name=name,
        file=f"{name}.pth",
        what="test weights",
        source="the test server",
        checksum=Checksum("git-blob", git_blob_id(data)),
        base_url="http://127.0.0.1:9",
        url_path=f"checkpoints/{name}.pth",
        mirrored=True,
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


# ------------------------------------------------------------------ registry
def test_registry_pins_the_authors_files_and_torchvision_resnet(monkeypatch):
    monkeypatch.delenv(weights.BASE_URL_VARIABLE, raising=False)
    release, gma = weights.REGISTRY["decflow-facialflownet"], weights.REGISTRY["gma-sintel"]
    base = "https://raw.githubusercontent.com/RIA1159/FacialFlowNet/b5f2442f7e0419d1c0941796b22a1815cdb4052e"
    assert release.url(os.environ) == f"{base}/checkpoints/decflow-facialflownet.pth"
    assert gma.url(os.environ) == f"{base}/checkpoints/gma-sintel.pth"
    assert release.checksum == Checksum("git-blob", "fbd307fcf6c3e1dcaa033d87b82cabfc6f71bf61")
    assert gma.checksum == Checksum("git-blob", "3c0fa1365fe8181a3e55c9e8e8ccd73ad28c402b")
    assert release.destination() == Path("checkpoints/decflow-facialflownet.pth")
    assert gma.destination() == Path("checkpoints/gma-sintel.pth")
    resnet = weights.REGISTRY["resnet50-imagenet"]
    assert resnet.url(os.environ) == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert resnet.checksum == Checksum("sha256", "0676ba61")
    assert resnet.destination() == Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"
    # a mirror replaces the base; the path under it and the checksum stay
    assert (
        release.url({weights.BASE_URL_VARIABLE: "http://mirror/x/"})
        == "http://mirror/x/checkpoints/decflow-facialflownet.pth"
    )
    assert resnet.url({weights.BASE_URL_VARIABLE: "http://mirror/x/"}) == resnet.url({})


def test_git_blob_id_is_gits(tmp_path):
    data = tiny_weights()
    (tmp_path / "f").write_bytes(data)
    assert Checksum("git-blob", "").of(tmp_path / "f") == git_blob_id(data)
    if shutil.which("git"):
        assert subprocess.run(
            ["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True
        ).stdout.strip() == git_blob_id(data)
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int = 2


def test_every_file_digest_reads_the_whole_file(tmp_path):
    """The one file hash (weights.hash_file, chunk by chunk) behind sha256_of, the git blob
    id and the checksum a weights description stores: equal to hashlib over all the bytes of
    a file that spans several chunks."""
    data = bytes(range(256)) * (2 * weights.CHUNK // 256) + b"tail!"
    path = tmp_path / "big.pth"
    path.write_bytes(data)
    assert weights.sha256_of(path) == Checksum("sha256", "").of(path) == hashlib.sha256(data).hexdigest()
    assert Checksum("git-blob", "").of(path) == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    model = torch.nn.Linear(2, 2)
    model.config = ToyConfig()  # save_checkpoint describes the model's config
    save_checkpoint(model, tmp_path / "w.pth", description={"step": 1})
    document = json.loads((tmp_path / "w.json").read_text())
    assert document["sha256"] == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()


def test_a_name_or_the_usual_place_of_one_is_registered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weights.registered_entry("gma-sintel").name == "gma-sintel"
    assert weights.registered_entry("checkpoints/gma-sintel.pth").name == "gma-sintel"
    assert weights.registered_entry(str(tmp_path / "checkpoints" / "gma-sintel.pth")).name == "gma-sintel"
    assert weights.registered_entry("elsewhere/gma-sintel.pth") is None
    assert weights.registered_entry("gma") is None


# ------------------------------------------------------------------ downloads
def test_download_verifies_then_renames(online, tmp_path):
    data = tiny_weights()
    online.routes["/checkpoints/tiny.pth"] = Route(data)
    path = ensure(entry_for(data), folder=tmp_path / "ckpt", progress=False)
    assert path == tmp_path / "ckpt" / "tiny.pth" and path.read_bytes() == data
    assert leftovers(path.parent) == []
    assert torch.equal(read_state_dict(path)["a.bias"], torch.ones(2))  # weights_only loading
    assert ensure(entry_for(data), folder=tmp_path / "ckpt") == path  # there: no second request
    assert online.requests == ["/checkpoints/tiny.pth"]


@pytest.mark.parametrize("case", ["wrong hash", "truncated", "html", "lfs pointer", "not found"])
def test_bad_downloads_are_refused_and_deleted(case, online, tmp_path):
    data = tiny_weights()
    entry = entry_for(data)
    route = {
        "wrong hash": Route(data[:-1] + b"!"),
        "truncated": Route(data[: len(data) // 2], length=len(data)),
        "html": Route(b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", content_type="text/html"),
        "lfs pointer": Route(
            b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 80843701\n",
            content_type="text/plain",
        ),
        "not found": None,
    }[case]
    if route is not None:
        online.routes["/checkpoints/tiny.pth"] = route
    with pytest.raises(WeightsUnavailable) as error:
        ensure(entry, folder=tmp_path, progress=False)
    message = str(error.value)
    url = f"{online.url}/checkpoints/tiny.pth"
    first, command, download = message.splitlines()  # what went wrong; then how to get the file by hand
    assert first.startswith("tiny: ") and len(first) < 200
    assert command == "  run where there is internet: python -m core.weights fetch tiny --folder " + str(tmp_path)
    assert download == f"  (or download {url} to {tmp_path / 'tiny.pth'})"
    expected = {
        "wrong hash": "checksum mismatch",
        "truncated": f"cut short ({len(data) // 2} of {len(data)} bytes)",
        "html": "an HTML page, not the weights",
        "lfs pointer": "a Git LFS pointer, not the weights",
        "not found": "HTTP 404",
    }[case]
    assert expected in first, message
    if case == "wrong hash":  # both hashes named
        expected_and_got = f"expected git blob id {entry.checksum.value}, got git blob id {git_blob_id(route.body)}"
        assert f"{expected_and_got} ({len(route.body)} bytes); deleted" in first
    assert not (tmp_path / "tiny.pth").exists() and leftovers(tmp_path) == []


def test_sha256_prefix_checksums_accept_the_file_and_refuse_another(online, tmp_path):
    """The ImageNet ResNet-50's kind of checksum (torch.hub's sha256 prefix in the file name):
    digest against hashlib and a published test vector, downloads of the right and a wrong
    file, and the status of a file already there."""
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    # FIPS 180-2's test vector for "abc"
    assert Checksum("sha256", "").of(abc) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = tiny_weights()
    full = hashlib.sha256(data).hexdigest()
    entry = dataclasses.replace(
        entry_for(data, name="hub"),
        checksum=Checksum("sha256", full[:8]),
        base_url=online.url,
        url_path="hub.pth",
        mirrored=False,
    )
    assert entry.checksum.describe() == f"sha256 prefix {full[:8]}"
    assert Checksum("sha256", full).describe() == f"sha256 {full}"  # a whole digest is not called a prefix
    # a file whose sha256 starts otherwise (one changed byte changes the digest from its first digit on)
    wrong = data[:-1] + b"!"
    assert not hashlib.sha256(wrong).hexdigest().startswith(full[:8])
    online.routes["/hub.pth"] = Route(wrong)
    with pytest.raises(WeightsUnavailable) as error:
        ensure(entry, folder=tmp_path / "cache", progress=False)
    message = str(error.value)
    assert (
        f"checksum mismatch: expected sha256 prefix {full[:8]}, got sha256 {hashlib.sha256(wrong).hexdigest()}"
        in message
    ), message
    assert not (tmp_path / "cache" / "hub.pth").exists() and leftovers(tmp_path / "cache") == []
    # the right file: accepted by its prefix, and `status` verifies it; a wrong one in its place differs
    online.routes["/hub.pth"] = Route(data)
    path = ensure(entry, folder=tmp_path / "cache", progress=False)
    assert path.read_bytes() == data and weights.status(entry, tmp_path / "cache") == "verified"
    path.write_bytes(wrong)
    assert weights.status(entry, tmp_path / "cache") == (
        f"checksum differs (sha256 {hashlib.sha256(wrong).hexdigest()})"
    )
    # the full digest is compared as a prefix too; a digest that only shares a shorter prefix is refused
    assert Checksum("sha256", full).matches(full) and not Checksum("sha256", full[:7] + "x").matches(full)


def test_connection_refused_and_offline_make_no_file(tmp_path, monkeypatch, server):
    monkeypatch.delenv(weights.OFFLINE_VARIABLE, raising=False)
    monkeypatch.setenv(weights.BASE_URL_VARIABLE, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(
        WeightsUnavailable, match=r"(?s)cannot connect .*\n  run where .*python -m core.weights fetch tiny"
    ):
        ensure(entry_for(b"x"), folder=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv(weights.BASE_URL_VARIABLE, server.url)
    server.routes["/checkpoints/tiny.pth"] = Route(b"x")
    for offline, environ in ((True, {}), (False, {weights.OFFLINE_VARIABLE: "1"})):
        with pytest.raises(WeightsUnavailable) as error:
            ensure(entry_for(b"x"), folder=tmp_path, offline=weights.offline_requested(offline, environ))
        assert "downloads are off" in str(error.value) and f"{server.url}/checkpoints/tiny.pth" in str(error.value)
    assert server.requests == [] and list(tmp_path.iterdir()) == []
    assert not weights.offline_requested(False, {weights.OFFLINE_VARIABLE: "0"})


def test_a_malformed_url_is_refused_and_a_bug_in_the_transfer_keeps_its_traceback(online, tmp_path, monkeypatch):
    """A base URL without a scheme is said like any other failed download; a ValueError from inside the
    transfer (a bug, planted) is not taken for a failed download: it passes as it is."""
    monkeypatch.setenv(weights.BASE_URL_VARIABLE, "127.0.0.1/no-scheme")
    with pytest.raises(WeightsUnavailable, match="malformed URL"):
        ensure(entry_for(b"x"), folder=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv(weights.BASE_URL_VARIABLE, online.url)
    online.routes["/checkpoints/tiny.pth"] = Route(b"x")

    def planted(*args, **kwargs):
        raise ValueError("planted")

    monkeypatch.setattr(weights.Checksum, "of", planted)
    with pytest.raises(ValueError, match="^planted$"):
        ensure(entry_for(b"x"), folder=tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_a_killed_download_is_never_taken_for_weights(online, tmp_path, monkeypatch):
    """`python -m core.weights fetch` killed mid-transfer leaves only a hidden `.part` file:
    the scripts still find no weights, and the next download removes it."""
    data = tiny_weights() * 50
    stall = threading.Event()
    online.routes["/checkpoints/gma-sintel.pth"] = Route(data, stall=stall)
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.weights", "fetch", "gma-sintel", "--folder", str(folder)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in folder.glob(".gma-sintel.pth.*.part")):
            assert time.monotonic() < deadline and proc.poll() is None, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stall.set()
    assert not (folder / "gma-sintel.pth").exists()
    partial = leftovers(folder)
    assert len(partial) == 1 and partial[0].endswith(".part")
    gma = dataclasses.replace(weights.REGISTRY["gma-sintel"], checksum=Checksum("git-blob", git_blob_id(data)))
    with pytest.raises(WeightsUnavailable, match="missing"):
        ensure(gma, folder=folder, offline=True)
    online.routes["/checkpoints/gma-sintel.pth"] = Route(data)
    assert ensure(gma, folder=folder, progress=False).read_bytes() == data
    assert leftovers(folder) == []


# ------------------------------------------------------------------ python -m core.weights
def test_list_and_fetch_commands(online, tmp_path):
    """`python -m core.weights list` and `fetch` as subprocesses against the local server (about 15 s:
    each starts Python and torch)."""
    env = {**subprocess_env(), weights.BASE_URL_VARIABLE: online.url}
    env.pop(weights.OFFLINE_VARIABLE, None)
    (tmp_path / "gma-sintel.pth").write_bytes(b"not the release")
    listing = subprocess.run(
        [sys.executable, "-m", "core.weights", "list", "--folder", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert f"decflow-facialflownet: {tmp_path / 'decflow-facialflownet.pth'} [missing]" in out
    differs = f"checksum differs (git blob id {git_blob_id(b'not the release')})"
    assert f"gma-sintel: {tmp_path / 'gma-sintel.pth'} [{differs}]" in out
    assert "fbd307fcf6c3e1dcaa033d87b82cabfc6f71bf61" in out and "resnet50-imagenet" in out
    assert f"{online.url}/checkpoints/gma-sintel.pth" in out

    fetch = subprocess.run(
        [sys.executable, "-m", "core.weights", "fetch", "nonsense"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fetch.returncode == 2 and "decflow-facialflownet, gma-sintel, resnet50-imagenet" in fetch.stderr
    online.routes["/checkpoints/decflow-facialflownet.pth"] = Route(b"<html>moved</html>", content_type="text/html")
    fetch = subprocess.run(
        [sys.executable, "-m", "core.weights", "fetch", "decflow-facialflownet", "--folder", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fetch.returncode == 2 and "Traceback" not in fetch.stderr  # 2, as every entry point's input errors
    assert "an HTML page" in fetch.stderr and not (tmp_path / "decflow-facialflownet.pth").exists()
    assert online.requests == ["/checkpoints/decflow-facialflownet.pth"]


# ------------------------------------------------------------------ the scripts
@pytest.fixture
def served_release(online, decflow_checkpoint, monkeypatch):
    """The session's DecFlow file served as the authors' release, with its own checksum in the registry."""
    data = decflow_checkpoint.read_bytes()
    online.routes["/checkpoints/decflow-facialflownet.pth"] = Route(data)
    release = weights.REGISTRY["decflow-facialflownet"]
    monkeypatch.setitem(
        weights.REGISTRY, release.name, dataclasses.replace(release, checksum=Checksum("git-blob", git_blob_id(data)))
    )
    return data


def test_get_flow_fetches_the_release_on_a_fresh_clone(served_release, online, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--iters", "1", "--device", "cpu", "--output", "out"]
    written = get_flow.main(get_flow.get_args_parser().parse_args(argv))
    assert written == [Path("out") / "demo_frame1-frame2_flow.png"] and written[0].is_file()
    captured = capsys.readouterr()
    url = f"{online.url}/checkpoints/decflow-facialflownet.pth"
    assert f"downloading decflow-facialflownet from {url} to checkpoints/decflow-facialflownet.pth" in captured.err
    assert "checkpoint: checkpoints/decflow-facialflownet.pth (default" in captured.out
    assert Path("checkpoints/decflow-facialflownet.pth").read_bytes() == served_release
    get_flow.main(get_flow.get_args_parser().parse_args([*argv, "--overwrite", "--model", "decflow-facialflownet"]))
    assert online.requests == ["/checkpoints/decflow-facialflownet.pth"]  # once


def test_missing_weights_say_what_is_missing_then_the_command(served_release, online, tmp_path, monkeypatch):
    """What is missing on a first line under 200 characters, the command on the next, the URL after."""
    monkeypatch.chdir(tmp_path)
    url = f"{online.url}/checkpoints/decflow-facialflownet.pth"
    off = "checkpoints/decflow-facialflownet.pth is missing and downloads are off (--offline or DECFLOW_OFFLINE=1)"
    remedy = [
        "  run where there is internet: python -m core.weights fetch decflow-facialflownet",
        f"  (or download {url} to checkpoints/decflow-facialflownet.pth)",
    ]
    expected = {
        "--offline": [
            "get_flow.py: error: no weights: neither checkpoints/decflow-facialflownet.pth (the release) nor "
            "checkpoints/decflow.pth (seed stage 2) exists; pass --model PATH, or get the release:",
            f"  decflow-facialflownet: {off}",
            *remedy,
        ],
        "--model": [f"get_flow.py: error: --model decflow-facialflownet: {off}", *remedy],
    }
    for argv in (["--offline"], ["--offline", "--model", "decflow-facialflownet"]):
        with pytest.raises(SystemExit) as error:
            get_flow.main(get_flow.get_args_parser().parse_args([*argv, "--device", "cpu"]))
        lines = str(error.value).splitlines()
        assert lines == expected[argv[-2] if len(argv) > 1 else argv[0]] and len(lines[0]) < 200
    assert online.requests == []

    # a failed download, as a real script: no traceback, exit status 2
    env = {**subprocess_env(), weights.BASE_URL_VARIABLE: f"http://127.0.0.1:{free_port()}"}
    env.pop(weights.OFFLINE_VARIABLE, None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "get_flow.py"), "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("get_flow.py: error:"))
    assert len(lines[first]) < 200 and lines[first + 1].startswith("  decflow-facialflownet: cannot connect")
    assert lines[first + 2] == remedy[0] and not list(Path("checkpoints").glob("*.pth"))


def test_evaluate_names_the_fetch_command(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        evaluate.main(evaluate.get_args_parser().parse_args(["--root", str(synthetic_root), "--no_progress"]))
    first, *rest = str(error.value).splitlines()
    assert first.startswith("evaluate.py: error: no weights: neither") and len(first) < 200
    assert "checkpoints/decflow.pth" in first and "--model PATH" in first
    assert rest[1] == "  run where there is internet: python -m core.weights fetch decflow-facialflownet"


def test_a_file_under_the_release_name_that_is_not_the_release_is_said_once_and_used(
    decflow_checkpoint, tmp_path, monkeypatch, capsys
):
    """The real registry entry: the seeded stand-in has another git blob id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(decflow_checkpoint, tmp_path / "checkpoints" / "decflow-facialflownet.pth")
    argv = ["--iters", "1", "--device", "cpu", "--output", "out"]
    get_flow.main(get_flow.get_args_parser().parse_args(argv))
    captured = capsys.readouterr()
    note = (
        "note: checkpoints/decflow-facialflownet.pth is not the verified decflow-facialflownet (git blob id "
        f"{git_blob_id(decflow_checkpoint.read_bytes())}, expected fbd307fcf6c3e1dcaa033d87b82cabfc6f71bf61): "
        "using it as it is"
    )
    assert captured.err.count(note) == 1, captured.err
    assert "checkpoint: checkpoints/decflow-facialflownet.pth (default" in captured.out
    assert Path("out/demo_frame1-frame2_flow.png").is_file()


def test_a_name_that_is_neither_registered_nor_a_file_lists_the_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as error:
        get_flow.main(get_flow.get_args_parser().parse_args(["--model", "decflow-sintel", "--device", "cpu"]))
    assert "decflow-sintel" in str(error.value)
    assert "registered: decflow-facialflownet, gma-sintel, resnet50-imagenet" in str(error.value)
    with pytest.raises(SystemExit):
        run_train(["--restore_ckpt", "gma-things", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--restore_ckpt: file not found: gma-things" in err and "decflow-facialflownet, gma-sintel" in err


TRAIN_ONE_STEP = tiny_train_args(frozen=False, val_freq=5)  # stage 1 (it reads the ImageNet weights)


def imagenet_resnet50_stand_in() -> bytes:
    """What the semantic encoder reads of torchvision's ResNet-50 (stem, layer1, layer2; seeded, random)."""
    torch.manual_seed(0)
    state = {k: v for k, v in resnet50().state_dict().items() if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def served_weights(online, tmp_path, monkeypatch):
    """gma-sintel and the ImageNet ResNet-50 as the registry names them, with the checksums of
    stand-ins served by the local server (a route per test); torch.hub's cache in tmp_path."""
    gma = make_gma_checkpoint(tmp_path / "served-gma.pth").read_bytes()
    resnet = imagenet_resnet50_stand_in()
    resnet_sha256 = hashlib.sha256(resnet).hexdigest()
    entry = weights.REGISTRY["gma-sintel"]
    monkeypatch.setitem(
        weights.REGISTRY, entry.name, dataclasses.replace(entry, checksum=Checksum("git-blob", git_blob_id(gma)))
    )
    entry = weights.REGISTRY["resnet50-imagenet"]
    monkeypatch.setitem(
        weights.REGISTRY,
        entry.name,
        dataclasses.replace(entry, base_url=online.url, checksum=Checksum("sha256", resnet_sha256)),
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return {"gma": gma, "resnet": resnet, "hub": tmp_path / "hub" / "checkpoints" / entry.file}


def test_train_fetches_gma_sintel_and_the_imagenet_resnet_for_stage_1(
    served_weights, online, synthetic_dataset, tmp_path, monkeypatch, capsys
):
    """The seed stage-1 command's `--restore_ckpt checkpoints/gma-sintel.pth`, absent, and the
    semantic encoder's ResNet-50: downloaded, then loaded; the weights' .json says where the
    semantic encoder comes from."""
    monkeypatch.chdir(tmp_path)
    online.routes["/checkpoints/gma-sintel.pth"] = Route(served_weights["gma"])
    online.routes["/resnet50-0676ba61.pth"] = Route(served_weights["resnet"])
    root = synthetic_dataset(**TRAIN_DATASET)
    argv = ["--restore_ckpt", "checkpoints/gma-sintel.pth", "--root", str(root), "--output", "out", "--name", "s1"]
    run_train([*argv, *TRAIN_ONE_STEP])
    err = capsys.readouterr().err
    assert f"downloading gma-sintel from {online.url}/checkpoints/gma-sintel.pth to checkpoints/gma-sintel.pth" in err
    assert Path("checkpoints/gma-sintel.pth").read_bytes() == served_weights["gma"]
    assert served_weights["hub"].read_bytes() == served_weights["resnet"]
    log = Path("out/s1.log").read_text()
    assert "stage 1 (non-strict): loaded checkpoints/gma-sintel.pth" in log
    assert f"semantic encoder: {served_weights['hub']}" in log and "RANDOM" not in log
    assert json.loads(Path("out/s1.json").read_text())["semantic_encoder"] == str(served_weights["hub"])
    assert online.requests == ["/checkpoints/gma-sintel.pth", "/resnet50-0676ba61.pth"]


@pytest.mark.parametrize("failure", ["semantic encoder, nothing listens", "semantic encoder, 404", "--restore_ckpt"])
def test_a_failed_download_stops_train_before_any_step(
    failure, served_weights, online, synthetic_dataset, tmp_path, monkeypatch, capsys
):
    """Without --offline a download that fails is a one-line error naming the file and the fetch
    command (exit 2), before any step, and the run leaves no file."""
    monkeypatch.chdir(tmp_path)
    hub = served_weights["hub"]
    if failure == "semantic encoder, nothing listens":
        entry = weights.REGISTRY["resnet50-imagenet"]
        unreachable = dataclasses.replace(entry, base_url=f"http://127.0.0.1:{free_port()}")
        monkeypatch.setitem(weights.REGISTRY, entry.name, unreachable)
    if failure != "--restore_ckpt":
        online.routes["/checkpoints/gma-sintel.pth"] = Route(served_weights["gma"])
    root = synthetic_dataset(**TRAIN_DATASET)
    argv = ["--restore_ckpt", "gma-sintel", "--root", str(root), "--output", "out", "--name", "s1", *TRAIN_ONE_STEP]
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: run_train(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    semantic = f"error: ImageNet weights of the semantic encoder: {hub}:"
    expected = {
        "semantic encoder, nothing listens": f"{semantic} cannot connect (",
        "semantic encoder, 404": f"{semantic} HTTP 404 ",
        "--restore_ckpt": "error: --restore_ckpt gma-sintel: checkpoints/gma-sintel.pth: HTTP 404 ",
    }[failure]
    command = "resnet50-imagenet" if failure.startswith("semantic") else "gma-sintel"
    assert line.startswith(expected), line
    assert line.endswith(f"; run where there is internet: python -m core.weights fetch {command}"), line
    assert len(line) < 200 + len(str(hub))  # the cache's folder is the user's
    assert not Path("out").exists() and not hub.exists() and leftovers(hub.parent) == []


def test_offline_training_without_the_imagenet_resnet_records_it(synthetic_dataset, tmp_path, monkeypatch):
    """--offline and no ResNet-50 in torch.hub's cache: stage 1 goes on with a random semantic
    encoder and says so in its log, its final line and the .json of its weights, also after a
    resume; stage 2 from those weights records it too."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    root = synthetic_dataset(**TRAIN_DATASET)
    gma = make_gma_checkpoint(tmp_path / "gma.pth")
    out = tmp_path / "out"
    common = ["--root", str(root), "--output", str(out), "--offline", *TRAIN_ONE_STEP]
    stage1 = [*common, "--restore_ckpt", str(gma), "--name", "s1", "--num_steps", "2", "--val_freq", "2"]
    run_train([*stage1, "--stop_at", "1"])
    run_train([*stage1, "--resume"])
    log = (out / "s1.log").read_text()
    assert "WARNING: no ImageNet ResNet-50 weights, the FROZEN semantic encoder stays RANDOM" in log
    done = [line for line in log.splitlines() if "done: " in line]
    assert len(done) == 1 and done[0].endswith(
        "WARNING: its frozen semantic encoder is RANDOM (no ImageNet weights): not the paper's model"
    )
    for weights_file in ("s1.json", "2_s1.json"):
        assert json.loads((out / weights_file).read_text())["semantic_encoder"] == "random initialisation"
    run_train([*common, "--restore_ckpt", str(out / "s1.pth"), "--name", "s2", "--frozen"])
    assert json.loads((out / "s2.json").read_text())["semantic_encoder"] == "random initialisation"
    assert "RANDOM" in (out / "s2.log").read_text().splitlines()[-1]

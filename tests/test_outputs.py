"""Output folders that cannot destroy input (flowood.outputs), for every command that writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import start_flowood, tiny_checkpoint

from flowood.cli.main import main
from flowood.outputs import (
    LOCK,
    MANIFEST,
    OutputError,
    OutputExistsError,
    OutputLockedError,
    atomic_write,
    open_output_folder,
    remove_output_folder,
)


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` (symlinks not followed) with its bytes."""
    files = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                files[str(p)] = p.read_bytes()
    return files


# -- the module ---------------------------------------------------------------------------------------------------
def test_a_new_folder_is_created_locked_and_marked(tmp_path):
    with open_output_folder(tmp_path / "run", "evaluate") as folder:
        assert (tmp_path / "run" / LOCK).is_file()
        with atomic_write(tmp_path / "run" / "metrics.json") as tmp:
            tmp.write_text("{}")
        with atomic_write(tmp_path / "run" / "figs" / "a.png") as tmp:
            tmp.write_bytes(b"png")
        assert folder.files == ["metrics.json", "figs/a.png"]
    assert not (tmp_path / "run" / LOCK).exists()
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["command"] == "evaluate" and manifest["files"] == ["metrics.json", "figs/a.png"]


def test_overwrite_removes_only_the_files_flowood_wrote(tmp_path):
    out = tmp_path / "run"
    with open_output_folder(out, "evaluate"):
        for name in ("metrics.json", "figs/a.png"):
            with atomic_write(out / name) as tmp:
                tmp.write_text("x")
    (out / "my_notes.txt").write_text("mine")  # the user adds a file later
    (out / "figs" / "mine.png").write_text("mine too")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        open_output_folder(out, "evaluate")
    with open_output_folder(out, "evaluate", overwrite=True):
        pass
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        [MANIFEST, "figs/mine.png", "my_notes.txt"]


def test_a_manifest_cannot_make_flowood_delete_outside_its_folder(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("keep")
    with open_output_folder(out, "evaluate"):
        pass
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] = ["../victim.txt", str(victim)]
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "x.json").write_text("{}")
    with open_output_folder(out, "evaluate", overwrite=True):
        pass
    assert victim.read_text() == "keep"


def test_folders_of_user_files_are_refused_even_with_overwrite(tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"cat")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="files flowood did not write") as info:
            open_output_folder(user, "train", overwrite=overwrite)
        assert "overwrite" not in str(info.value)  # never invites the destructive flag
    assert snapshot(user) == {str(user / "cat.jpg"): b"cat"}


@pytest.mark.parametrize("place", ["cwd", "parent", "home", "root"])
def test_places_flowood_never_writes_into(tmp_path, monkeypatch, place):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    target = {"cwd": Path("."), "parent": Path(".."), "home": Path.home(), "root": Path("/")}[place]
    with pytest.raises(OutputError, match="refusing"):
        open_output_folder(target, "train", overwrite=True)


def test_inputs_must_not_overlap_outputs(tmp_path):
    data = tmp_path / "data"
    (data / "class").mkdir(parents=True)
    ckpt = tmp_path / "runs" / "a" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    with pytest.raises(OutputError, match="it is an input"):
        open_output_folder(data, "evaluate", [data])
    with pytest.raises(OutputError, match="lies inside the input folder"):
        open_output_folder(data / "class" / "out", "evaluate", [data])
    with pytest.raises(OutputError, match="holds an input"):
        open_output_folder(tmp_path / "runs", "evaluate", [ckpt])
    assert not (data / "class" / "out").exists()


def test_another_commands_output_is_not_replaced(tmp_path):
    with open_output_folder(tmp_path / "run", "train"), atomic_write(tmp_path / "run" / "checkpoints" / "last.ckpt") \
            as tmp:
        tmp.write_bytes(b"weights")
    with pytest.raises(OutputError, match="flowood train"):
        open_output_folder(tmp_path / "run", "evaluate", overwrite=True)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


def test_one_writer_per_folder_and_stale_locks_are_taken_over(tmp_path):
    out = tmp_path / "run"
    first = open_output_folder(out, "train")
    with pytest.raises(OutputLockedError, match=f"process {os.getpid()}"):
        open_output_folder(out, "train", resume=True)
    first.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "then"}))
    with pytest.warns(UserWarning, match="no longer runs"):
        open_output_folder(out, "train", resume=True).close()


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_remove_output_folder_keeps_user_files(tmp_path):
    out = tmp_path / "eval"
    with open_output_folder(out, "evaluate"), atomic_write(out / "metrics.json") as tmp:
        tmp.write_text("{}")
    remove_output_folder(out)
    assert not out.exists()
    with open_output_folder(out, "evaluate"):
        pass
    (out / "mine.txt").write_text("x")
    remove_output_folder(out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_an_unwritable_output_fails_before_any_data_are_read(tmp_path, monkeypatch, capsys):
    import flowood.data.registry as registry

    def no_loading(*args, **kwargs):
        raise AssertionError("data were loaded before the output folder was checked")
    ckpt = tiny_checkpoint(tmp_path / "models" / "tiny.pt", num_scales=1)
    monkeypatch.setattr(registry, "load_dataset", no_loading)
    start = time.time()
    code = main(["evaluate", "--checkpoint", str(ckpt), "--ood", "noise", "--out", "/proc/flowood-cannot-write",
                 "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write into /proc/flowood-cannot-write" in err and len(err.strip().splitlines()) == 1
    assert time.time() - start < 5


# -- every writing command, with --out at places it must refuse ------------------------------------------------------
@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working directory with user files, an image folder (the input), a folder of user files and a symlink."""
    from PIL import Image

    work, data, user = tmp_path / "work", tmp_path / "data", tmp_path / "user"
    for folder in (work, data / "digits", user):
        folder.mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(data / "digits" / f"{i}.png")
    (user / "thesis.tex").write_text("\\begin{document}")
    np.savez(user / "user.npz", x=np.arange(3))
    (tmp_path / "link").symlink_to(user)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "exp.yaml").write_text("name: exp\ntitle: t\ntrain: {dataset: digits}\nevaluate: {ood: [noise]}\n")
    monkeypatch.chdir(work)
    return {"work": work, "data": data, "user": user, "link": tmp_path / "link", "configs": configs,
            "ckpt": tiny_checkpoint(tmp_path / "models" / "tiny.pt", num_scales=1), "root": tmp_path}


def commands(p: dict, out: str) -> dict[str, list[str]]:
    folder = f"folder:{p['data']}"
    return {
        "train": ["train", "--dataset", folder, "--num_blocks", "1", "--num_mid_channels", "4", "--max_steps", "1",
                  "--no_progress", "--out", out],
        "evaluate": ["evaluate", "--checkpoint", str(p["ckpt"]), "--dataset", folder, "--ood", "noise",
                     "--no_progress", "--out", out],
        "inspect": ["inspect", "--checkpoint", str(p["ckpt"]), "--images", f"{folder}:test:0-1", "--no_progress",
                    "--out", out],
        "embed": ["embed", "--dataset", folder, "--train-classifier", "--no_progress", "--out", out],
        "reproduce": ["reproduce", "--configs", str(p["configs"]), "--scale", "smoke", "--out", out],
    }


@pytest.mark.parametrize("command", ["train", "evaluate", "inspect", "embed", "reproduce"])
def test_every_writing_command_refuses_unsafe_outputs_and_keeps_every_user_file(places, command, capsys):
    p = places
    outs = {"the current directory": ".", "its parent": "..", "the input folder": str(p["data"]),
            "a folder inside the input": str(p["data"] / "digits" / "out"), "a folder of user files": str(p["user"]),
            "a symlink to it": str(p["link"])}
    if command == "embed":  # embed writes files: the same places as file paths
        outs.update({"a folder inside the input": str(p["data"] / "digits" / "emb.npz"),
                     "a user's file": str(p["user"] / "user.npz"),
                     "a user's file via a symlink": str(p["link"] / "user.npz")})
    if command == "reproduce":
        outs.update({"the input folder": str(p["configs"]), "a folder inside the input": str(p["configs"] / "out")})
    before = snapshot(p["root"])
    for what, out in outs.items():
        for overwrite in ([], ["--overwrite"]) if command != "reproduce" else ([],):
            code = main(commands(p, out)[command] + overwrite)
            err = capsys.readouterr().err.strip()
            assert code == 2, (what, overwrite, err)
            assert len(err.splitlines()) == 1 and "Traceback" not in err, (what, err)
            assert snapshot(p["root"]) == before, f"{command} --out {what} {overwrite} changed files"
    assert not list(p["root"].rglob(MANIFEST)) and not list(p["root"].rglob(LOCK))


def test_a_folder_without_a_run_is_not_reported_as_one(places, capsys):
    code = main(commands(places, str(places["user"]))["train"])
    err = capsys.readouterr().err
    assert code == 2 and "did not write" in err and "--overwrite" not in err


def test_evaluate_twice_into_its_ood_folder_is_refused(places, capsys):
    args = ["evaluate", "--checkpoint", str(places["ckpt"]), "--ood", f"folder:{places['data']}", "--out",
            str(places["data"]), "--no_progress"]
    for _ in range(2):
        assert main(args) == 2
        assert "input" in capsys.readouterr().err
    assert sorted(p.name for p in (places["data"] / "digits").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]


def test_two_trainings_into_one_folder_cannot_mix(tmp_path, fashionmnist_npz, capsys):
    """The second run is refused while the first writes; the folder then holds the first run only."""
    out = tmp_path / "run"
    args = ["train", "--dataset", fashionmnist_npz, "--num_blocks", "1",
            "--num_mid_channels", "4", "--batch_size", "16", "--max_steps", "60", "--num_epochs", "100",
            "--max_test_samples", "32", "--no_progress", "--out", str(out)]
    first = start_flowood(*args)
    deadline = time.time() + 120
    while not (out / LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second could start"
    second = main(args + ["--overwrite"])  # in this process: it reaches the lock within a fraction of a second
    err = capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stdout.read().decode()[-2000:]
    assert second == 2 and "being written by another flowood run" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 60 and not (out / LOCK).exists()

"""Hostile inputs, second round: one writer per run directory, parts that prove themselves, nothing replaced before
its successor exists, and inputs that used to be accepted silently or end in a traceback.

The property is the one of ``test_hostile.py``: one ``error:`` line, the README's exit status, no traceback, and
every file that existed before byte-identical afterwards. The concurrency cases start real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnzoo.cli import main
from cnnzoo.train.api import train
from test_hostile import TINY, _png, _tree

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
TINY_FLAGS = ["--subset", "64", "--val-size", "32", "--batch-size", "32", "--device", "cpu", "--threads", "1"]


def _check(capsys, argv: list[str], root: Path, *, code: int = 2, same: bool = True) -> str:
    """``cnnzoo ARGV`` exits with ``code`` after one ``error:`` line, no traceback; with ``same``, the tree under
    ``root`` is byte-identical afterwards (nothing changed, nothing added). Returns stderr."""
    before = _tree(root)
    got = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert got == code and err.startswith("error: ") and err.count("\n") == 1, (argv, got, err)
    if same:
        assert _tree(root) == before, argv
    return err


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished tiny run (read only: tests change copies)."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("home")
        mp.setenv("CNNZOO_CACHE_DIR", str(home / "cache"))
        mp.setenv("CNNZOO_DATA_DIR", str(home / "data"))
        out = tmp_path_factory.mktemp("runs") / "r"
        train("resnet20", "digits", out=out, quiet=True, **TINY)
    return out


def _copy(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("tensorboard")))


# --- 1. one writer per run directory ---------------------------------------------------------------------------------


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the first writer ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_two_real_trainings_on_one_run_directory_the_second_is_refused(tmp_path, capsys):
    """Two `cnnzoo train --out R` processes: the second (a new run, --overwrite, or --resume) gets one line naming the
    first; the first is not disturbed; after it stops, its lock is gone and the run resumes."""
    run = tmp_path / "R"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnzoo",
            "train",
            "resnet20",
            "--data",
            "digits",
            "--out",
            str(run),
            "--epochs",
            "500",
            "--quiet",
            *TINY_FLAGS,
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (run / "last.pt").is_file() and (run / ".cnnzoo-lock").is_file(), first, "its first epoch")
        for extra in (
            ["resnet20", "--data", "digits", "--out", str(run)],
            ["resnet20", "--out", str(run), "--overwrite"],
            ["--resume", str(run)],
        ):
            second = subprocess.run(
                [sys.executable, "-m", "cnnzoo", "train", *extra, "--quiet", "--epochs", "1", "--device", "cpu"],
                env=ENV,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert second.returncode == 2, second.stderr
            assert second.stderr.startswith("error: ") and second.stderr.count("\n") == 1, second.stderr
            assert f"process {first.pid}" in second.stderr and "in use" in second.stderr, second.stderr
        assert first.poll() is None  # still training, undisturbed
        # The same from this process, with the tree compared (the first writer is stopped meanwhile by nothing).
        first.send_signal(signal.SIGSTOP)  # frozen: its files cannot change while the tree is compared
        try:
            err = _check(capsys, ["train", "--resume", str(run), "--quiet"], tmp_path)
            assert f"process {first.pid}" in err
        finally:
            first.send_signal(signal.SIGCONT)
    finally:
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=240)
    assert code == 143, first.stderr.read()
    assert not (run / ".cnnzoo-lock").exists()  # released with the process
    assert main(["train", "--resume", str(run), "--quiet", "--stop-after", "1", "--device", "cpu"]) == 0


_HOLDER = """
import sys, time
from cnnzoo.train import rundir_lock
rundir_lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_stale_and_taken_over(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _check(capsys, ["train", "--resume", str(run), "--quiet", "--epochs", "2"], tmp_path)
        assert f"process {holder.pid}" in err
        err = _check(capsys, ["train", "resnet20", "--out", str(run), "--overwrite", "--quiet"], tmp_path)
        assert f"process {holder.pid}" in err
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the lock file stays, the flock goes with the process
        holder.wait()
    assert (run / ".cnnzoo-lock").is_file()
    from cnnzoo.train import rundir_lock

    with rundir_lock.hold(run):  # taken over at once: the kernel released the dead process's flock
        assert rundir_lock.holds(run)
    assert not (run / ".cnnzoo-lock").exists()
    # A lock file that is only a file (what any crash leaves) is no reason to refuse an "empty" folder either.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".cnnzoo-lock").write_text('{"pid": 1}')
    from cnnzoo.train.rundir import check_out

    check_out(empty)


# --- 3. --overwrite keeps the old run until the new one has its first checkpoint----------------------------------


@pytest.mark.parametrize(
    ("flags", "code", "fragment"),
    [
        (["--lr", "1e30"], 3, "non-finite loss"),
        (["--cutout", "1e30"], 2, "cutout"),
        (["--cutout", "100000"], 2, "cutout"),
        (["--image-size", "100000"], 2, "image"),
    ],
    ids=["lr-diverges", "cutout-not-an-int", "cutout-huge", "image-size-huge"],
)
def test_overwrite_that_fails_before_the_first_checkpoint_keeps_the_old_run(
    good_run, tmp_path, capsys, flags, code, fragment
):
    run = _copy(good_run, tmp_path / "run")
    argv = ["train", "resnet20", "--data", "digits", "--out", str(run), "--overwrite", "--quiet", *TINY_FLAGS, *flags]
    err = _check(capsys, argv, tmp_path, code=code)
    assert fragment in err
    if "last.pt" in err:  # a message names only files that exist, and they are what it says
        assert "none written" not in err.split("last.pt")[0][-40:]
    assert f"({run / 'last.pt'})" not in err  # the new run wrote no last.pt: it must not claim to keep one


def test_a_kill_in_the_middle_of_overwrite_is_recovered_by_the_next_writer(good_run, tmp_path, capsys):
    from cnnzoo.train import rundir as run_mod

    run = _copy(good_run, tmp_path / "run")
    before = _tree(run)
    # Killed after the old run was set aside and the new run's marker written, before its first checkpoint.
    aside = run_mod.set_aside(run)
    assert aside is not None and not (run / "best.pt").exists()
    (run / run_mod.MARKER).write_text('{"cnnzoo_run": 1, "id": "new"}')
    run_mod.recover_replaced(run)
    assert _tree(run) == before
    # Killed halfway through the set-aside itself (no .complete yet): undone the same way.
    aside = run / run_mod.ASIDE
    aside.mkdir()
    os.replace(run / "last.pt", aside / "last.pt")
    run_mod.recover_replaced(run)
    assert _tree(run) == before
    # The new run had written its last.pt: the replaced run goes.
    run_mod.set_aside(run)
    torch.save({"new": torch.zeros(1)}, run / "last.pt")
    run_mod.recover_replaced(run)
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]


# --- 2, 17, 18. study unpack: every part and every file proves itself


def _study(root: Path) -> Path:
    """A folder shaped like a study with an unfinished run (what pack carries), without training one."""
    run = root / "resnet20" / "seed-0"
    run.mkdir(parents=True)
    torch.save({"w": torch.arange(5000.0)}, run / "last.pt")
    _png(run / "curves.png", size=64)
    (root / "degradation.csv").write_text("depth,top1\n20,0.5\n")
    return root


def _parts(tmp_path: Path, name: str = "study", size: int = 4096) -> tuple[Path, list[Path]]:
    from cnnzoo.analysis.study.archive import pack

    parts = pack(_study(tmp_path / name), tmp_path / f"parts-{name}", part_size=size)
    assert len(parts) >= 3
    return tmp_path / f"parts-{name}", parts


def _flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    for i in range(6):
        blob[at + i] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d, p, t: p[1].write_bytes(p[1].read_bytes()[:1000]),  # a truncated middle part
        lambda d, p, t: _flip(p[1], 2000),  # six flipped bytes in a payload
        lambda d, p, t: _flip(p[0], 20),  # ... in a header
        lambda d, p, t: (os.replace(p[0], d / "x"), os.replace(p[1], p[0]), os.replace(d / "x", p[1])),  # swapped
        lambda d, p, t: shutil.copy(_parts(t, "other")[1][1], p[1]),  # a part of another pack, same name
        lambda d, p, t: p[-1].write_bytes(p[-1].read_bytes()[512:]),  # a part without its header (older cnnzoo)
        lambda d, p, t: p[-1].rename(d / p[-1].name.replace("-of-", "-of-9")),  # misnumbered
        lambda d, p, t: (d / p[-1].name.replace(p[-1].name[-18:-15], "999")).write_bytes(b"x"),  # beyond the count
        lambda d, p, t: p[1].unlink(),  # missing
    ],
    ids=[
        "truncated",
        "flipped",
        "flipped-header",
        "swapped",
        "foreign",
        "no-header",
        "misnumbered",
        "extra",
        "missing",
    ],
)
def test_unpack_of_damaged_parts_writes_nothing(tmp_path, capsys, damage):
    folder, parts = _parts(tmp_path)
    damage(folder, parts, tmp_path)
    dest = tmp_path / "dest"
    _check(capsys, ["study", "unpack", str(folder), str(dest)], tmp_path)
    (dest / "resnet20").mkdir(parents=True)  # into an existing folder too
    _check(capsys, ["study", "unpack", str(folder), str(dest)], tmp_path)


def test_unpack_round_trip_and_the_leftovers_of_a_kill_are_removed(tmp_path, capsys):
    folder, _ = _parts(tmp_path)
    # What a SIGKILL during a pack and an unpack leaves behind.
    (folder / ".study-001.tmp").write_bytes(b"half")
    (tmp_path / ".dest.unpack-abc.tmp" / "content").mkdir(parents=True)
    assert main(["study", "unpack", str(folder), str(tmp_path / "dest")]) == 0
    assert _tree(tmp_path / "dest") == _tree(tmp_path / "study")
    assert not (tmp_path / ".dest.unpack-abc.tmp").exists()
    from cnnzoo.analysis.study.archive import pack

    pack(tmp_path / "study", folder, part_size=4096)
    assert not (folder / ".study-001.tmp").exists()
    capsys.readouterr()


@pytest.mark.parametrize("mib", ["inf", "nan", "0", "1e300", "-1"])
def test_pack_part_size_out_of_range_is_one_line(tmp_path, capsys, mib):
    _study(tmp_path / "s")
    _check(capsys, ["study", "pack", str(tmp_path / "s"), str(tmp_path / "p"), "--part-mib", mib], tmp_path)


# --- 4. export replaces only what it wrote, never a run's own files ---------------------------------------------------


def test_export_never_replaces_a_file_it_did_not_write(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path / "run")
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("three years of work\n")
    base = ["export", str(run), "--format", "torchscript", "--output"]
    err = _check(capsys, [*base, str(thesis)], tmp_path)
    assert "--overwrite" in err
    for name in ("best.pt", "last.pt", "config.toml", "cnnzoo-run.json", "metrics.jsonl", "report.json"):
        for extra in ([], ["--overwrite"]):  # a run's own files: never, even with --overwrite
            _check(capsys, [*base, str(run / name), *extra], tmp_path)
    os.symlink(run / "best.pt", tmp_path / "link.pt")  # nor through a link
    _check(capsys, [*base, str(tmp_path / "link.pt"), "--overwrite"], tmp_path)
    # Its own earlier export is replaced (the run's default file), and with --overwrite a stranger's file.
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert main([*base, str(thesis), "--overwrite"]) == 0 and thesis.read_bytes()[:2] == b"PK"
    capsys.readouterr()


# --- 10, 19. a real full disk and a read-only destination: exit 1, one line, nothing left -----------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 400 kB tmpfs at tmp_path/small (root in a machine that allows mounts; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_an_os_error_everywhere(good_run, small_fs, tmp_path, capsys):
    from cnnzoo.analysis.study.archive import pack

    run = _copy(good_run, tmp_path / "run")
    err = _check(
        capsys, ["export", str(run), "--format", "torchscript", "--output", str(small_fs / "m.pt")], tmp_path, code=1
    )
    assert "No space left on device" in err
    err = _check(
        capsys,
        ["train", "resnet20", "--out", str(small_fs / "r"), "--quiet", *TINY_FLAGS, "--epochs", "1"],
        tmp_path,
        code=1,
    )
    assert "No space left on device" in err and not any(small_fs.iterdir())
    # The checkpoint writer itself (torch.save raises RuntimeError on ENOSPC): an OSError naming the file.
    from cnnzoo.atomic import save_atomic

    with pytest.raises(OSError, match="No space left"):
        save_atomic({"w": torch.zeros(200_000)}, small_fs / "big.pt")
    assert not any(small_fs.iterdir())
    # A study packed onto it.
    study = _study(tmp_path / "study")
    (study / "pad.bin").write_bytes(os.urandom(600_000))
    with pytest.raises(OSError):
        pack(study, small_fs / "parts", part_size=4096)
    assert not any((small_fs / "parts").iterdir())


def test_a_read_only_destination_is_status_1(good_run, tmp_path, capsys):
    if (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(tmp_path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("root ignores permission bits, and no read-only mount is possible here")
    try:
        if os.geteuid() != 0:
            tmp_path.chmod(0o555)
        base = ["export", str(good_run), "--format", "torchscript", "--output"]
        _check(capsys, [*base, str(tmp_path / "m.pt")], tmp_path, code=1)
        _check(capsys, ["train", "resnet20", "--out", str(tmp_path / "r"), "--quiet", *TINY_FLAGS], tmp_path, code=1)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path)], check=False)
        else:
            tmp_path.chmod(0o755)


# --- 5-8. what used to be accepted silently


def _edit(path: Path, edit) -> None:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def _commands(run: Path, image: Path) -> list[list[str]]:
    return [
        ["eval", str(run), "--device", "cpu"],
        ["predict", str(run), str(image)],
        ["export", str(run), "--format", "torchscript"],
    ]


def test_resume_refuses_other_data_or_recipe_instead_of_ignoring_them(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path / "run")
    for extra, fragment in ((["--data", "mnist"], "data"), (["--recipe", "fast"], "--recipe")):
        err = _check(capsys, ["train", "--resume", str(run), "--quiet", *extra], tmp_path)
        assert fragment in err
    from cnnzoo.errors import CnnzooError

    with pytest.raises(CnnzooError, match="cannot change data"):
        train(resume=run, data=str(tmp_path), quiet=True)


def test_other_data_is_refused_whatever_the_normalisation(good_run, tmp_path, capsys):
    """What the data holds is checked apart from its statistics: a checkpoint trained on data with other split sizes
    is refused by eval and resume even when mean/std agree (they do here: the same digits)."""
    run = _copy(good_run, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        _edit(run / name, lambda c: c["meta"]["data_counts"].update(test=12345))
    err = _check(capsys, ["eval", str(run), "--device", "cpu"], tmp_path)
    assert "12345" in err and "test images" in err
    _check(capsys, ["train", "--resume", str(run), "--quiet", "--epochs", "2"], tmp_path)


def test_a_checkpoint_of_another_run_copied_in_is_refused(good_run, tmp_path, capsys):
    a = _copy(good_run, tmp_path / "a")
    image = tmp_path / "img.png"
    _png(image, size=32)
    _edit(a / "best.pt", lambda c: c["meta"].update(run_id="0" * 32))  # as if copied from another run
    for argv in _commands(a, image):
        err = _check(capsys, argv, tmp_path)
        assert "run id" in err


def test_a_wrong_file_under_a_torchvision_name_is_refused(tmp_path, capsys, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18().state_dict(), cache / "resnet18-f37072fd.pth")  # random weights under the real name
    image = tmp_path / "img.png"
    _png(image, size=32)
    err = _check(capsys, ["predict", "--model", "resnet18", "--weights", "IMAGENET1K_V1", str(image)], tmp_path)
    assert "resnet18-f37072fd.pth" in err and "delete it" in err


# --- 9, 11, 14, 16, 20. hangs, crashes and tracebacks


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_recipe_config_or_run_file_that_is_not_a_regular_file_is_refused_unopened(good_run, tmp_path, capsys, kind):
    def make(path: Path) -> None:
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)  # opening it for reading would block forever
        elif kind == "device":
            os.symlink("/dev/zero", path)  # reading it never ends
        else:
            path.mkdir()

    recipe = tmp_path / "r.toml"
    make(recipe)
    _check(capsys, ["train", "resnet20", "--recipe", str(recipe), "--out", str(tmp_path / "new")], tmp_path)
    image = tmp_path / "img.png"
    _png(image, size=32)
    for name in ("config.toml", "best.pt", "cnnzoo-run.json"):
        run = _copy(good_run, tmp_path / f"run-{name}")
        make(run / name)
        for argv in (["eval", str(run), "--device", "cpu"], ["predict", str(run), str(image)]):
            if name != "best.pt":
                continue  # eval and predict read only the checkpoint (its own config); resume reads them all
            _check(capsys, argv, tmp_path)
        _check(capsys, ["train", "--resume", str(run), "--quiet"], tmp_path)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (2, 5_000), (20_000, 20)], ids=str)
def test_images_of_bomb_shapes_are_refused_by_every_reader(good_run, tmp_path, capsys, size):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", size).save(bomb)
    assert bomb.stat().st_size < 100_000
    _check(capsys, ["predict", str(good_run), str(bomb)], tmp_path)
    ds = tmp_path / "ds"
    for c in ("a", "b"):
        for i in range(3):
            _png(ds / c / f"{i}.png", i)
    shutil.copy(bomb, ds / "a" / "bomb.png")
    assert main(["data", str(ds)]) == 0  # skipped at scan time, with its reason
    out = capsys.readouterr().out
    assert "bomb.png" in out or "skipped" in out


def _weights_case(tmp_path: Path, name: str) -> Path:
    import zipfile

    from torchvision.models import resnet18

    state = resnet18(num_classes=10).state_dict()
    path = tmp_path / f"{name}.pth"
    if name == "int-keys":
        torch.save({**state, 3: torch.zeros(1)}, path)
    elif name == "sparse":
        torch.save({**state, "fc.weight": state["fc.weight"].to_sparse()}, path)
    elif name == "bool":
        torch.save({**state, "fc.weight": state["fc.weight"] > 0}, path)
    elif name == "weight-missing":
        torch.save({k: v for k, v in state.items() if k != "fc.weight"}, path)
    elif name == "runs-code":
        torch.save({**state, "x": _Evil()}, path)
    elif name == "zip-bomb":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("archive/data.pkl", b"\0" * (200 << 20))
    return path


class _Evil:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.mark.parametrize("case", ["int-keys", "sparse", "bool", "weight-missing", "runs-code", "zip-bomb"])
def test_weights_of_unexpected_structure_are_one_line(tmp_path, capsys, case):
    path = _weights_case(tmp_path, case)
    image = tmp_path / "img.png"
    _png(image, size=32)
    err = _check(capsys, ["predict", "--model", "resnet18", "--weights", str(path), str(image)], tmp_path)
    assert "weights_only=False" not in err and "will likely succeed" not in err


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "banana"},
        {"WORLD_SIZE": "-3"},
        {"WORLD_SIZE": "2"},  # outside torchrun: no MASTER_ADDR
        {"RANK": "5"},
        {"LOCAL_RANK": "x"},
        {"WORLD_SIZE": "99999999999999999999"},
    ],
    ids=lambda e: " ".join(f"{k}={v}" for k, v in e.items()),
)
def test_nonsense_distributed_environment_is_one_line(tmp_path, capsys, monkeypatch, env):
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _check(capsys, ["train", "resnet20", "--out", str(tmp_path / "r"), "--quiet", *TINY_FLAGS], tmp_path)


def test_class_names_are_text_in_charts_never_markup(tmp_path):
    from cnnzoo.train.plots import plot_confusion

    names = ["$\\frac{a}{$", "^_{}", "a\\b$$", "x" * 60]  # unbalanced mathtext would raise at draw time
    plot_confusion([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], names, tmp_path / "c.png", title="$x")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

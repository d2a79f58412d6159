"""Files: atomic whole-file writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.store import files
from adaptive_sched.store.files import write_atomic

from .test_store_support import digest


# -- write_atomic -----------------------------------------------------------------------------------
def test_write_atomic_writes_a_new_file_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "prior.json"
    assert write_atomic(path, "one\n") == path
    assert path.read_text() == "one\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o600)
    inode = path.stat().st_ino
    write_atomic(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # ... keeping its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.json"]


@pytest.mark.parametrize("temp_name", ["prior.json.tmp", ".prior.json.tmp"])
def test_a_symlink_planted_at_a_predictable_temp_name_is_not_followed(tmp_path: Path, temp_name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / temp_name).symlink_to(victim)
    path = tmp_path / "prior.json"
    write_atomic(path, "prior\n")
    assert victim.read_text() == "precious\n"
    assert path.read_text() == "prior\n" and not path.is_symlink()
    assert (tmp_path / temp_name).is_symlink()  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prior.json", "victim.txt", temp_name])


def test_every_random_temp_name_taken_by_a_symlink_still_writes_nothing_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random names themselves: the first two tries find a symlink there (O_EXCL refuses it).
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    names = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(files.tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / ".prior.json.aaaaaaaa.tmp").symlink_to(victim)
    write_atomic(tmp_path / "prior.json", "prior\n")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "prior.json").read_text() == "prior\n"


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "prior.json"
    path.symlink_to(victim)
    write_atomic(path, "prior\n")
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == "prior\n"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prior.json"
    path.write_text("old\n")
    before = digest(path)

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(StoreError, match="No space left on device") as info:
        write_atomic(path, "new\n")
    assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.json"]


def test_write_atomic_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "prior.json", "x")
    with pytest.raises(StoreError, match="is a directory"):
        write_atomic(tmp_path, "x")

"""`cropi compare` computes stage 0's influence features once and links them into the other runs."""

from __future__ import annotations

from cropi.curriculum.compare import reuse_stage0_features


def _store(folder, complete: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "features.npy").write_bytes(b"x" * 16)
    if complete:
        (folder / "manifest.json").write_text("{}")


def test_links_complete_stage0_stores_only(tmp_path):
    src = tmp_path / "arms/cropi/seed_0/stages/stage_000/features"
    _store(src / "pool", complete=True)
    _store(src / "targets" / "chain", complete=True)
    _store(src / "targets" / "gcd", complete=False)  # interrupted: must not be reused
    _store(tmp_path / "arms/cropi/seed_0/stages/stage_001/features/pool", complete=True)  # later stage
    dest = tmp_path / "arms/cropi/seed_1/stages/stage_000/features"

    assert reuse_stage0_features(tmp_path, dest) == 2
    assert (dest / "pool" / "features.npy").stat().st_ino == (src / "pool" / "features.npy").stat().st_ino
    assert (dest / "targets" / "chain" / "manifest.json").exists()
    assert not (dest / "targets" / "gcd").exists()
    assert not list(dest.rglob("*.linking"))
    assert reuse_stage0_features(tmp_path, dest) == 0  # already there: nothing replaced
    assert reuse_stage0_features(tmp_path, src) == 0  # never links a store onto itself

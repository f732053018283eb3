"""A refused ``mambaseg search`` leaves no new file and changes none: its checks come before anything is written."""

from __future__ import annotations

import hashlib


def _files(folder):
    """Every file and folder under ``folder`` with its modification time and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.is_file() and hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))} | {".": folder.stat().st_mtime_ns}


def test_refused_new_search_writes_nothing(tmp_path, search):
    out = tmp_path / "NEW"
    cases = [
        (["--recipe", "vmunet_isic17"], "--recipe vmunet_isic17 gives the model 'vmunet'"),  # not a SliceMamba recipe
        (["--set", "model.kwargs.foo=1"], "model 'slicemamba' takes no keyword 'foo'"),  # search's own check
        (["--set", "loss.kwargs.foo=1"], "loss.kwargs"),  # refused by the engine when the supernet's run starts
        (["--search-fraction", "1.5"], "search_fraction"),
    ]
    for extra, says in cases:
        r = search(out, extra)
        assert r.exit_code != 0 and says in " ".join(r.output.split()), (extra, r.output)
        assert not out.exists(), (extra, sorted(out.rglob("*")))  # search_config.json, search_split.json were left


def test_search_recipe_must_be_slicemamba(tmp_path, search):
    r = search(tmp_path / "o", ["--recipe", "vmunet_isic17"])
    text = " ".join(r.output.split())
    assert r.exit_code != 0 and text.count("error:") == 1
    assert "--recipe vmunet_isic17" in text and "'vmunet'" in text, text
    assert "slicemamba_polyp" in text and "slicemamba_isic" in text and "vmunet_ph2" not in text, text
    r = search(tmp_path / "o", ["--set", "model.name=vmunet"])
    assert r.exit_code != 0 and "--set model.name gives the model 'vmunet'" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()


def test_refused_rerun_of_a_search_changes_no_file(tmp_path, search):
    out = tmp_path / "OUT"
    assert search(out, ["--keep-supernet"]).exit_code == 0
    before = _files(out)
    # the supernet is kept: a changed image size cannot resume it (the engine's check, once made after
    # search_config.json was rewritten with 64 px), nor other evolution settings or another search split
    for extra, says in [(["--image-size", "64"], "data.image_size"), (["--generations", "3"], "evolution settings"),
                        (["--search-fraction", "0.3"], "fraction"), (["--set", "optim.lr=0.01"], "optim.lr")]:
        r = search(out, ["--keep-supernet", *extra])
        assert r.exit_code != 0 and says in " ".join(r.output.split()), (extra, r.output)
        assert _files(out) == before, extra
    # finished, supernet removed: the settings are compared with search_config.json before anything is written
    assert search(out).exit_code == 0
    before = _files(out)
    r = search(out, ["--image-size", "64"])
    assert r.exit_code != 0 and "data.image_size" in " ".join(r.output.split()), r.output
    assert _files(out) == before

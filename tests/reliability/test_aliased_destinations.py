"""A destination that is the source under another spelling, lies inside it or holds it: `dpe enhance` and
`dpe ingest` exit 2 with a message naming the problem, before any server starts or anything is written; the flow
refuses the same when run from a deployment. The originals stay byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.fixtures_files import tiny_jpeg, tree_fingerprint, write

DPE = str(Path(sys.executable).parent / "dpe")

# (name, how to prepare, dpe arguments, words the message must hold); {src}/{tmp} are filled in.
CASES = [
    ("symlink to the source", "ln -s {src} {tmp}/out", ["enhance", "{src}", "{tmp}/out"], "is the source"),
    ("leading //", "", ["enhance", "{src}", "/{src}"], "is the source"),
    ("./src/../src", "", ["enhance", "./photos", "./photos/../photos/"], "must differ"),
    ("file:// form", "", ["enhance", "{src}", "file://{src}"], "is the source"),
    ("simplecache:: chain", "", ["enhance", "{src}", "simplecache::file://{src}"], "is the source"),
    ("destination inside the source", "", ["enhance", "{src}", "{src}/enhanced"], "lies inside the source"),
    ("link into the source", "ln -s {src}/2004 {tmp}/out", ["enhance", "{src}", "{tmp}/out/x"],
     "lies inside the source"),
    ("source inside the destination", "", ["enhance", "{src}/2004", "{src}"], "lies inside the destination"),
    ("ingest copies are the source", "", ["ingest", "{src}/copies", "{src}", "--copies"],
     "lies inside the destination"),
    ("ingest copies link to the source", "mkdir {tmp}/ds && ln -s {src} {tmp}/ds/copies",
     ["ingest", "{src}", "{tmp}/ds", "--copies"], "training copies folder"),
    ("s3 and s3a", "", ["enhance", "s3://photos/archive", "S3A://photos/archive/"], "must differ"),
]


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "photos"
    write(src, "2004/a.jpg", tiny_jpeg(1))
    write(src, "copies/2004/a.jpg", tiny_jpeg(2))
    write(src, "b.png", tiny_jpeg(3))
    return src


@pytest.mark.parametrize("name, prepare, args, words", CASES, ids=[c[0] for c in CASES])
def test_aliased_destinations_exit_2_before_any_work(name, prepare, args, words, source, tmp_path):
    fill = {"src": str(source), "tmp": str(tmp_path)}
    if prepare:
        subprocess.run(prepare.format(**fill), shell=True, check=True, cwd=tmp_path)
    before = tree_fingerprint(tmp_path)
    env = dict(os.environ) | {"DPE_HOME": str(tmp_path / "home"), "DPE_REGISTRY": str(tmp_path / "registry")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([DPE, *(a.format(**fill) for a in args)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 2, (name, done.stdout, done.stderr[-2000:])
    message = " ".join((done.stderr + done.stdout).split())  # rich wraps long lines
    assert words in message, message
    assert tree_fingerprint(tmp_path) == before  # nothing written anywhere, no server home created


def test_a_deployment_run_of_the_flow_refuses_an_aliased_destination(prefect_server, source, tmp_path):
    """No CLI in between (a run from the UI or a schedule): the flow checks real paths before any work, and its
    failure maps to exit code 2."""
    import typer

    from flows.cli import _finish
    from flows.enhance import enhance_archive
    from flows.ingest import ingest_dataset
    from flows.params import EnhanceParams, IngestParams

    (tmp_path / "out").symlink_to(source)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "copies").symlink_to(source / "copies")
    before = tree_fingerprint(tmp_path)
    state = enhance_archive(EnhanceParams(source_url=str(source), dest_url=str(tmp_path / "out"),
                                          registry_url=str(tmp_path / "registry")), return_state=True)
    assert not state.is_completed() and "is the source" in state.message
    with pytest.raises(typer.Exit) as exit_info:
        _finish(state, "enhance run")
    assert exit_info.value.exit_code == 2
    state = ingest_dataset(IngestParams(source_url=str(source / "copies"), dest_url=str(tmp_path / "ds"),
                                        copies=True), return_state=True)
    assert not state.is_completed() and "training copies folder" in state.message
    assert tree_fingerprint(tmp_path) == before


"""Operating pieces without a server: --param parsing and deep merge, exit codes, failure logging, `dpe deploy
--check` on the real deploy/prefect.yaml and on a broken copy."""

from __future__ import annotations

import logging
import subprocess

import pytest

from flows.cli import UsageError
from flows.cli_ops import deep_merge, exit_code_for, overrides_from, parse_param
from flows.outcome import FAILURES_STATE, log_failures, na
from tests.conftest import REPO, dpe_command


def test_param_values_parse_as_json_else_strings_and_dotted_keys_nest():
    assert parse_param("params.strength=0.5") == (["params", "strength"], 0.5)
    assert parse_param("params.storage_block=null") == (["params", "storage_block"], None)
    assert parse_param("params.include=[\"2004/*\"]") == (["params", "include"], ["2004/*"])
    assert parse_param("params.source_url=s3://b/x=y") == (["params", "source_url"], "s3://b/x=y")
    assert parse_param("params.version=01") == (["params", "version"], "01")  # not JSON: kept as written
    for bad in ("novalue", "=1", "params..mode=full"):
        with pytest.raises(UsageError):
            parse_param(bad)
    assert overrides_from(["params.mode=paper", "params.strength=0.5", "params.mode=full"]) == {
        "params": {"mode": "full", "strength": 0.5}}


def test_deep_merge_keeps_the_other_defaults_of_a_nested_object():
    defaults = {"params": {"source_url": "s3://a", "dest_url": "s3://b", "model": "default", "include": ["*"]}}
    merged = deep_merge(defaults, overrides_from(["params.model=warm:2", "params.include=[\"x/*\"]"]))
    assert merged == {"params": {"source_url": "s3://a", "dest_url": "s3://b", "model": "warm:2",
                                 "include": ["x/*"]}}  # lists replace, objects merge
    assert defaults["params"]["model"] == "default"  # the deployment's copy is untouched


def test_exit_codes_of_remote_final_states():
    from prefect.states import Completed, Crashed, Failed

    assert exit_code_for(Completed()) == 0
    assert exit_code_for(Completed(name=FAILURES_STATE)) == 1
    assert exit_code_for(Failed(message="Flow run encountered an exception. DestinationError: dest is the source"))\
        == 2
    assert exit_code_for(Failed(message="Flow run encountered an exception. OSError: bucket gone")) == 3
    assert exit_code_for(Crashed(message="process exited")) == 3


def test_one_warning_names_failed_files_capped(caplog):
    failures = [{"input": f"bad/{i:02d}.jpg", "reason": f"bad/{i:02d}.jpg: corrupt photo"} for i in range(25)]
    failures.append({"input": "x.png", "reason": "too many pixels"})
    logger = logging.getLogger("dpe-test-failures")
    with caplog.at_level(logging.WARNING, logger="dpe-test-failures"):
        log_failures(logger, failures)
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert text.startswith("26 failed:") and "bad/00.jpg: corrupt photo" in text and "bad/19.jpg" in text
    assert "bad/20.jpg" not in text and "... and 6 more" in text
    assert "bad/00.jpg: bad/00.jpg" not in text  # a reason naming the file is not prefixed again
    assert na(None) == "n/a" and na(0) == "0"


def test_deploy_check_validates_without_a_server(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "p"),
           "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens there: --check must not call it
    ok = subprocess.run(dpe_command("deploy", "--check"), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "4 deployments valid" in ok.stderr
    text = (REPO / "deploy" / "prefect.yaml").read_text()
    broken = tmp_path / "prefect.yaml"
    broken.write_text(text.replace("mode: full", "mode: fast").replace('"0 2 * * *"', '"0 25 * * *"')
                      .replace("flows.train:train_style", "flows.train:no_such_flow")
                      .replace("flows.ingest:ingest_dataset", "flows/ingest.py:ingest_dataset"))
    bad = subprocess.run(dpe_command("deploy", "--check", "--prefect-file", str(broken)), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "nightly-enhance: parameters" in bad.stderr and "params.mode" in bad.stderr
    assert "Invalid cron string" in bad.stderr
    assert "train-style: entrypoint flows.train:no_such_flow" in bad.stderr
    assert "ingest: entrypoint 'flows/ingest.py:ingest_dataset' must be package.module:flow" in bad.stderr


def test_run_and_deploy_need_a_lasting_server(tmp_path):
    """No PREFECT_API_URL, no profile URL, no `dpe server`: exit 2 with what to do (no temporary server is started,
    deployments would vanish with it)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "p"),
           "DPE_HOME": str(tmp_path / "dpe")}
    for args in (["run", "enhance-adhoc", "-p", "params.strength=0.5"], ["deploy"]):
        done = subprocess.run(dpe_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "no Prefect API configured" in done.stderr, done.stderr

"""SftpSource and TransferMonitor as a team uses them: a dg project of its own (a copy of
../dg_project_template), its sources on the test's sshd, checked, listed and scaffolded by the
`dg` CLI, then loaded in this process to copy files into the test's bucket. (How a defs.yaml's
attributes resolve, without a server: unit/defs/test_component.py.)"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from devstack.demo import apply_partition_requests, execute_request
from sftp_minio_assets.defs.sources import SECRETS
from sftp_minio_assets_tests.support import PROJECT

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

TEMPLATE = PROJECT / "sftp_minio_assets_tests" / "dg_project_template"
ROOT_MODULE = "partner_feeds"
ACME = Path(ROOT_MODULE, "defs", "partners", "acme", "defs.yaml")
GLOBEX = Path(ROOT_MODULE, "defs", "partners", "globex_corp", "defs.yaml")  # name: globex
BIN = Path(sys.executable).parent
ENV_REFERENCE = re.compile(r'^"\{\{ env\.[A-Z][A-Z0-9_]* \}\}"$')


@pytest.fixture
def project(env, tmp_path) -> Path:
    """The template's project, each source rooted in a folder of the test's SFTP root."""
    target = (tmp_path / "partner-feeds").resolve()
    shutil.copytree(TEMPLATE, target)
    for source in ("acme", "globex"):
        (env.root / source).mkdir()
    return target


def variables(env) -> dict[str, str]:
    """What the template's defs.yaml files refer to, and the shared resources' variables for the
    test's bucket and transfer log. Not the SFTP_* variables of the standalone code location's
    single source: a component's settings are its defs.yaml's, nothing else's."""
    ssh = env.stack.ssh
    stack = env.stack.env(bucket=env.bucket)
    return {
        **{name: value for name, value in stack.items() if not name.startswith("SFTP_")},
        "TRANSFER_DB_URL": env.db_url,
        "PARTNERS_SFTP_HOST": ssh.host,
        "PARTNERS_SFTP_PORT": str(ssh.port),
        "PARTNERS_SFTP_USER": ssh.username,
        "PARTNERS_KNOWN_HOSTS": str(ssh.known_hosts_path),
        "ACME_SFTP_KEY": str(ssh.private_key_path),
        "GLOBEX_SFTP_KEY_PATH": str(ssh.private_key_path),
        "ACME_ROOT": str(env.root / "acme"),
        "GLOBEX_ROOT": str(env.root / "globex"),
    }


def dg_cli(project: Path, env, *args: str, **more: str) -> subprocess.CompletedProcess:
    """`dg args...` in the project, with its variables (and `more`). Without DAGSTER_HOME: an
    ephemeral instance, never the one of whoever runs the tests."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SFTP_") and name != "DAGSTER_HOME"
    }
    environment |= variables(env) | more
    environment["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        [str(BIN / "dg"), *args],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def said(run: subprocess.CompletedProcess) -> str:
    """All a dg call printed, for the assertion messages."""
    command = " ".join(run.args[1:])
    return f"\n$ dg {command}  (exit {run.returncode})\n{run.stdout}\n{run.stderr}"


def set_attribute(defs_yaml: Path, key: str, value: str) -> None:
    """`key: value` among the attributes, in place of the key's line if it has one."""
    text = defs_yaml.read_text()
    line = f"  {key}: {value}\n"
    existing = re.compile(rf"^  {re.escape(key)}:.*\n", re.MULTILINE)
    if existing.search(text):
        defs_yaml.write_text(existing.sub(lambda _: line, text))
    else:
        defs_yaml.write_text(text + line)


def test_a_project_of_two_sources_and_a_monitor_checks_and_lists_them(project, env):
    checked = dg_cli(project, env, "check", "defs")
    assert checked.returncode == 0, said(checked)
    listed = dg_cli(project, env, "list", "defs", "--json")
    assert listed.returncode == 0, said(listed)

    defs = json.loads(listed.stdout)
    assets = {asset["asset_key"]: asset for asset in defs["assets"]}
    assert set(assets) == {"acme/files", "globex/files", "transfer_stats"}, said(listed)
    acme, globex = assets["acme/files"], assets["globex/files"]
    assert (acme["group_name"], sorted(acme["kinds"])) == ("acme", ["s3", "sftp"]), said(listed)
    assert (globex["group_name"], sorted(globex["kinds"])) == ("partners", ["s3", "sftp"])
    # Each definition is traced to its own defs.yaml (the UI links there).
    assert acme["source"].startswith(f"{ACME}:"), said(listed)
    assert globex["source"].startswith(f"{GLOBEX}:"), said(listed)

    sensors = {sensor["name"] for sensor in defs["sensors"]}
    assert {"new_files_acme", "new_files_globex"} <= sensors, said(listed)
    assert {"alert_on_repeated_failures", "alert_on_recovery"} <= sensors, said(listed)
    jobs = {job["name"] for job in defs["jobs"]}
    assert {"dry_run_acme", "dry_run_globex", "transfer_health"} <= jobs, said(listed)
    checks: dict[str, set[str]] = {}
    for check in defs["asset_checks"]:
        checks.setdefault(check["asset_key"], set()).add(check["name"])
    assert checks["acme/files"] and checks["acme/files"] == checks["globex/files"], said(listed)
    # One resource per source, and the shared ones once for all components.
    resources = sorted(resource["name"] for resource in defs["resources"])
    assert {"source_acme", "source_globex", "minio", "transfer_log"} <= set(resources)
    assert len(resources) == len(set(resources)), said(listed)


@pytest.mark.parametrize(
    "key, value, named",
    [
        pytest.param("port", "99999", ["source 'acme'", "`port`"], id="port-out-of-range"),
        pytest.param("compression", "rar", ["source 'acme'", "`compression`"], id="compression"),
        # The source's own check, as for a sources file (Dagster's would quote the value).
        pytest.param("prot", "22", ["source 'acme'", "unknown settings ['prot']"], id="typo"),
    ],
)
def test_a_wrong_setting_is_refused_naming_its_file_and_key(project, env, key, value, named):
    set_attribute(project / ACME, key, value)
    checked = dg_cli(project, env, "check", "defs")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, said(checked)
    assert str(project / ACME) in output, said(checked)
    for words in named:
        assert words in output, f"{words!r} not in:{said(checked)}"


@pytest.mark.parametrize(
    "key, secret, named",
    [
        pytest.param("password", "hunter2", ["source 'acme'", "`password`"], id="written-out"),
        pytest.param(
            "pasword",
            "hunter2",
            ["source 'acme'", "unknown settings ['pasword']"],
            id="misspelled-key",
        ),
        pytest.param(
            "password",
            "8675309123",
            ["password"],
            id="a-number",
        ),
    ],
)
def test_a_secret_written_out_is_refused_and_never_repeated(project, env, key, secret, named):
    set_attribute(project / ACME, key, secret)
    # --verbose: Dagster's whole stack traces, where a value could hide too.
    checked = dg_cli(project, env, "check", "defs", "--verbose")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, said(checked)
    assert secret not in output, said(checked)
    assert str(project / ACME) in output, said(checked)
    for words in named:
        assert words in output, f"{words!r} not in:{said(checked)}"


@pytest.mark.parametrize(
    "key, refused",
    [
        pytest.param("name", "is also defined in", id="same-name"),
        # acme's objects are under acme/, from its name, though it sets no destination_prefix.
        pytest.param("destination_prefix", "may write to the same objects", id="same-prefix"),
    ],
)
def test_two_sources_that_would_share_objects_are_refused_naming_both_files(
    project, env, key, refused
):
    set_attribute(project / GLOBEX, key, "acme")
    checked = dg_cli(project, env, "check", "defs")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, said(checked)
    assert refused in output, said(checked)
    assert str(project / ACME) in output and str(project / GLOBEX) in output, said(checked)


def test_two_sources_of_one_defs_yaml_that_would_share_objects_are_refused(project, env):
    acme = project / ACME
    text = acme.read_text()
    both = [f"{text}  name: {name}\n  destination_prefix: shared\n" for name in ("acme", "acme2")]
    acme.write_text("---\n".join(both))
    checked = dg_cli(project, env, "check", "defs")
    assert checked.returncode == 1, said(checked)
    assert "may write to the same objects" in checked.stdout + checked.stderr, said(checked)


def test_a_scaffolded_source_names_its_secrets_by_variable_and_checks_as_written(project, env):
    """Nothing connects at load, so the scaffold's example host is no obstacle: what the check
    proves is that the file is complete and valid as written, the one variable it refers to
    set (to the test's client key, a real key file)."""
    scaffolded = dg_cli(
        project, env, "scaffold", "defs", "sftp_minio_assets.SftpSource", "partners/initech"
    )
    assert scaffolded.returncode == 0, said(scaffolded)
    defs_yaml = project / ROOT_MODULE / "defs" / "partners" / "initech" / "defs.yaml"
    text = defs_yaml.read_text()
    document = yaml.safe_load(text)
    assert document["type"] == "sftp_minio_assets.SftpSource", text
    attributes = document["attributes"]
    assert {"host", "username", "private_key", "known_hosts_path", "root"} <= set(attributes)
    assert attributes["name"] == "initech", text
    # Every secret it shows, commented out or not, is a reference: uncommented, it stands.
    secrets = re.findall(rf'^[#\s]*(?:{"|".join(SECRETS)}):[ ]*("[^"]*"|\S+)', text, re.MULTILINE)
    assert len(secrets) >= 2 and all(ENV_REFERENCE.match(value) for value in secrets), text

    checked = dg_cli(
        project, env, "check", "defs", INITECH_SFTP_KEY=str(env.stack.ssh.private_key_path)
    )
    assert checked.returncode == 0, said(checked) + text


def test_dg_lists_both_components(project, env):
    listed = dg_cli(project, env, "list", "components", "--json")
    assert listed.returncode == 0, said(listed)
    keys = {component["key"] for component in json.loads(listed.stdout)["items"]}
    assert {"sftp_minio_assets.SftpSource", "sftp_minio_assets.TransferMonitor"} <= keys


@pytest.fixture
def loaded(project, env, monkeypatch):
    """The project's definitions, imported in this process as its code server imports them,
    with the variables it refers to set."""
    for name in [name for name in os.environ if name.startswith("SFTP_")]:
        monkeypatch.delenv(name)
    for name, value in variables(env).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(project))
    try:
        yield importlib.import_module(f"{ROOT_MODULE}.definitions").defs()
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == ROOT_MODULE]:
            del sys.modules[module]


def tick_and_run(defs: dg.Definitions, instance, source: str) -> list[str]:
    """One tick of the source's sensor, then the runs it requests, as the daemon would launch
    them; the partitions it added."""
    sensor = defs.resolve_sensor_def(f"new_files_{source}")
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        tick = sensor(context)
    apply_partition_requests(instance, tick)
    job = defs.resolve_job_def(sensor.job_name)
    for request in tick.run_requests:
        result = execute_request(job, instance, request, request.run_config)
        assert result.success, f"run {request.run_key} of source {source} failed"
    return sorted(instance.get_dynamic_partitions(f"files_{source}"))


def test_each_source_copies_its_files_to_the_bucket(env, instance, loaded):
    report = b"id,amount\n" + b"".join(b"%d,%d.50\n" % (i, i) for i in range(20_000))
    env.write("acme/report.csv", report)
    env.write("acme/notes.txt", b"outside acme's include")
    blob = os.urandom(300_000)
    env.write("globex/blob.bin", blob)

    assert tick_and_run(loaded, instance, "acme") == ["report.csv"]
    assert tick_and_run(loaded, instance, "globex") == ["blob.bin"]

    store = env.store
    assert store.fs.cat_file(f"{env.bucket}/acme/report.csv") == report
    assert store.fs.cat_file(f"{env.bucket}/globex-in/blob.bin") == blob
    assert sorted(store.fs.find(env.bucket)) == [
        f"{env.bucket}/acme/report.csv",
        f"{env.bucket}/globex-in/blob.bin",
    ]
    rows = env.rows()
    assert {name: (row["source"], row["status"]) for name, row in rows.items()} == {
        "report.csv": ("acme", "COMPLETED"),
        "blob.bin": ("globex", "COMPLETED"),
    }

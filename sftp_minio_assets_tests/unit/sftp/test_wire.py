"""What sftp_wire relies on inside paramiko, checked without a server: an upgrade that moves one
of these fails here, naming it, before it shows up as a broken listing or a broken copy.
integration/test_sftp.py and integration/test_hostile_input.py exercise the same code against
a real sshd."""

import inspect
import tomllib
from importlib.metadata import version

import paramiko
import paramiko.sftp
import pytest
from packaging.requirements import Requirement

from sftp_minio_assets.sftp.wire import PipelinedReads, parse_names
from sftp_minio_assets_tests.support import PROJECT

PYPROJECT = PROJECT / "pyproject.toml"
WHAT_TO_DO = (
    "adapt sftp_minio_assets/sftp/wire.py to it, run integration/test_sftp.py and "
    "integration/test_hostile_input.py, then widen the paramiko pin in pyproject.toml"
)

# Each private callable sftp_wire uses, with the arguments it passes (by position, then by name; a
# placeholder first for self: the methods are looked up on the class).
SELF = object()
MSG = paramiko.Message()
# paramiko calls fileobj._async_response(t, msg, num) on whoever sent a request.
REPLY = (paramiko.sftp.CMD_DATA, MSG, 0)
NONE: dict = {}
CALLS = [
    (
        "SFTPClient._async_request",
        (SELF, SELF, paramiko.sftp.CMD_READ, b"handle", paramiko.sftp.int64(0), 1),
        NONE,
    ),
    ("SFTPClient._read_response", (SELF,), NONE),
    ("SFTPClient._convert_status", (SELF, MSG), NONE),
    ("SFTPAttributes._from_msg", (MSG,), NONE),
    # paramiko's own SFTPFile answers the reply callback: a rename or a new argument shows here.
    ("SFTPFile._async_response", (SELF, *REPLY), NONE),
    ("SFTPFile._close", (SELF,), {"async_": True}),
    # stat_and_open makes the file object paramiko's open makes, from the handle.
    ("SFTPFile.__init__", (SELF, SELF, b"handle", "rb"), NONE),
]

# The SFTP packet types sftp_wire sends or expects, by their number in the protocol.
PACKET_TYPES = {
    "CMD_OPEN": 3,
    "CMD_CLOSE": 4,
    "CMD_READ": 5,
    "CMD_OPENDIR": 11,
    "CMD_READDIR": 12,
    "CMD_STAT": 17,
    "CMD_STATUS": 101,
    "CMD_HANDLE": 102,
    "CMD_DATA": 103,
    "CMD_NAME": 104,
    "CMD_ATTRS": 105,
    "SFTP_FLAG_READ": 1,
}


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS, ids=[name for name, *_ in CALLS])
def test_each_private_paramiko_call_still_takes_the_arguments_sftp_wire_passes(name, args, kwargs):
    class_name, attribute = name.split(".")
    function = getattr(getattr(paramiko, class_name), attribute, None)
    assert callable(function), (
        f"paramiko {paramiko.__version__} has no callable {name}: {WHAT_TO_DO}"
    )
    signature = inspect.signature(function)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(
            f"paramiko {paramiko.__version__} changed {name}{signature} ({exc}): {WHAT_TO_DO}"
        )


def test_pipelined_reads_take_the_reply_callback_as_paramiko_makes_it():
    inspect.signature(PipelinedReads._async_response).bind(SELF, *REPLY)


def test_the_sftp_names_sftp_wire_imports_are_still_there():
    for name, number in PACKET_TYPES.items():
        assert getattr(paramiko.sftp, name, None) == number, (
            f"paramiko.sftp.{name} is no longer {number}: {WHAT_TO_DO}"
        )
    for name in ("int64", "SFTPError"):
        assert hasattr(paramiko.sftp, name), f"paramiko.sftp.{name} is gone: {WHAT_TO_DO}"


def test_the_installed_paramiko_is_a_version_tested_with_sftp_wire():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [pin] = [r for r in map(Requirement, dependencies) if r.name == "paramiko"]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in pin.specifier), (
        f"pyproject.toml's {pin} has no upper bound: a paramiko release nobody tested with "
        "sftp_wire's private calls would be installed"
    )
    installed = version("paramiko")
    assert pin.specifier.contains(installed), (
        f"paramiko {installed} is installed but pyproject.toml pins {pin}: run this file, "
        "integration/test_sftp.py and integration/test_hostile_input.py with it, then move the pin"
    )


def test_the_session_still_keeps_its_requests_due_where_sftp_wire_looks():
    # finish_answers reads answers while SFTPClient._expecting (set in __init__) is not empty.
    source = inspect.getsource(paramiko.SFTPClient.__init__)
    assert "self._expecting = " in source, f"paramiko {paramiko.__version__}: {WHAT_TO_DO}"


def test_names_are_parsed_from_the_raw_answer_as_paramiko_parses_them():
    """parse_names reads a NAME answer's bytes itself: every combination of attributes the
    protocol allows (extended pairs included) comes out as paramiko's own parser reads it."""
    entries = []
    for n, flags in enumerate([0, 0x1, 0x1 | 0x4, 0x1 | 0x2 | 0x4 | 0x8, 0x8, 0x80000000 | 0xF]):
        attrs = paramiko.SFTPAttributes()  # _pack sends the fields that are set
        if flags & 0x1:
            attrs.st_size = 2**40 + n
        if flags & 0x2:
            attrs.st_uid, attrs.st_gid = 1000, 1001
        if flags & 0x4:
            attrs.st_mode = 0o100644
        if flags & 0x8:
            attrs.st_atime, attrs.st_mtime = 1_700_000_000, 1_800_000_000 + n
        if flags & 0x80000000:
            attrs.attr = {"vendor@example.com": "x" * n, "other@example.com": ""}
        entries.append((f"n\xe9{n}".encode() + b"\xff", attrs))
    answer = paramiko.Message()
    answer.add_int(len(entries))
    for name, attrs in entries:
        answer.add_string(name)
        answer.add_string(b"-rw-r--r-- 1 u g " + name)
        attrs._pack(answer)
    parsed = parse_names(paramiko.Message(answer.asbytes()))
    expected = []
    theirs = paramiko.Message(answer.asbytes())
    for _ in range(theirs.get_int()):
        name, _ = theirs.get_string(), theirs.get_string()
        attrs = paramiko.SFTPAttributes._from_msg(theirs)
        expected.append((name, attrs.st_mode or 0, attrs.st_size or 0, attrs.st_mtime or 0))
    assert parsed == expected
    assert [flags for _, a in entries for flags in [a._flags]] == [0, 1, 5, 15, 8, 0x8000000F]
    assert parsed[3] == (entries[3][0], 0o100644, 2**40 + 3, 1_800_000_003)

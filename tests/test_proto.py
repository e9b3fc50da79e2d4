"""The committed protobuf code is fresh, and protos/ stays wire-compatible with the contract."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
VENDORED_CONTRACT = ROOT / "tests" / "data" / "contract"
SHARED_CONTRACT = ROOT.parent / "shared" / "contract"


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _descriptor(include: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / f"{include.name}-{abs(hash(str(include)))}.pb"
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "kms/v1/kms.proto",
        ]
    )
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, msgs: list[descriptor_pb2.DescriptorProto]) -> None:
        for m in msgs:
            found[prefix + m.name] = m
            walk(prefix + m.name + ".", list(m.nested_type))

    walk("", list(fd.message_type))
    return found


def test_protos_are_wire_compatible_with_the_contract(tmp_path: Path) -> None:
    contract = _descriptor(VENDORED_CONTRACT, tmp_path)
    ours = _descriptor(ROOT / "protos", tmp_path)
    assert ours.package == contract.package
    our_msgs = _messages(ours)
    for name, msg in _messages(contract).items():
        assert name in our_msgs, f"message {name} missing"
        fields = {f.number: f for f in our_msgs[name].field}
        for f in msg.field:
            assert f.number in fields, f"{name}.{f.name} (#{f.number}) missing"
            mine = fields[f.number]
            assert (mine.type, mine.label, mine.type_name) == (f.type, f.label, f.type_name), (
                f"{name}.{f.name} retyped"
            )
    our_services = {s.name: {m.name: m for m in s.method} for s in ours.service}
    for service in contract.service:
        assert service.name in our_services
        for method in service.method:
            mine = our_services[service.name][method.name]
            assert (mine.input_type, mine.output_type, mine.server_streaming) == (
                method.input_type,
                method.output_type,
                method.server_streaming,
            )
    our_enums = {e.name: {v.name: v.number for v in e.value} for e in ours.enum_type}
    for enum in contract.enum_type:
        for value in enum.value:
            assert our_enums[enum.name][value.name] == value.number


@pytest.mark.skipif(not SHARED_CONTRACT.exists(), reason="no ../shared checkout beside the repo")
def test_vendored_contract_equals_the_shared_contract() -> None:
    rel = Path("kms/v1/kms.proto")
    assert (VENDORED_CONTRACT / rel).read_bytes() == (SHARED_CONTRACT / rel).read_bytes()

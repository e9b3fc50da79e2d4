"""kmsnode_pytest: a real, throw-away KMS node for other projects' tests (DF2, mediation function
and IMS client vendors), as a pytest plugin (entry point `pytest11`, loaded when kmsnode is
installed) and as plain classes.

Fixtures (kmsnode_pytest.plugin): `kms_node` (session: a running node, KmsNode), `kms_admin`
and `kms_df2` (AdminService / XkService stubs over mutual TLS with the ADMIN and DF2
certificates), `kms_user_pair` (two provisioned users; `.call()` makes a real MIKEY-TICKET call),
`kms_warrant` (a warrant factory) and `kms_alarms` (an alarm watcher; `.wait_for(correlation_id)`).

The public names are the ones below; `kms_pb2` / `kms_pb2_grpc` are the generated kms.v1 contract
(protos/kms/v1/kms.proto). Everything else of the kmsnode package is the node's inside.
"""

from __future__ import annotations

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from kmsnode_pytest.alarms import AlarmWatcher
from kmsnode_pytest.calls import Call, SessionKeys, User, UserPair
from kmsnode_pytest.errors import error_reason
from kmsnode_pytest.node import ClientCredentials, KmsNode, NodeError
from kmsnode_pytest.warrants import WarrantFactory

__all__ = [
    "AlarmWatcher",
    "Call",
    "ClientCredentials",
    "KmsNode",
    "NodeError",
    "SessionKeys",
    "User",
    "UserPair",
    "WarrantFactory",
    "error_reason",
    "kms_pb2",
    "kms_pb2_grpc",
]

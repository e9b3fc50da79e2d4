"""The reason of a refused RPC: the google.rpc.ErrorInfo the node attaches (domain "kms.v1")."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of `err` (e.g. "NO_ACTIVE_WARRANT"); the status code's name when the
    node sent no rich status (a transport failure, a deadline)."""
    status = rpc_status.from_call(err)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == "kms.v1":
                return str(info.reason)
    code = err.code()
    return str(code.name)

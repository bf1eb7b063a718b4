"""Python stubs for Envoy's ext_proc v3, generated with grpcio-tools from the same proto subset the
agent decodes (agent/proto), at first use, into a cache folder. Import `pb` and `pb_grpc` from here.

The subset keeps the real field numbers, so these stubs speak the same wire format as Envoy and a
real endpoint picker for every field they set.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(os.environ.get("INFERTAP_PROTO", Path(__file__).resolve().parents[2] / "agent" / "proto"))
FILES = [
    "envoy/service/ext_proc/v3/external_processor.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/type/v3/http_status.proto",
    "envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto",
]


def _generate() -> Path:
    digest = hashlib.sha256()
    for f in FILES:
        digest.update((PROTO_ROOT / f).read_bytes())
    out = Path(tempfile.gettempdir()) / f"infertap-extproc-stubs-{digest.hexdigest()[:16]}"
    if (out / "done").exists():
        return out
    from grpc_tools import protoc
    import grpc_tools

    tmp = Path(tempfile.mkdtemp(prefix="extproc-stubs-"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # google/protobuf/struct.proto resolves to the subset in agent/proto for type checking; at run
    # time the protobuf package's own struct_pb2 (the full message, same numbers) is used.
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", *FILES]
    if protoc.main(args) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {PROTO_ROOT}")
    (tmp / "done").write_text("ok")
    try:
        tmp.rename(out)
    except OSError:
        pass  # another process generated them first
    return out if out.exists() else tmp


_dir = _generate()
if str(_dir) not in sys.path:
    sys.path.insert(0, str(_dir))

pb = importlib.import_module("envoy.service.ext_proc.v3.external_processor_pb2")
pb_grpc = importlib.import_module("envoy.service.ext_proc.v3.external_processor_pb2_grpc")
core = importlib.import_module("envoy.config.core.v3.base_pb2")
http_status = importlib.import_module("envoy.type.v3.http_status_pb2")
mode_pb = importlib.import_module("envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2")
from google.protobuf import struct_pb2  # noqa: E402

PROCESS_PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

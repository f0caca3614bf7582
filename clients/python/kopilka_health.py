#!/usr/bin/env python3
"""What an integrator does first: generate a client from proto/ and talk to a running suite.

Generates Python modules for every Kopilka proto file with grpcio-tools, imports each of them
(so a file that does not compile for Python fails here), then asks every service of a running
suite for its health over grpc.health.v1.

    python3 clients/python/kopilka_health.py --host 127.0.0.1 --ports 50051,50052,50053,50054,50055
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

try:
    from importlib.resources import files as resource_files
except ImportError:  # pragma: no cover - Python < 3.9
    from importlib_resources import files as resource_files

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"


def generate(out_dir: pathlib.Path) -> list[str]:
    """Runs protoc over every .proto under proto/kopilka; returns the generated module names."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "kopilka").rglob("*.proto"))
    if not protos:
        sys.exit("no .proto files found under proto/kopilka")
    wkt = str(resource_files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    modules = []
    for proto in protos:
        stem = proto[: -len(".proto")].replace("/", ".")
        modules += [f"{stem}_pb2", f"{stem}_pb2_grpc"]
    return modules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", default="50051,50052,50053,50054,50055")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        out_dir = pathlib.Path(out)
        modules = generate(out_dir)
        sys.path.insert(0, str(out_dir))
        for name in modules:
            importlib.import_module(name)
        print(f"generated and imported {len(modules)} modules from {PROTO_ROOT}")

    failures = 0
    for port in args.ports.split(","):
        target = f"{args.host}:{port}"
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                status = f"error: {err.code().name}"
            print(f"{target}: {status}")
            if status != "SERVING":
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

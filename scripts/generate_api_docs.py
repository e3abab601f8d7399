#!/usr/bin/env python3
"""Write docs/api.md, the reference of the gRPC API, from the comments in the .proto file.

Usage:
    python scripts/generate_api_docs.py            # write docs/api.md
    python scripts/generate_api_docs.py --check    # exit 1 if docs/api.md is stale

protoc (from grpcio-tools) compiles the proto with its source info, which keeps every comment
beside the element it documents, so the reference lists each RPC, message, field and enum value
with the comment written above it in the proto.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_NAME = "archadapt/v1/archadapt.proto"
OUTPUT = REPO_ROOT / "docs" / "api.md"

# Field numbers of the descriptor messages, which SourceCodeInfo paths are made of.
FILE_SYNTAX, FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 12, 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

TYPE_NAMES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
}


def compile_descriptor(proto_root: Path, proto_name: str) -> descriptor_pb2.FileDescriptorProto:
    """Compile ``proto_name`` under ``proto_root`` with protoc and return its descriptor with source info."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="archadapt-api-docs-") as temp_name:
        output = Path(temp_name) / "descriptor.pb"
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                "--include_source_info",
                f"--descriptor_set_out={output}",
                str(proto_root / proto_name),
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed with exit code {exit_code} on {proto_root / proto_name}")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    (file,) = [file for file in descriptor_set.file if file.name == proto_name]
    return file


class Comments:
    """The comment written above each element, looked up by its SourceCodeInfo path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path = {tuple(location.path): location for location in file.source_code_info.location}

    def text(self, *path: int) -> str:
        location = self._by_path.get(tuple(path))
        if location is None:
            return ""
        return "\n".join(line.removeprefix(" ") for line in location.leading_comments.strip("\n").split("\n")).strip()

    def inline(self, *path: int) -> str:
        """Return the comment as one line, for a table cell."""
        return " ".join(line.strip() for line in self.text(*path).splitlines()).replace("|", "\\|")


def short_type(type_name: str, package: str) -> str:
    name = type_name.lstrip(".")
    return name.removeprefix(package + ".")


def anchor(name: str) -> str:
    return name.lower().replace(".", "")


def field_type(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type in (descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, descriptor_pb2.FieldDescriptorProto.TYPE_ENUM):
        name = short_type(field.type_name, package)
        base = f"[{name}](#{anchor(name)})" if not name.startswith("google.") else name
    else:
        base = TYPE_NAMES[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {base}"
    return base


def render_enum(enum: descriptor_pb2.EnumDescriptorProto, name: str, comments: Comments, path: tuple[int, ...]) -> list[str]:
    lines = [f"### {name}", ""]
    if comment := comments.text(*path):
        lines += [comment, ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for index, value in enumerate(enum.value):
        lines.append(f"| `{value.name}` | {value.number} | {comments.inline(*path, ENUM_VALUE, index)} |")
    return lines + [""]


def render_message(
    message: descriptor_pb2.DescriptorProto, name: str, comments: Comments, path: tuple[int, ...], package: str
) -> list[str]:
    lines = [f"### {name}", ""]
    if comment := comments.text(*path):
        lines += [comment, ""]
    if message.field:
        lines += ["| field | number | type | description |", "|---|---|---|---|"]
        for index, field in enumerate(message.field):
            description = comments.inline(*path, MESSAGE_FIELD, index)
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = message.oneof_decl[field.oneof_index].name
                description = f"One of `{oneof}`. {description}".strip()
            lines.append(f"| `{field.name}` | {field.number} | {field_type(field, package)} | {description} |")
        lines.append("")
    elif not comment:
        lines += ["No fields.", ""]
    for reserved in message.reserved_range:
        lines.append(f"Reserved numbers: {reserved.start} to {reserved.end - 1}.")
    if message.reserved_name:
        lines.append(f"Reserved names: {', '.join(message.reserved_name)}.")
    for index, nested in enumerate(message.enum_type):
        lines += render_enum(nested, f"{name}.{nested.name}", comments, (*path, MESSAGE_ENUM, index))
    for index, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            lines += render_message(nested, f"{name}.{nested.name}", comments, (*path, MESSAGE_NESTED, index), package)
    return lines


def render(file: descriptor_pb2.FileDescriptorProto) -> str:
    comments = Comments(file)
    package = file.package
    lines = [
        "# gRPC API reference",
        "",
        f"<!-- Written by scripts/generate_api_docs.py from protos/{file.name}; edit the proto, then rerun it. -->",
        "",
        f"Package `{package}`, file `protos/{file.name}`. The health service is the standard",
        "`grpc.health.v1.Health` (`protos/grpc/health/v1/health.proto`), and the server also offers",
        "gRPC server reflection.",
        "",
    ]
    if header := comments.text(FILE_SYNTAX):
        lines += [header, ""]

    for service_index, service in enumerate(file.service):
        lines += [f"## Service {package}.{service.name}", ""]
        if comment := comments.text(FILE_SERVICE, service_index):
            lines += [comment, ""]
        for method_index, method in enumerate(service.method):
            request = short_type(method.input_type, package)
            response = short_type(method.output_type, package)
            stream = "stream " if method.server_streaming else ""
            client_stream = "stream " if method.client_streaming else ""
            lines += [
                f"### rpc {method.name}",
                "",
                f"`{method.name}({client_stream}{request}) returns ({stream}{response})`, full name "
                f"`/{package}.{service.name}/{method.name}`.",
                "",
            ]
            if comment := comments.text(FILE_SERVICE, service_index, SERVICE_METHOD, method_index):
                lines += [comment, ""]

    lines += ["## Messages", ""]
    for index, message in enumerate(file.message_type):
        lines += render_message(message, message.name, comments, (FILE_MESSAGE, index), package)

    lines += ["## Enums", ""]
    for index, enum in enumerate(file.enum_type):
        lines += render_enum(enum, enum.name, comments, (FILE_ENUM, index))
    return "\n".join(_strip_trailing_blank(lines)) + "\n"


def _strip_trailing_blank(lines: Iterable[str]) -> list[str]:
    result = list(lines)
    while result and not result[-1]:
        result.pop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit with status 1 if docs/api.md differs, writing nothing")
    parser.add_argument("--proto-root", type=Path, default=PROTO_ROOT, help="include directory of the proto (default: protos/)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="file to write or check (default: docs/api.md)")
    args = parser.parse_args(argv)

    text = render(compile_descriptor(args.proto_root, PROTO_NAME))
    if args.check:
        if not args.output.is_file() or args.output.read_text(encoding="utf-8") != text:
            print(f"stale API reference: {args.output} differs from what {PROTO_NAME} generates", file=sys.stderr)
            print("run: python scripts/generate_api_docs.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date with {PROTO_NAME}")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate the Python gRPC stubs of the archadapt-client distribution.

Usage:
    python scripts/generate_protos.py            # write the stubs
    python scripts/generate_protos.py --check    # exit 1 if they are stale

The stubs are written to clients/python/archadapt_client/v1/ as
archadapt_pb2.py, archadapt_pb2.pyi and archadapt_pb2_grpc.py, so they import
as ``archadapt_client.v1.archadapt_pb2`` and never clash with the server's own
top-level package ``archadapt``.

protoc names Python modules after the proto's path, so the proto is copied
into a temporary include directory, compiled there with grpc_tools.protoc,
and the import lines that name ``archadapt.v1`` are rewritten to
``archadapt_client.v1``. The proto keeps its file name
``archadapt/v1/archadapt.proto`` inside the generated descriptor on purpose.
protobuf's default descriptor pool rejects a second file that defines the
same ``archadapt.v1`` symbols under another file name. It accepts an identical
copy of the same file, so with this name the client and the server stubs can
be imported into one process, as long as both were generated from the same
proto with the same grpcio-tools version.

The output depends on the grpcio-tools version, which writes its own version
into the files. ``--check`` therefore fails after a grpcio-tools upgrade too.
GRPCIO_TOOLS_VERSION pins that version. The stubs then require grpcio at least
that new and the protobuf runtime of its protoc, so the lower bounds of grpcio
and protobuf in clients/python/pyproject.toml must not be older; raise them
together with the pin.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

# The grpcio-tools release that writes the committed stubs; see the module docstring.
GRPCIO_TOOLS_VERSION = "1.85.1"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROTO = REPO_ROOT / "protos" / "archadapt" / "v1" / "archadapt.proto"
CLIENT_ROOT = REPO_ROOT / "clients" / "python"

# Path of the proto inside the include directory. It fixes the file name
# recorded in the descriptor (see the module docstring).
PROTO_NAME = Path("archadapt") / "v1" / "archadapt.proto"
SERVER_MODULE = "archadapt.v1"
CLIENT_MODULE = "archadapt_client.v1"
STUB_DIR = Path("archadapt_client") / "v1"
STUB_FILES = ("archadapt_pb2.py", "archadapt_pb2.pyi", "archadapt_pb2_grpc.py")

GENERATED_NOTE = (
    "# Written by scripts/generate_protos.py, which moves the module from "
    f"{SERVER_MODULE} to {CLIENT_MODULE}.\n"
)


class GenerationError(RuntimeError):
    """protoc failed, or its output no longer has the lines this script rewrites."""


def _replace_exactly_once(text: str, pattern: str, replacement: str, file_name: str) -> str:
    """Replace the single match of the regular expression ``pattern``.

    Raises GenerationError when the pattern matches zero or several times,
    which means that grpcio-tools changed the layout of its output.
    """
    new_text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise GenerationError(
            f"expected exactly one match of {pattern!r} in generated {file_name}, "
            f"found {count}; update the rewrite rules in {Path(__file__).name} "
            "for this grpcio-tools version"
        )
    return new_text


def _add_note(text: str) -> str:
    """Insert GENERATED_NOTE below protoc's "DO NOT EDIT" header, or at the top."""
    if not text.startswith("#"):
        return GENERATED_NOTE + text
    first_line_end = text.index("\n") + 1
    return text[:first_line_end] + GENERATED_NOTE + text[first_line_end:]


def _rewrite_stub(file_name: str, text: str) -> str:
    """Move one generated file from package archadapt.v1 to archadapt_client.v1."""
    if file_name == "archadapt_pb2.py":
        text = _replace_exactly_once(
            text,
            re.escape(f"'{SERVER_MODULE}.archadapt_pb2'"),
            f"'{CLIENT_MODULE}.archadapt_pb2'",
            file_name,
        )
    elif file_name == "archadapt_pb2_grpc.py":
        text = _replace_exactly_once(
            text,
            rf"^from {re.escape(SERVER_MODULE)} import archadapt_pb2 as",
            f"from {CLIENT_MODULE} import archadapt_pb2 as",
            file_name,
        )
        # Only the path in grpc's version error message, which some versions omit.
        text = text.replace("archadapt/v1/archadapt_pb2_grpc.py", "archadapt_client/v1/archadapt_pb2_grpc.py")

    if re.search(rf"^(from|import) {re.escape(SERVER_MODULE)}\b", text, flags=re.MULTILINE):
        raise GenerationError(
            f"generated {file_name} still imports {SERVER_MODULE} after the rewrite; "
            f"update the rewrite rules in {Path(__file__).name}"
        )
    return _add_note(text)


def generate(proto: Path, output_root: Path) -> list[Path]:
    """Compile ``proto`` and write the stub files under ``output_root/archadapt_client/v1``.

    Returns the paths written. Raises GenerationError when protoc fails and
    FileNotFoundError when ``proto`` does not exist.
    """
    try:
        from grpc_tools import protoc
    except ImportError as error:
        raise GenerationError(
            f"grpcio-tools is not installed ({error}); install the version that wrote the committed stubs, "
            "see GRPC_GENERATED_VERSION in clients/python/archadapt_client/v1/archadapt_pb2_grpc.py"
        ) from error

    installed = importlib.metadata.version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION:
        raise GenerationError(
            f"grpcio-tools {installed} is installed, but the stubs are generated with {GRPCIO_TOOLS_VERSION}; "
            f"run: pip install grpcio-tools=={GRPCIO_TOOLS_VERSION}"
        )
    if not proto.is_file():
        raise FileNotFoundError(f"proto file not found: {proto}")

    well_known_protos = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="archadapt-protos-") as temp_name:
        temp = Path(temp_name)
        include_dir = temp / "include"
        raw_dir = temp / "out"
        (include_dir / PROTO_NAME).parent.mkdir(parents=True)
        raw_dir.mkdir()
        shutil.copyfile(proto, include_dir / PROTO_NAME)

        arguments = [
            "grpc_tools.protoc",
            f"-I{include_dir}",
            f"-I{well_known_protos}",
            f"--python_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            str(include_dir / PROTO_NAME),
        ]
        exit_code = protoc.main(arguments)
        if exit_code != 0:
            raise GenerationError(f"grpc_tools.protoc failed with exit code {exit_code} on {proto}")

        stub_dir = output_root / STUB_DIR
        stub_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for file_name in STUB_FILES:
            text = (raw_dir / PROTO_NAME.parent / file_name).read_text(encoding="utf-8")
            target = stub_dir / file_name
            target.write_text(_rewrite_stub(file_name, text), encoding="utf-8")
            written.append(target)
    return written


def find_stale_files(proto: Path, output_root: Path) -> list[Path]:
    """Regenerate into a temporary directory and return the committed stubs that differ.

    A stub missing under ``output_root`` counts as stale.
    """
    with tempfile.TemporaryDirectory(prefix="archadapt-protos-check-") as temp_name:
        fresh_root = Path(temp_name)
        generate(proto, fresh_root)
        stale = []
        for file_name in STUB_FILES:
            committed = output_root / STUB_DIR / file_name
            fresh = fresh_root / STUB_DIR / file_name
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(committed)
    return stale


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and exit with status 1 if the "
        "committed stubs differ, without writing anything",
    )
    parser.add_argument(
        "--proto",
        type=Path,
        default=DEFAULT_PROTO,
        help=f"proto file to compile (default: {_display(DEFAULT_PROTO)})",
    )
    parser.add_argument(
        "--output-root",
        type=Path,
        default=CLIENT_ROOT,
        help=f"directory that contains the archadapt_client package (default: {_display(CLIENT_ROOT)})",
    )
    args = parser.parse_args(argv)

    try:
        if args.check:
            stale = find_stale_files(args.proto, args.output_root)
        else:
            written = generate(args.proto, args.output_root)
    except (GenerationError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    if not args.check:
        for path in written:
            print(f"wrote {_display(path)}")
        return 0

    if stale:
        tools_version = importlib.metadata.version("grpcio-tools")
        for path in stale:
            print(
                f"stale generated file: {_display(path)} differs from what "
                f"{_display(args.proto)} generates with grpcio-tools {tools_version}",
                file=sys.stderr,
            )
        print("run: python scripts/generate_protos.py", file=sys.stderr)
        return 1
    print(f"generated stubs are up to date with {_display(args.proto)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

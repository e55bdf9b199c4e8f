"""Generate Python gRPC code and the gateway's descriptor set from proto/.

The output goes to ``.state/gen`` and is put on the virtual environment's path
with a ``.pth`` file, so generated code is never committed or edited by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import site
import sys
from pathlib import Path

from grpc_tools import protoc

# googleapis-common-protos ships google/api/*.proto beside the generated modules.
from google.api import annotations_pb2

_GOOGLE_PROTOS = Path(annotations_pb2.__file__).resolve().parents[2]
_WELL_KNOWN_PROTOS = Path(protoc.__file__).resolve().parent / "_proto"


def proto_files(proto_root: Path) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def generate_openapi(root: Path, plugin: Path, out: Path) -> Path:
    """Write one OpenAPI 2 document for every service's REST mapping."""
    proto_root = root / "proto"
    out.mkdir(parents=True, exist_ok=True)
    relative = [str(path.relative_to(proto_root)) for path in proto_files(proto_root)]
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{_GOOGLE_PROTOS}",
        f"-I{_WELL_KNOWN_PROTOS}",
        f"--plugin=protoc-gen-openapiv2={plugin}",
        f"--openapiv2_out={out}",
        "--openapiv2_opt=allow_merge=true,merge_file_name=aiswa,json_names_for_fields=false",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protogen: protoc-gen-openapiv2 failed; see the messages above")
    return out / "aiswa.swagger.json"


def generate(root: Path) -> Path:
    proto_root = root / "proto"
    out = root / ".state" / "gen"
    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"protogen: no .proto files under {proto_root}")
    stamp = out / ".fingerprint"
    fingerprint = _fingerprint(files)
    if not (stamp.exists() and stamp.read_text() == fingerprint):
        out.mkdir(parents=True, exist_ok=True)
        relative = [str(path.relative_to(proto_root)) for path in files]
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{_GOOGLE_PROTOS}",
            f"-I{_WELL_KNOWN_PROTOS}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"--descriptor_set_out={out / 'aiswa.pb'}",
            "--include_imports",
            "--include_source_info",
            *relative,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protogen: protoc failed; see the messages above")
        stamp.write_text(fingerprint)
    _install_path_file(out)
    return out


def _install_path_file(out: Path) -> None:
    for directory in site.getsitepackages():
        if Path(directory).is_dir() and sys.prefix in directory:
            (Path(directory) / "aiswa_generated.pth").write_text(f"{out}\n")
            return
    raise SystemExit("protogen: no site-packages folder in the virtual environment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="checkout root")
    parser.add_argument("--openapi-plugin", type=Path,
                        help="protoc-gen-openapiv2 binary; also writes docs/api/aiswa.swagger.json")
    args = parser.parse_args()
    root = args.root.resolve()
    out = generate(root)
    print(f"protogen: generated code in {out}")
    if args.openapi_plugin:
        document = generate_openapi(root, args.openapi_plugin, root / "docs" / "api")
        print(f"protogen: OpenAPI description in {document}")


if __name__ == "__main__":
    main()

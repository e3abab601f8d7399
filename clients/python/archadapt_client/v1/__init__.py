"""Generated protobuf and gRPC modules of the archadapt.v1 API.

Regenerate them with ``python scripts/generate_protos.py`` from the
repository root; do not edit them by hand.
"""

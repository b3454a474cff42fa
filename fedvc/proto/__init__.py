"""Generated protobuf and gRPC code (see protos/generate.py); never edited by hand."""

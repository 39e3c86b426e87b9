"""Rosetta's gRPC API: the generated Python modules of protos/rosetta/*/ (`make protos`)."""

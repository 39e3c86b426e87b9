"""rosetta.v1: translator.proto and its generated messages and stubs; clients and the server import these."""

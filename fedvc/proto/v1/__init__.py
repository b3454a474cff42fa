"""fedvc.proto.v1: the Fleet service (protos/fedvc/proto/v1/fleet.proto), generated."""

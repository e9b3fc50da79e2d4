"""gRPC adapters: servicers, role interceptor, the one error->status table, the server."""

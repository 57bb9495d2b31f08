"""The tracer: the platform's append-only audit ledger (Merkle log, signed checkpoints, chain
anchoring, proofs).

The app factory is `tracer.app.create_app`; this package imports nothing, so that
`tracer.client` (what workloads and other services use) stays light."""

"""The TraceAnchor Solidity contract and its committed compiled artifact (TraceAnchor.json).

The artifact is produced by ``python -m tracer.contracts.build`` (needs ``npm install`` for
solc-js) and committed, so running the platform needs no Solidity compiler.
"""

"""The pipeline's plain logic: what a request's steps do, over the ledger and the
connectors, as plain functions (no Prefect task or flow machinery). The task wrappers in
`tasks/` call them; tests call them directly."""

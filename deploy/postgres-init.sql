-- The ledger's database, beside Prefect's (POSTGRES_DB). Run once, when the volume is new.
CREATE DATABASE dsrflow OWNER dsrflow;

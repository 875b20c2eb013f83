-- A webhook-id names one message: the hash of what was stored under it, so that the
-- same id with another body is refused (409) rather than dropped as a repeat. It
-- outlives the body (retention prunes `payload` first, the key later). Adding a
-- nullable column without a default touches no row.
ALTER TABLE inbox ADD COLUMN payload_sha256 bytea;

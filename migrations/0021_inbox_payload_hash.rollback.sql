ALTER TABLE inbox DROP COLUMN payload_sha256;

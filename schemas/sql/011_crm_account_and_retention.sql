-- Issue 19 (security, second round).
--
-- The Kommo account a connection's webhook deliveries must name
-- (`account[subdomain]`): set by `conveyor crm connect` from the account URL
-- (https://<subdomain>.kommo.com) or --account-subdomain. Existing rows take
-- it from their URL; a loopback stand-in's URL has none (NULL), and its
-- deliveries are refused until it is registered again with one.
ALTER TABLE crm_connections ADD COLUMN account_subdomain text;
UPDATE crm_connections
SET account_subdomain = substring(base_url FROM '^https?://([a-z0-9-]+)\.[a-z0-9-]+\.[a-z]');

-- `conveyor dlq purge` deletes dead letters older than the retention
-- (dlq_mirror.retention_days) by the time they were mirrored.
CREATE INDEX worker_dlq_created_at_idx ON worker_dlq (created_at);

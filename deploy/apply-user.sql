-- The apply user on a replica: writes the site's tables and creates frappe-cdc's own
-- `_frappe_cdc_*` bookkeeping tables (offsets, applied positions, conflicts) in the same
-- database, so a document and its offset commit in one transaction.
CREATE USER IF NOT EXISTS 'apply'@'%' IDENTIFIED BY 'applypass';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON `site`.* TO 'apply'@'%';

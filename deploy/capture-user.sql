-- The capture user: read rows and the binlog, nothing else.
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdcpass';
GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%';

//! The one error policy: every failure capture or apply meets is put in one of three classes,
//! and what each side does with a class is fixed (README, "When something fails").
//!
//! - [`Class::Retry`]: transient. The same work is tried again with capped backoff and
//!   nothing moves past it: connection lost, deadlock, lock wait, statement timeout, server
//!   shutting down or read-only for a moment (Galera not ready), too many connections, broker
//!   unavailable.
//! - [`Class::DeadLetter`]: this one message can never apply as it is (malformed, a value the
//!   replica rejects, an unknown table). Apply sends it to the dead-letter topic with the
//!   reason and moves on; capture has no such class (it halts instead: a source event it
//!   cannot read is not something to skip).
//! - [`Class::Halt`]: configuration or environment an operator must fix (bad credentials,
//!   missing privileges, a read-only replica, a packet limit too small, an offset the topic no
//!   longer holds, purged binlogs, a changed filter, a state layout this build does not know).
//!   The process exits 2 with what is wrong and the fix; positions stay where they are.
//!
//! Server errors this table does not know halt too: retrying an unknown error forever hides
//! it, and dead-lettering it may drop documents for a cause that is not in the message.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Retry,
    DeadLetter,
    Halt,
}

impl Class {
    /// For a side without dead letters (capture): a message-level failure halts.
    pub fn or_halt(self) -> Class {
        if self == Class::DeadLetter {
            Class::Halt
        } else {
            self
        }
    }
}

/// Server error codes a retry can cure.
pub const RETRY_CODES: &[u16] = &[
    1040, // too many connections
    1041, // out of memory
    1053, // server shutdown in progress
    1152, // aborted connection
    1158, // network read error
    1159, // network read timeout
    1160, // network write error
    1161, // network write timeout
    1180, // got error during COMMIT
    1203, // max_user_connections
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query interrupted (KILL QUERY)
    1614, // XA rollback: deadlock
    1637, // too many active concurrent transactions
    1689, // lock aborted
    1927, // connection killed
    1969, // max_statement_time exceeded
    2006, // server has gone away
    2013, // lost connection during query
    1047, // WSREP has not yet prepared node for application use (Galera)
    1021, // disk full (the server waits for space)
    // LOAD DATA LOCAL refused by the server: apply switches to INSERT and retries.
    1148, 3948, 4166,
];

/// Server error codes that mean the message's own values or target cannot be written.
pub const DEAD_LETTER_CODES: &[u16] = &[
    1048, // column cannot be null
    1054, // unknown column (the schema cache is refreshed before this is final)
    1062, // duplicate entry on a unique key other than `name`
    1146, // table does not exist
    1264, // out of range value
    1265, // data truncated
    1292, // incorrect datetime/number value
    1300, // invalid character string
    1364, // field has no default value
    1366, // incorrect string/integer value
    1367, // illegal value
    1406, // data too long
    1411, // incorrect value for function
    1416, // cannot get geometry object
    1451, // foreign key: row is referenced
    1452, // foreign key: parent row missing
    1690, // value out of range
    3140, // invalid JSON text
    4025, // CHECK constraint failed
    4078, // illegal parameter data type
];

/// Server error codes an operator must fix.
pub const HALT_CODES: &[u16] = &[
    1044, // access denied to the database
    1045, // access denied (user or password)
    1049, // unknown database
    1129, // host blocked (mysqladmin flush-hosts)
    1130, // host not allowed to connect
    1142, // command denied on a table
    1143, // column access denied
    1153, // packet bigger than max_allowed_packet
    1227, // missing privilege (SUPER, REPLICATION SLAVE, …)
    1236, // binlog read failed (purged, or position invalid)
    1251, // client does not support the authentication protocol
    1290, // --read-only (or another option) prevents the statement
    1792, // read-only transaction
    1820, // must change password
    1836, // read-only mode
    1862, // password expired
    4151, // account locked
];

/// The class of a server error code.
pub fn server(code: u16) -> Class {
    if RETRY_CODES.contains(&code) {
        Class::Retry
    } else if DEAD_LETTER_CODES.contains(&code) {
        Class::DeadLetter
    } else {
        Class::Halt
    }
}

/// What an operator does about a halting server error, when the code says.
pub fn server_fix(code: u16) -> &'static str {
    match code {
        1044 | 1045 | 1820 | 1862 | 4151 => {
            "check the user and password (password from the *_PASSWORD variable or --*-password-file), and that the account is usable"
        }
        1129 => "the server blocked this host after failed connects: run FLUSH HOSTS on it",
        1130 => "the server does not let this user connect from this host: add a grant for it",
        1049 => "the database in the URL does not exist on that server",
        1142 | 1143 | 1227 => "grant the privileges the README lists for this role",
        1153 => "raise max_allowed_packet on the server (apply sends messages up to 16 MiB)",
        1236 => "the binlog position is gone (purged?): take a new snapshot",
        1290 | 1792 | 1836 => {
            "the server is read-only: point the URL at the writable server, or SET GLOBAL read_only=OFF"
        }
        _ => "see the server's error log; this error is not one apply retries or skips",
    }
}

/// A MariaDB error as it may be logged and put in dead-letter headers. The server's own text
/// is kept for the transient and configuration errors (it names users, hosts, tables and
/// privileges); for the others it can quote the rejected value (`Duplicate entry 'X'`,
/// `Incorrect integer value: 'abc'`), so only the code and what it means are given.
pub fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(se)
            if !RETRY_CODES.contains(&se.code) && !HALT_CODES.contains(&se.code) =>
        {
            format!(
                "server error {} ({}): {}",
                se.code,
                se.state,
                value_error_meaning(se.code)
            )
        }
        _ => e.to_string(),
    }
}

/// What a server error that may quote row values means, without the values.
fn value_error_meaning(code: u16) -> &'static str {
    match code {
        1048 => "a column that cannot be NULL got NULL",
        1054 => "unknown column",
        1062 => "duplicate entry on a unique key",
        1146 => "table does not exist",
        1264 | 1690 => "value out of the column's range",
        1265 | 1406 => "value too long for the column (data truncated)",
        1292 | 1366 | 1367 | 1411 => "a value the column's type does not accept",
        1300 => "invalid character string for the column's character set",
        1364 => "a column without a default got no value",
        1416 => "not a geometry value",
        1451 | 1452 => "a foreign key check failed",
        3140 => "invalid JSON text",
        4025 => "a CHECK constraint failed",
        4078 => "illegal parameter data type",
        _ => {
            "not a code frappe-cdc knows; its text may quote row values, so it is left to the server's error log"
        }
    }
}

/// What an operator does about a MariaDB client error that halts.
pub fn mysql_fix(e: &mysql_async::Error) -> &'static str {
    match e {
        mysql_async::Error::Server(se) => server_fix(se.code),
        mysql_async::Error::Io(_) => {
            "check the host and port in the URL, and that MariaDB is running"
        }
        mysql_async::Error::Url(_) => "check the URL: mysql://user@host:port/database",
        _ => "check the URL, the user's privileges and the server's error log",
    }
}

/// The class of a MariaDB client error.
pub fn mysql(e: &mysql_async::Error) -> Class {
    use mysql_async::DriverError as D;
    match e {
        mysql_async::Error::Server(se) => server(se.code),
        mysql_async::Error::Io(_) => Class::Retry,
        mysql_async::Error::Url(_) => Class::Halt,
        mysql_async::Error::Other(_) => Class::Halt,
        mysql_async::Error::Driver(d) => match d {
            D::ConnectionClosed
            | D::PacketOutOfOrder
            | D::PoolDisconnected
            | D::UnexpectedPacket { .. }
            | D::BadCompressedPacketHeader => Class::Retry,
            // A replica value this build cannot decode: this document cannot be judged.
            D::FromValue { .. } | D::FromRow { .. } => Class::DeadLetter,
            // A statement this message would need is larger than the protocol allows: the
            // message, not the server, is at fault (apply splits statements to avoid it).
            D::StmtParamsNumberExceedsLimit { .. } => Class::DeadLetter,
            // max_allowed_packet on the client side: raise it (`?max_allowed_packet=`).
            D::PacketTooLarge => Class::Halt,
            D::LocalInfile(_) => Class::Retry,
            _ => Class::Halt,
        },
    }
}

/// The class of a Kafka client error code.
pub fn kafka_code(code: RDKafkaErrorCode) -> Class {
    use RDKafkaErrorCode as K;
    if crate::kafka::topic::is_auth_failure(code) {
        return Class::Halt;
    }
    match code {
        K::OffsetOutOfRange | K::AutoOffsetReset => Class::Halt,
        K::UnknownTopicOrPartition | K::UnknownTopic | K::UnknownPartition => Class::Retry,
        K::MessageSizeTooLarge | K::InvalidRecord => Class::DeadLetter,
        K::InvalidConfig | K::InvalidArgument | K::InvalidReplicationFactor => Class::Halt,
        K::Fenced | K::ProducerFenced | K::InvalidProducerEpoch => Class::Halt,
        _ => Class::Retry,
    }
}

/// The class of a Kafka client error.
pub fn kafka(e: &KafkaError) -> Class {
    match e.rdkafka_error_code() {
        Some(code) => kafka_code(code),
        None => match e {
            KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => Class::Halt,
            _ => Class::Retry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: String::new(),
            state: String::new(),
        })
    }

    #[test]
    fn every_named_server_code_has_its_class() {
        for c in RETRY_CODES {
            assert_eq!(mysql(&server_error(*c)), Class::Retry, "{c}");
        }
        for c in DEAD_LETTER_CODES {
            assert_eq!(mysql(&server_error(*c)), Class::DeadLetter, "{c}");
        }
        for c in HALT_CODES {
            assert_eq!(mysql(&server_error(*c)), Class::Halt, "{c}");
        }
        let all: Vec<u16> = [RETRY_CODES, DEAD_LETTER_CODES, HALT_CODES].concat();
        let mut dedup = all.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(all.len(), dedup.len(), "a code in two classes");
        // The codes issue 18 names, spelled out.
        let named = [
            (Class::Retry, &[1969, 1317, 1180, 1203, 1047][..]),
            (Class::Halt, &[1153, 1290, 1836, 1045, 9999][..]),
            (Class::DeadLetter, &[1146, 1366][..]),
        ];
        for (want, codes) in named {
            for &c in codes {
                assert_eq!(server(c), want, "{c}");
            }
        }
    }

    #[test]
    fn value_errors_are_described_without_their_values() {
        let e = |code, message: &str| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: message.into(),
                state: "23000".into(),
            })
        };
        let d = describe(&e(1062, "Duplicate entry 'secret-name' for key 'PRIMARY'"));
        assert!(d.contains("1062") && !d.contains("secret-name"), "{d}");
        let d = describe(&e(9999, "odd error quoting 'secret'"));
        assert!(d.contains("9999") && !d.contains("secret"), "{d}");
        let d = describe(&e(1045, "Access denied for user 'cdc'@'10.0.0.1'"));
        assert!(d.contains("Access denied for user 'cdc'"), "{d}");
        for c in DEAD_LETTER_CODES {
            assert!(!value_error_meaning(*c).starts_with("not a code"), "{c}");
        }
    }

    #[test]
    fn driver_errors_are_classified_not_retried_blindly() {
        use mysql_async::DriverError as D;
        let d = |e: D| mysql_async::Error::Driver(e);
        assert_eq!(mysql(&d(D::ConnectionClosed)), Class::Retry);
        assert_eq!(mysql(&d(D::PacketOutOfOrder)), Class::Retry);
        assert_eq!(mysql(&d(D::PoolDisconnected)), Class::Retry);
        assert_eq!(
            mysql(&d(D::UnexpectedPacket { payload: vec![] })),
            Class::Retry
        );
        assert_eq!(mysql(&d(D::BadCompressedPacketHeader)), Class::Retry);
        assert_eq!(
            mysql(&d(D::FromValue {
                value: mysql_async::Value::NULL
            })),
            Class::DeadLetter
        );
        assert_eq!(
            mysql(&d(D::StmtParamsNumberExceedsLimit { supplied: 70_000 })),
            Class::DeadLetter
        );
        assert_eq!(mysql(&d(D::PacketTooLarge)), Class::Halt);
        assert_eq!(
            mysql(&d(D::StmtParamsMismatch {
                required: 1,
                supplied: 2
            })),
            Class::Halt
        );
        assert_eq!(
            mysql(&d(D::UnknownAuthPlugin { name: "x".into() })),
            Class::Halt
        );
        assert_eq!(mysql(&d(D::NestedTransaction)), Class::Halt);
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other("reset")));
        assert_eq!(mysql(&io), Class::Retry);
        let url = mysql_async::Error::Url(mysql_async::UrlError::Invalid);
        assert_eq!(mysql(&url), Class::Halt);
    }

    #[test]
    fn kafka_errors() {
        use RDKafkaErrorCode as K;
        for c in [
            K::SaslAuthenticationFailed,
            K::Authentication,
            K::TopicAuthorizationFailed,
            K::OffsetOutOfRange,
            K::AutoOffsetReset,
            K::ProducerFenced,
        ] {
            assert_eq!(kafka_code(c), Class::Halt, "{c:?}");
        }
        for c in [
            K::BrokerTransportFailure,
            K::AllBrokersDown,
            K::RequestTimedOut,
            K::NotLeaderForPartition,
            K::LeaderNotAvailable,
            K::NotEnoughReplicas,
            K::UnknownTopicOrPartition,
        ] {
            assert_eq!(kafka_code(c), Class::Retry, "{c:?}");
        }
        assert_eq!(kafka_code(K::MessageSizeTooLarge), Class::DeadLetter);
        assert_eq!(
            kafka(&KafkaError::MessageConsumption(K::OffsetOutOfRange)),
            Class::Halt
        );
        assert_eq!(kafka(&KafkaError::Canceled), Class::Retry);
    }
}

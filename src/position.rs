//! MariaDB replication positions.
//!
//! A [`Gtid`] is `domain-server-seq`. A [`GtidPosition`] holds at most one GTID per domain, the
//! same shape as `@@gtid_binlog_pos` and `@slave_connect_state`. The GTID position is the only
//! resume key frappe-cdc uses: MariaDB writes a GTID for every event group, and a dump started
//! with `@slave_connect_state=<pos>` begins with the first group after `pos` in every domain.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors from parsing or advancing positions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PositionError {
    /// The text is not `domain-server-seq`.
    #[error("invalid gtid {text:?}: expected domain-server-seq, e.g. 0-1-42")]
    InvalidGtid { text: String },
    /// A GTID that goes backwards inside its domain.
    #[error("gtid {new} goes backwards after {current} in domain {domain}")]
    Backwards {
        domain: u32,
        current: Gtid,
        new: Gtid,
    },
}

/// One MariaDB GTID: `domain_id-server_id-seq_no`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gtid {
    pub domain_id: u32,
    pub server_id: u32,
    pub seq_no: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain_id, self.server_id, self.seq_no)
    }
}

impl FromStr for Gtid {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PositionError::InvalidGtid {
            text: s.to_string(),
        };
        let mut parts = s.trim().split('-');
        let domain_id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let server_id = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let seq_no = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Gtid {
            domain_id,
            server_id,
            seq_no,
        })
    }
}

impl Serialize for Gtid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Gtid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Replication state: the last GTID of each domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidPosition(BTreeMap<u32, Gtid>);

impl GtidPosition {
    /// An empty position (start of the binlog in every domain).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no domain has a GTID.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records a committed GTID. Errors if it goes backwards inside its domain.
    pub fn advance(&mut self, gtid: Gtid) -> Result<(), PositionError> {
        if let Some(current) = self.0.get(&gtid.domain_id)
            && gtid.seq_no < current.seq_no
        {
            return Err(PositionError::Backwards {
                domain: gtid.domain_id,
                current: *current,
                new: gtid,
            });
        }
        self.0.insert(gtid.domain_id, gtid);
        Ok(())
    }

    /// True if `gtid` is at or before this position in its domain.
    pub fn contains(&self, gtid: &Gtid) -> bool {
        self.0
            .get(&gtid.domain_id)
            .is_some_and(|g| gtid.seq_no <= g.seq_no)
    }

    /// The GTID of one domain.
    pub fn get(&self, domain_id: u32) -> Option<&Gtid> {
        self.0.get(&domain_id)
    }

    /// All GTIDs, by domain.
    pub fn iter(&self) -> impl Iterator<Item = &Gtid> {
        self.0.values()
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPosition {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pos = GtidPosition::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: Gtid = part.parse()?;
            pos.0.insert(g.domain_id, g);
        }
        Ok(pos)
    }
}

impl Serialize for GtidPosition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GtidPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_round_trip() {
        let g: Gtid = "0-1-42".parse().unwrap();
        assert_eq!(
            g,
            Gtid {
                domain_id: 0,
                server_id: 1,
                seq_no: 42
            }
        );
        assert_eq!(g.to_string(), "0-1-42");
    }

    #[test]
    fn gtid_rejects_garbage() {
        for bad in ["", "0-1", "0-1-x", "a-1-2", "0-1-2-3", "-1-1-1"] {
            assert!(bad.parse::<Gtid>().is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn position_round_trip_and_advance() {
        let mut p: GtidPosition = "1-2-57, 0-1-100".parse().unwrap();
        assert_eq!(p.to_string(), "0-1-100,1-2-57");
        p.advance("0-1-101".parse().unwrap()).unwrap();
        assert!(p.contains(&"0-1-101".parse().unwrap()));
        assert!(!p.contains(&"0-1-102".parse().unwrap()));
        assert!(!p.contains(&"5-1-1".parse().unwrap()));
        let err = p.advance("0-1-7".parse().unwrap()).unwrap_err();
        assert!(matches!(err, PositionError::Backwards { domain: 0, .. }));
        assert_eq!("".parse::<GtidPosition>().unwrap(), GtidPosition::new());
    }

    #[test]
    fn position_serde() {
        let p: GtidPosition = "0-1-5".parse().unwrap();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, "\"0-1-5\"");
        assert_eq!(serde_json::from_str::<GtidPosition>(&j).unwrap(), p);
    }
}

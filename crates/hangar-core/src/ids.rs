//! Identifiers: machine ids (14 lowercase hex chars, like Fly's) and instance ids (ULID-like).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A machine id: 14 lowercase hexadecimal characters, unique on the platform.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

/// The error for a string that is not a machine id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid machine id {0:?}: expected 14 lowercase hex characters")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let n: u64 = rand::rng().random::<u64>() & 0x00ff_ffff_ffff_ffff;
        MachineId(format!("{n:014x}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 14
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(MachineId(s.to_owned()))
        } else {
            Err(InvalidMachineId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for MachineId {
    type Error = InvalidMachineId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({})", self.0)
    }
}

/// An instance id: names one version of a machine's config; changes on every update.
/// 26 characters of Crockford base32, sortable by creation time like a ULID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl InstanceId {
    /// A fresh id whose prefix encodes `unix_millis`, so ids sort by time.
    pub fn generate(unix_millis: u64) -> Self {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut rng = rand::rng();
        let random: u128 = rng.random::<u128>() & ((1u128 << 80) - 1);
        let value: u128 = (u128::from(unix_millis & ((1 << 48) - 1)) << 80) | random;
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *slot = ALPHABET[((value >> shift) & 31) as usize];
        }
        InstanceId(String::from_utf8_lossy(&out).into_owned())
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_machine_ids_parse() {
        for _ in 0..100 {
            let id = MachineId::generate();
            assert_eq!(id.as_str().parse::<MachineId>(), Ok(id.clone()));
        }
    }

    #[test]
    fn machine_id_rejects_bad_input() {
        for bad in [
            "",
            "abc",
            "0123456789abcG",
            "0123456789ABCD",
            "0123456789abcde",
            "../../etc/pas",
        ] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_sort_by_time() {
        let a = InstanceId::generate(1_000);
        let b = InstanceId::generate(2_000);
        assert!(a < b);
        assert_eq!(a.0.len(), 26);
    }
}

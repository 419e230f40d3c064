//! KPL aggregated records: magic prefix, protobuf `AggregatedRecord`, MD5 trailer. Unpacked with
//! prost; each user record keeps its index as the sub-sequence number.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The first bytes of every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<Record>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Record {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// The user records of a Kinesis record: itself when not aggregated, else the aggregate's
/// records. A corrupt aggregate is an error with the reason.
pub fn deaggregate(data: &Bytes) -> Result<Vec<Bytes>, String> {
    if !data.starts_with(&MAGIC) {
        return Ok(vec![data.clone()]);
    }
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err("KPL aggregate is truncated".into());
    }
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != digest {
        return Err("KPL aggregate fails its MD5 check (corrupt or truncated)".into());
    }
    let agg = AggregatedRecord::decode(data.slice(MAGIC.len()..data.len() - DIGEST_LEN))
        .map_err(|e| format!("KPL aggregate does not decode: {e}"))?;
    Ok(agg.records.into_iter().map(|r| r.data).collect())
}

/// Packs user records into one KPL aggregate (used by `weir produce --aggregate`).
pub fn aggregate(partition_key: &str, records: impl IntoIterator<Item = Bytes>) -> Bytes {
    let agg = AggregatedRecord {
        partition_key_table: vec![partition_key.to_string()],
        explicit_hash_key_table: vec![],
        records: records
            .into_iter()
            .map(|data| Record {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data,
                tags: vec![],
            })
            .collect(),
    };
    let body = agg.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_corrupt() {
        let recs = vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"a\":2}"),
        ];
        let agg = aggregate("pk", recs.clone());
        assert_eq!(deaggregate(&agg).unwrap(), recs);
        let plain = Bytes::from_static(b"{\"a\":3}");
        assert_eq!(deaggregate(&plain).unwrap(), vec![plain]);
        let mut bad = agg.to_vec();
        bad[6] ^= 0xff;
        assert!(deaggregate(&Bytes::from(bad)).unwrap_err().contains("MD5"));
        assert!(
            deaggregate(&agg.slice(0..10))
                .unwrap_err()
                .contains("truncated")
        );
    }
}

use super::*;
use crate::job::schema::Column;
use crate::job::{CsvConfig, InputSchema};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

fn input(format: InputFormat) -> Input {
    let columns = [
        ("id", "string not null"),
        ("ts", "timestamp"),
        ("n", "bigint"),
        ("price", "decimal(10,2)"),
    ]
    .iter()
    .map(|(n, t)| Column::parse(n, t).unwrap())
    .collect();
    Input {
        format,
        schema: InputSchema { columns },
        time_column: None,
        max_record_bytes: 200,
        csv: CsvConfig::default(),
    }
}

fn chunk(lines: &[&[u8]]) -> RawChunk {
    let mut data = Vec::new();
    let mut bounds = Vec::new();
    for l in lines {
        let s = data.len() as u32;
        data.extend_from_slice(l);
        bounds.push((s, data.len() as u32));
        data.push(b'\n');
    }
    RawChunk {
        shard: "f.jsonl".into(),
        data: data.into(),
        positions: (1..=lines.len() as u64).map(Position::Line).collect(),
        bounds,
        rejected: vec![],
        arrived_ms: None,
        input_bytes: 0,
    }
}

#[test]
fn good_rows_survive_and_each_bad_kind_is_a_dead_letter() {
    let big = format!(r#"{{"id":"x","pad":"{}"}}"#, "a".repeat(300));
    let lines: Vec<&[u8]> = vec![
        br#"{"id":"a","ts":"2025-06-01T10:00:00.123Z","n":1,"price":"9.99"}"#,
        br#"{"id":"b","ts":1748772000000,"n":2,"price":1.5}"#,
        b"{not json",
        br#"{"ts":"2025-06-01T10:00:00Z"}"#,
        br#"{"id":"c","n":"many"}"#,
        b"{\"id\":\"\xff\xfe\"}",
        big.as_bytes(),
        br#"{"id":"d"} {"id":"e"}"#,
        br#"{"id":"f","ts":"2025-06-01 12:00:00+02:00"}"#,
    ];
    let mut d = Decoder::new(&input(InputFormat::Json));
    let out = d.decode(&chunk(&lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
    let lines_dead: Vec<_> = out.dead.iter().map(|d| d.position.clone()).collect();
    assert_eq!(
        lines_dead,
        [3, 4, 5, 6, 7, 8].map(Position::Line).to_vec(),
        "{:#?}",
        out.dead
    );
    assert!(out.dead[1].reason.contains("id"), "{}", out.dead[1].reason);
    assert!(out.dead[3].reason.contains("UTF-8"));
    assert!(out.dead[4].reason.contains("max_record_bytes"));
    assert_eq!(&out.dead[0].raw[..], b"{not json");

    let all = arrow::compute::concat_batches(&out.batches[0].schema(), &out.batches).unwrap();
    let ts = all.column(1).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_748_772_000_123_000);
    assert_eq!(ts.value(1), 1_748_772_000_000_000, "epoch millis");
    assert_eq!(ts.value(2), 1_748_772_000_000_000, "zone offset applied");
    assert_eq!(all.column(2).as_primitive::<Int64Type>().value(1), 2);
    assert!(all.column(3).is_null(2));
}

#[test]
fn csv_rows_and_dead_letters() {
    let lines: Vec<&[u8]> = vec![
        b"a,2025-06-01T10:00:00Z,1,9.99",
        b"b,yesterday,2,1.00",
        b"c,,3",
        b",2025-06-01T10:00:00Z,4,1.00",
    ];
    let mut d = Decoder::new(&input(InputFormat::Csv));
    let out = d.decode(&chunk(&lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "{:#?}", out.dead);
    assert_eq!(out.dead.len(), 3);
    assert_eq!(out.records, 4);
}

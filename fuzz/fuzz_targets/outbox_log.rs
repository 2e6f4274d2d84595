//! The device manager's outbox log decoder (`hammer_manager::store::record`) on arbitrary
//! file contents: an error or a prefix of good records, never a panic, every record inside
//! the input and the cut point no further than its end.
#![no_main]

use hammer_manager::store::record::{decode_frame, decode_log, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((records, tail)) = decode_log(data) {
        let cut = tail.cut_at(data.len());
        assert!(cut <= data.len());
        let mut end = 0;
        for r in &records {
            assert!(r.offset >= end && r.offset + r.len <= cut);
            end = r.offset + r.len;
            // What the log's reads do: the same record found again at its offset.
            assert_eq!(decode_frame(data, r.offset), Frame::Record(r.clone()));
        }
    }
    for at in [0, 1, data.len() / 2, data.len()] {
        let _ = decode_frame(data, at);
    }
});

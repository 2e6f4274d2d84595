//! The broker front door's MQTT parser on arbitrary client bytes: an error or packets,
//! never a panic, and never more bytes consumed than given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    loop {
        let before = buf.len();
        match hammer_broker::mqtt::parse(&mut buf, 4096) {
            Ok(Some((_, n))) => assert!(n > 0 && n <= before),
            Ok(None) | Err(_) => break,
        }
    }
});

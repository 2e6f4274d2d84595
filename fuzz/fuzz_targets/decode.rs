//! Fuzz target: every decoder of an MQTT payload must return Ok or Err on any input, never
//! panic, loop or allocate without bound. Run: `cd fuzz && cargo fuzz run decode`.
#![no_main]

use hammer_protocol::signing::{PublicKey, SigningKeyPair};
use hammer_protocol::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<StatusEvent>(data);
    let _ = decode::<DesiredState>(data);
    let _ = decode::<Command>(data);
    let _ = decode::<Ack>(data);
    let _ = decode::<AddressedAck>(data);
    let _ = decode::<Health>(data);
    let _ = decode::<LogBatch>(data);
    let _ = decode::<Presence>(data);
    if let Ok(key) = SigningKeyPair::from_seed(&[7u8; 32]) {
        let public: PublicKey = key.public();
        let _ = signing::verify::<DesiredState>(data, &public, "dev1", "owner1");
        let _ = signing::verify::<Command>(data, &public, "dev1", "owner1");
        let _ = signing::verify::<AddressedAck>(data, &public, "dev1", "owner1");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Topic::parse(s);
        let _ = validate_name(s);
    }
});

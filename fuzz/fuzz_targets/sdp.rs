//! Fuzzes the SDP parser and offer/answer: any bytes are a description or an error, and an
//! answer the box writes to an offer it accepted parses back to the same agreement.
#![no_main]

// The parser's own source, not the whole callbox crate (whose model runtimes would have to be
// rebuilt with the fuzzer's instrumentation).
#[allow(dead_code)]
#[path = "../../src/line/sip/sdp.rs"]
mod sdp;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(offer) = sdp::parse(&text) else {
        return;
    };
    let Ok(agreed) = offer.negotiate(&sdp::Codec::ALL) else {
        return;
    };
    let answer = sdp::write_answer(1, 2, agreed.remote.ip(), agreed.remote.port(), &agreed);
    let again = sdp::parse(&answer)
        .and_then(|d| d.negotiate(&sdp::Codec::ALL))
        .expect("the box's own answer parses");
    assert_eq!(again.codec, agreed.codec);
    assert_eq!(again.payload_type, agreed.payload_type);
    assert_eq!(again.dtmf_payload_type, agreed.dtmf_payload_type);
    assert_eq!(again.rtcp_mux, agreed.rtcp_mux);
});

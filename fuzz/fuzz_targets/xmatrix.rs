//! `XMatrix::parse` on arbitrary text: it never panics, and whatever it
//! accepts re-parses from its canonical header form to the same value.
#![no_main]

use homeport_core::xmatrix::XMatrix;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(x) = XMatrix::parse(input) else {
        return;
    };
    let header = x.to_header_value();
    let again = XMatrix::parse(&header).unwrap_or_else(|e| {
        panic!("{input:?} parsed, but its header form {header:?} does not: {e}")
    });
    assert_eq!(
        again, x,
        "header form {header:?} of {input:?} re-parses differently"
    );
    // PartialEq on ServerName ignores case and port spelling: also check
    // that the exact text survives.
    assert_eq!(again.origin.as_str(), x.origin.as_str());
    assert_eq!(
        again.destination.as_ref().map(|d| d.as_str()),
        x.destination.as_ref().map(|d| d.as_str())
    );
    assert_eq!(again.key.as_str(), x.key.as_str());
    assert_eq!(again.sig, x.sig);
    // The canonical form is a fixed point.
    assert_eq!(again.to_header_value(), header);
});

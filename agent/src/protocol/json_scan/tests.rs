//! The generic scanner on its own: pattern compilation and the events of made-up paths. The
//! scanner on real bodies (splits, adversarial input, serde agreement) is tested through the
//! OpenAI front ends, in `protocol::openai::scan::tests`.

use super::*;

#[test]
fn bad_patterns_are_refused() {
    assert!(matches!(
        Patterns::new(&[("a..b", Mode::Capture)]),
        Err(PatternError::EmptyKey(_))
    ));
    assert!(matches!(
        Patterns::new(&[("[*]", Mode::Capture)]),
        Err(PatternError::EmptyKey(_))
    ));
    assert!(matches!(
        Patterns::new(&[("a", Mode::Capture), ("a", Mode::Mark)]),
        Err(PatternError::Duplicate(_))
    ));
    assert!(matches!(
        Patterns::new(&[("a.b.c.d.e.f.g.h.i", Mode::Capture)]),
        Err(PatternError::TooDeep(_))
    ));
    assert!(matches!(
        Patterns::new(&[(&"k".repeat(33), Mode::Capture)]),
        Err(PatternError::LongKey(_))
    ));
}

#[test]
fn generic_scanner_reports_array_elements_and_nested_arrays() {
    let p = Patterns::new(&[("a[*][*]", Mode::Capture), ("b", Mode::NonEmpty)]).unwrap();
    let mut seen = Vec::new();
    let mut s = Scanner::new(&p);
    s.feed(br#"{"a":[[1,"x"],2,[true]],"b":[],"b":[0]}"#, &mut |e| {
        seen.push(format!("{e:?}"))
    });
    assert_eq!(s.finish(), Ok(()));
    let scalars: Vec<_> = seen
        .iter()
        .filter(|e| !e.starts_with("Start"))
        .cloned()
        .collect();
    assert_eq!(
        scalars,
        [
            "Scalar { field: 0, value: Number(Number(1)) }",
            "Scalar { field: 0, value: Str { text: \"x\", truncated: false } }",
            "Scalar { field: 0, value: Bool(true) }",
            "NonEmpty { field: 1, non_empty: false }",
            "NonEmpty { field: 1, non_empty: true }",
        ]
    );
}

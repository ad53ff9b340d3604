//! Hostile input: mangled config text never panics, and every reported position is inside
//! the text.

use super::Fixture;
use crate::{parse, parse_unchecked};

/// A small deterministic generator, so a failure reproduces exactly.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

const PIECES: [&str; 14] = [
    "{", "}", "[", "]", ",", ":", "\"", "\\", "0", "-1", "true", "null", "\\u00e9", "é",
];

fn mutate(text: &str, rng: &mut Lcg) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.next(3) {
        let mut at = rng.next(s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        match rng.next(3) {
            0 => {
                let mut end = (at + 1 + rng.next(4)).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(at..end, "");
            }
            1 => s.insert_str(at, PIECES[rng.next(PIECES.len())]),
            _ => {
                let mut end = (at + 1).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(at..end, PIECES[rng.next(PIECES.len())]);
            }
        }
    }
    s
}

#[test]
fn parse_when_text_mangled_then_no_panic_and_positions_in_text() {
    let f = Fixture::new();
    let mut rng = Lcg(0x5eed);
    let mut failures = 0;
    for _ in 0..3000 {
        let text = mutate(&f.text, &mut rng);
        let lines = text.split('\n').count();
        for result in [parse(&text, "m.json"), parse_unchecked(&text, "m.json")] {
            let Err(err) = result else { continue };
            failures += 1;
            assert!(!err.to_string().is_empty());
            for p in err.problems() {
                assert!(p.line >= 1 && p.line <= lines, "{p:?} in {text:?}");
                assert!(p.column >= 1, "{p:?} in {text:?}");
            }
        }
    }
    // Nearly every mutation breaks something; if none did, the mutator is broken.
    assert!(failures > 3000, "only {failures} failures");
}

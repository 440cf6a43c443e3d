//! Rule coverage: which conformance cases cite each requirement id of
//! spec/PROTOCOL.md, and which the host runner checks on every envelope it
//! reads, rendered into spec/CONFORMANCE.md by `cosystem-conformance doc`.
//!
//! The ids are read from the spec itself rather than listed here, so a rule
//! added to the spec shows up uncited at once, and a case citing an id the
//! spec does not define (a typo, a renamed rule) is a broken reference that
//! stops `doc` and fails a test.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::vectors::{Case, Role};

/// spec/PROTOCOL.md as this binary was built, the spec `doc` reads unless
/// told otherwise: built in, like the vectors, so that the generated
/// document does not depend on the directory `doc` runs in.
pub const EMBEDDED_SPEC: &str = include_str!("../../spec/PROTOCOL.md");

/// A requirement id the spec defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The id, e.g. `H7`, `K2a` or `H7.4`.
    pub id: String,
    /// The number of the innermost numbered heading the rule is under
    /// (`10`, `8.3`), if any.
    pub section: Option<String>,
}

/// The requirement ids and numbered sections of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// Every rule, in the order the spec defines them.
    pub rules: Vec<Rule>,
    /// The numbers of its numbered headings (`3`, `3.8`), which cases may
    /// cite as well as rules.
    pub sections: BTreeSet<String>,
}

/// A case and the ids its `spec` list cites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citing<'a> {
    /// The case's name, which is also its heading in spec/CONFORMANCE.md.
    pub name: &'a str,
    /// The ids it cites, as written.
    pub spec: Vec<&'a str>,
    /// What kind of check it is, which says whom the runner checks with it.
    pub kind: CitingKind,
}

/// What kind of check cites rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CitingKind {
    /// A client vector: run against any client, through its adapter.
    ClientVector,
    /// A host vector: the runner plays it against the reference core alone,
    /// since it needs a host started afresh for it (§1 of CONFORMANCE.md).
    HostVector,
    /// An interop case, or the checks of every envelope: run against any
    /// host.
    HostRunner,
}

/// `id` is a rule id: capitals, digits, and at most one lowercase letter
/// for a rule inserted between two others (`K2a`).
fn is_rule_id(id: &str) -> bool {
    let letters = id.bytes().take_while(u8::is_ascii_uppercase).count();
    let rest = &id.as_bytes()[letters..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let suffix = &rest[digits..];
    letters > 0
        && digits > 0
        && (suffix.is_empty() || (suffix.len() == 1 && suffix[0].is_ascii_lowercase()))
}

/// `§3.8`, `3.8` or `19`: a citation of a section rather than a rule.
fn as_section(citation: &str) -> Option<&str> {
    let number = citation.strip_prefix('§').unwrap_or(citation);
    let well_formed = !number.is_empty()
        && number
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    well_formed.then_some(number)
}

/// The number of a numbered heading (`## 10. Host duties` → `10`,
/// `### 8.3 Pre-checks` → `8.3`): `None` for a line that is not a heading,
/// `Some(None)` for an unnumbered one (`## Appendix A. Changes`), which
/// still ends the section before it.
fn heading_number(line: &str) -> Option<Option<String>> {
    let text = line.strip_prefix('#')?.trim_start_matches('#');
    let first = text.split_whitespace().next().unwrap_or("");
    Some(as_section(first.trim_end_matches('.')).map(str::to_owned))
}

/// The id a bold label defines: `**V1.**`, `**H7 (calls).**` or
/// `**Result ahead (Q1).**`. A bold label not ending in a full stop
/// (`**Revision 12**:`) is emphasis, not a definition.
fn bold_label_id(line: &str) -> Option<&str> {
    let label = line.strip_prefix("**")?;
    let label = label[..label.find("**")?].strip_suffix('.')?;
    let first = label.split(' ').next().unwrap_or("");
    if is_rule_id(first) {
        return Some(first);
    }
    let inner = label.strip_suffix(')')?;
    let inner = &inner[inner.rfind('(')? + 1..];
    is_rule_id(inner).then_some(inner)
}

/// The id a table row defines in its first cell (`| K1 | … |`).
fn table_row_id(line: &str) -> Option<&str> {
    let cell = line.strip_prefix('|')?.split('|').next()?.trim();
    is_rule_id(cell).then_some(cell)
}

/// What one line of the spec defines.
enum Definition<'a> {
    /// A rule that is a list item, which may have numbered sub-items.
    Item(&'a str),
    /// A rule with no sub-items: a table row or a bold paragraph label.
    Plain(&'a str),
}

fn definition(line: &str) -> Option<Definition<'_>> {
    if let Some(item) = line.strip_prefix("- ") {
        return bold_label_id(item).map(Definition::Item);
    }
    bold_label_id(line)
        .or_else(|| table_row_id(line))
        .map(Definition::Plain)
}

/// The numbered items of the list-item rule being read, which §1.3 names
/// `Hn.m` ("item m of the numbered list in Hn").
struct OpenItem {
    id: String,
    next: usize,
}

impl OpenItem {
    /// The sub-rule id `line` defines, if it is this item's next numbered
    /// entry. Requiring the next number keeps a wrapped line that happens
    /// to start with `3. ` from counting.
    fn sub_rule(&mut self, line: &str) -> Option<String> {
        let indented = line.starts_with(' ');
        let entry = line.trim_start().strip_prefix(&format!("{}. ", self.next));
        (indented && entry.is_some()).then(|| {
            self.next += 1;
            format!("{}.{}", self.id, self.next - 1)
        })
    }
}

/// Reads a spec line by line, tracking the section and the open list item.
#[derive(Default)]
struct Reader {
    spec: Spec,
    section: Option<String>,
    item: Option<OpenItem>,
    in_code: bool,
    /// The line of each id's first definition, to name both in a duplicate.
    lines: BTreeMap<String, usize>,
    duplicates: Vec<String>,
}

impl Reader {
    fn line(&mut self, number: usize, line: &str) {
        // A fenced block is an example, where a `| X1 |` or `# 1.` is text.
        if line.trim_start().starts_with("```") {
            self.in_code = !self.in_code;
            return;
        }
        if self.in_code {
            return;
        }
        if let Some(section) = heading_number(line) {
            self.spec.sections.extend(section.clone());
            self.section = section;
        }
        // A list item's body is indented; the first line that is not ends it.
        if !line.is_empty() && !line.starts_with(' ') {
            self.item = None;
        }
        if let Some(id) = self.item.as_mut().and_then(|item| item.sub_rule(line)) {
            self.define(number, id);
        }
        match definition(line) {
            Some(Definition::Item(id)) => {
                self.define(number, id.to_owned());
                self.item = Some(OpenItem {
                    id: id.to_owned(),
                    next: 1,
                });
            }
            Some(Definition::Plain(id)) => self.define(number, id.to_owned()),
            None => {}
        }
    }

    fn define(&mut self, number: usize, id: String) {
        if let Some(first) = self.lines.get(&id) {
            self.duplicates.push(format!(
                "{id} is defined twice (lines {first} and {number})"
            ));
            return;
        }
        self.lines.insert(id.clone(), number);
        self.spec.rules.push(Rule {
            id,
            section: self.section.clone(),
        });
    }
}

impl Spec {
    /// Reads the rule ids of `text` (spec/PROTOCOL.md) in every form the
    /// spec defines one: a list item `- **V1.**` or `- **H7 (calls).**`,
    /// the items `1.`, `2.`, … of such an item's numbered list (`H7.1`, …),
    /// a table row `| K1 | … |`, and a paragraph `**Result ahead (Q1).**`.
    /// An id defined twice is an error, since citations of it would be
    /// ambiguous.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let mut reader = Reader::default();
        for (i, line) in text.lines().enumerate() {
            reader.line(i + 1, line);
        }
        if reader.duplicates.is_empty() {
            Ok(reader.spec)
        } else {
            Err(reader.duplicates.join("; "))
        }
    }

    /// Whether `citation` names a rule or a numbered section of the spec.
    pub fn defines(&self, citation: &str) -> bool {
        match as_section(citation) {
            Some(number) => self.sections.contains(number),
            None => self.rules.iter().any(|r| r.id == citation),
        }
    }
}

/// Every case that can cite rules, in the order of spec/CONFORMANCE.md's
/// catalogues: client vectors, host vectors, then the host interop cases;
/// and last the host runner's checks of every envelope, as
/// [`EVERY_ENVELOPE`].
pub fn citing_cases(cases: &[Case]) -> Vec<Citing<'_>> {
    let vectors = [Role::Client, Role::Host].into_iter().flat_map(|role| {
        cases
            .iter()
            .filter(move |c| c.role() == role)
            .map(move |c| Citing {
                name: &c.info().name,
                spec: c.info().spec.iter().map(String::as_str).collect(),
                kind: match role {
                    Role::Client => CitingKind::ClientVector,
                    Role::Host => CitingKind::HostVector,
                },
            })
    });
    let interop = crate::interop::cases::CASES.iter().map(|c| Citing {
        name: c.name,
        spec: c.spec.to_vec(),
        kind: CitingKind::HostRunner,
    });
    let every_envelope = Citing {
        name: EVERY_ENVELOPE,
        spec: crate::interop::peer::CHECKED_ON_EVERY_ENVELOPE.to_vec(),
        kind: CitingKind::HostRunner,
    };
    vectors
        .chain(interop)
        .chain(std::iter::once(every_envelope))
        .collect()
}

/// The name under which the host runner's checks of every envelope it
/// reads (spec/CONFORMANCE.md §7.2) cite rules, as if they were one more
/// case: whichever case is running fails when one of them does.
pub const EVERY_ENVELOPE: &str = "every envelope";

/// One line per citation of an id `spec` does not define, naming the case.
pub fn broken_references(spec: &Spec, cases: &[Citing]) -> Vec<String> {
    cases
        .iter()
        .flat_map(|case| {
            case.spec
                .iter()
                .filter(|id| !spec.defines(id))
                .map(move |id| {
                    format!(
                        "case `{}` cites `{id}`, which the spec does not define",
                        case.name
                    )
                })
        })
        .collect()
}

/// A case named as its catalogue heading, linked to it; the checks of
/// every envelope, linked to the section that lists them.
fn link(name: &str) -> String {
    if name == EVERY_ENVELOPE {
        return format!("[{name}](#72-checks-on-every-envelope)");
    }
    format!("[`{name}`](#{name})")
}

/// The coverage section: a table with one row per rule in spec order (its
/// section and the cases citing it), then how many rules are cited and
/// which are not. Fails, naming them, on citations of undefined ids.
pub fn render(spec: &Spec, cases: &[Citing]) -> Result<String, String> {
    let broken = broken_references(spec, cases);
    if !broken.is_empty() {
        return Err(broken.join("; "));
    }
    let mut out = String::from("| Rule | Section | Cases |\n|---|---|---|\n");
    let mut uncited = Vec::new();
    let mut reference_only = Vec::new();
    for rule in &spec.rules {
        let citing: Vec<&Citing> = cases
            .iter()
            .filter(|c| c.spec.contains(&rule.id.as_str()))
            .collect();
        let names: Vec<String> = citing.iter().map(|c| link(c.name)).collect();
        if names.is_empty() {
            uncited.push(rule.id.as_str());
        } else if citing.iter().any(|c| c.kind == CitingKind::HostVector)
            && !citing.iter().any(|c| c.kind == CitingKind::HostRunner)
        {
            reference_only.push(rule.id.as_str());
        }
        let section = rule
            .section
            .as_ref()
            .map_or("—".to_owned(), |s| format!("§{s}"));
        let shown = if names.is_empty() {
            "—".to_owned()
        } else {
            names.join(", ")
        };
        let _ = writeln!(out, "| {} | {section} | {shown} |", rule.id);
    }
    summary(&mut out, spec, &uncited);
    if !reference_only.is_empty() {
        let _ = writeln!(
            out,
            "\nCited by host vectors but by no interop case or check of every envelope, so the runner checks them of the reference core alone (§1; another host may replay the host vectors against its own core, as this repository's Python and TypeScript hosts do) ({}): {}.",
            reference_only.len(),
            reference_only.join(", ")
        );
    }
    Ok(out)
}

fn summary(out: &mut String, spec: &Spec, uncited: &[&str]) {
    let total = spec.rules.len();
    let items: Vec<&str> = spec
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| id.contains('.'))
        .collect();
    let of_which = match items.first() {
        Some(example) => format!(
            " ({} of them numbered items of a rule, such as {example})",
            items.len()
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "\n{total} rules{of_which}, {} cited by at least one case or checked on every envelope the host runner reads.",
        total - uncited.len()
    );
    if uncited.is_empty() {
        let _ = writeln!(out, "\nEvery rule is cited by at least one case.");
    } else {
        let _ = writeln!(
            out,
            "\nNeither cited nor checked on every envelope ({}): {}.",
            uncited.len(),
            uncited.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "\
## 4. Versions

- **V1.** A first rule,
  wrapped.
- **H7 (calls).** Checks, in order:
  1. one;
  2. two, wrapped over
  5. lines;
  Each outcome commits.

**Revision 12**: not a rule.

### 8.3 Pre-checks

| # | Condition |
|---|---|
| K1 | a row |
| K2a | an inserted row |
| 1 | not a rule |

**Result ahead (Q1).** A paragraph rule.

```
| X9 | in an example |
```
";

    fn ids(spec: &Spec) -> Vec<(&str, Option<&str>)> {
        spec.rules
            .iter()
            .map(|r| (r.id.as_str(), r.section.as_deref()))
            .collect()
    }

    #[test]
    fn every_form_of_definition_is_read_in_spec_order() {
        let spec = Spec::parse(SPEC).unwrap();
        assert_eq!(
            ids(&spec),
            [
                ("V1", Some("4")),
                ("H7", Some("4")),
                ("H7.1", Some("4")),
                ("H7.2", Some("4")),
                ("K1", Some("8.3")),
                ("K2a", Some("8.3")),
                ("Q1", Some("8.3")),
            ]
        );
        assert!(spec.defines("§8.3") && spec.defines("4") && !spec.defines("8"));
    }

    #[test]
    fn a_rule_defined_twice_is_an_error() {
        let err = Spec::parse("- **V1.** a\n\n| V1 | b |\n").unwrap_err();
        assert_eq!(err, "V1 is defined twice (lines 1 and 3)");
    }

    #[test]
    fn a_citation_of_an_undefined_id_is_a_broken_reference() {
        let spec = Spec::parse(SPEC).unwrap();
        let cases = [Citing {
            name: "some-case",
            spec: vec!["V1", "H7.2", "V9", "§5", "h7"],
            kind: CitingKind::HostRunner,
        }];
        assert_eq!(broken_references(&spec, &cases).len(), 3);
        assert!(render(&spec, &cases).unwrap_err().contains("`V9`"));
    }

    #[test]
    fn rules_only_host_vectors_cite_are_named_as_unchecked_for_other_hosts() {
        let spec = Spec::parse(SPEC).unwrap();
        let cases = [
            Citing {
                name: "interop",
                spec: vec!["V1"],
                kind: CitingKind::HostRunner,
            },
            Citing {
                name: "host-vector",
                spec: vec!["V1", "K1", "Q1"],
                kind: CitingKind::HostVector,
            },
            // A client vector checks clients, not hosts: Q1 stays listed.
            Citing {
                name: "client-vector",
                spec: vec!["Q1"],
                kind: CitingKind::ClientVector,
            },
        ];
        let text = render(&spec, &cases).unwrap();
        assert!(text.contains("do) (2): K1, Q1.\n"), "{text}");
    }

    #[test]
    fn the_table_lists_citing_cases_and_the_summary_the_uncited_rules() {
        let spec = Spec::parse(SPEC).unwrap();
        let cases = [
            Citing {
                name: "a",
                spec: vec!["V1", "K1"],
                kind: CitingKind::HostRunner,
            },
            Citing {
                name: "b",
                spec: vec!["V1", "4"],
                kind: CitingKind::HostRunner,
            },
        ];
        let text = render(&spec, &cases).unwrap();
        assert!(text.contains("| V1 | §4 | [`a`](#a), [`b`](#b) |\n"));
        assert!(text.contains("| H7.1 | §4 | — |\n"));
        assert!(text.contains("7 rules (2 of them numbered items of a rule, such as H7.1), 2 cited by at least one case or checked on every envelope the host runner reads."));
        assert!(
            text.contains(
                "Neither cited nor checked on every envelope (5): H7, H7.1, H7.2, K2a, Q1."
            )
        );
    }
}
